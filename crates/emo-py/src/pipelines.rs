//! The paper's pipelines from Python: each `emo` command (`paper`, `section5`, `elicit`, ...) runs in this
//! process exactly as the command line runs it, and its progress bars go to a Python callback.
use std::sync::Arc;

use pyo3::prelude::*;

use crate::error::emo;
use crate::tensor::without_gil;

/// Runs `emo ARGS...` in this process (resumable runs, the same files and report as the command line);
/// raises `EmoError` with the command's error.
#[pyfunction]
pub fn run_command(py: Python<'_>, args: Vec<String>) -> PyResult<()> {
    let argv = std::iter::once("emo".to_string()).chain(args);
    without_gil(py, || emo_cli::run_command(argv)).map_err(emo)
}

/// Sends progress bars to `callback(line)` (each redraw, one line of text), or back to stderr with `None`.
#[pyfunction]
#[pyo3(signature = (callback = None))]
pub fn set_progress(callback: Option<PyObject>) {
    let sink = callback.map(|f| -> emotion_circuits::run::progress::Sink {
        Arc::new(move |line: &str| {
            Python::with_gil(|py| {
                if let Err(e) = f.call1(py, (line,)) {
                    e.print(py);
                }
            })
        })
    });
    emotion_circuits::run::progress::set_sink(sink);
}
