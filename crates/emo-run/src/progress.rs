//! Where progress bars draw: the terminal's stderr, or a sink an embedder sets ([`set_sink`]) that receives
//! each redrawn bar as one line of text — how the Python package shows the pipelines' bars in Jupyter,
//! whose cells have no terminal.
use std::sync::{Arc, Mutex, RwLock};

use indicatif::{ProgressDrawTarget, TermLike};

/// Receives each redrawn bar, one line of text.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Sends every progress bar drawn from now on to `sink`, or back to stderr with `None`.
pub fn set_sink(sink: Option<Sink>) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// The draw target of a new bar: nothing unless `show`, else the sink when one is set, else stderr.
pub fn draw_target(show: bool) -> ProgressDrawTarget {
    if !show {
        return ProgressDrawTarget::hidden();
    }
    match SINK.read().unwrap_or_else(|e| e.into_inner()).clone() {
        Some(sink) => ProgressDrawTarget::term_like_with_hz(Box::new(SinkTerm { sink, line: Mutex::new(String::new()), cleared: true.into() }), 2),
        None => ProgressDrawTarget::stderr(),
    }
}

/// A terminal of one line whose every flush hands the line to the sink; a bar cleared away arrives as one
/// empty line (so the sink can end the line it was redrawing).
struct SinkTerm {
    sink: Sink,
    line: Mutex<String>,
    cleared: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SinkTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkTerm")
    }
}

impl TermLike for SinkTerm {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line.lock().unwrap_or_else(|e| e.into_inner()).push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.line.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let line = std::mem::take(&mut *self.line.lock().unwrap_or_else(|e| e.into_inner()));
        let empty = line.trim().is_empty();
        // Only the first of several empty redraws is passed on.
        if !(empty && self.cleared.swap(true, Ordering::Relaxed)) {
            self.cleared.store(empty, Ordering::Relaxed);
            (self.sink)(line.trim_end());
        }
        Ok(())
    }
}
