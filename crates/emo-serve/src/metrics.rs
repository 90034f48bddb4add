//! Counters and gauges of the server, rendered in Prometheus' text format at `GET /metrics`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The server's metrics; shared by the HTTP handlers and the engine.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Requests waiting for the engine to take them.
    pub queue_depth: AtomicUsize,
    /// Rows the engine holds, decoding or prefilling (what is left of `max_batch` takes a burst beside the
    /// queue).
    pub engine_rows: AtomicUsize,
    batch_size: AtomicUsize,
    // Time per output token: the step time counted once per token it produced.
    tpot_micros: AtomicU64,
    tpot_count: AtomicU64,
    steps: AtomicU64,
    refused_connections: AtomicU64,
    guard_activations: AtomicU64,
}

impl Metrics {
    /// Counts a finished request by HTTP status.
    pub fn request(&self, status: u16) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    /// Counts the prompt tokens of a finished request.
    pub fn prompt(&self, tokens: usize) {
        self.prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// Counts generated tokens, as they are generated (those of cancelled requests too).
    pub fn generated(&self, tokens: usize) {
        self.completion_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// Records a decoding step that produced `tokens` tokens.
    pub fn step(&self, time: Duration, tokens: usize) {
        self.generated(tokens);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.tpot_micros.fetch_add(time.as_micros() as u64 * tokens as u64, Ordering::Relaxed);
        self.tpot_count.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// Counts a connection refused because the connection limit was reached.
    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a guard that started acting.
    pub fn guard_activation(&self) {
        self.guard_activations.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of sequences decoding.
    pub fn set_batch_size(&self, n: usize) {
        self.batch_size.store(n, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP emo_requests_total Chat completion requests by HTTP status.");
        let _ = writeln!(s, "# TYPE emo_requests_total counter");
        for (status, n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "emo_requests_total{{status=\"{status}\"}} {n}");
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter("emo_prompt_tokens_total", "Prompt tokens of completed requests.", self.prompt_tokens.load(Ordering::Relaxed));
        counter("emo_completion_tokens_total", "Generated tokens.", self.completion_tokens.load(Ordering::Relaxed));
        counter("emo_decode_steps_total", "Decoding steps of the running batch.", self.steps.load(Ordering::Relaxed));
        counter(
            "emo_refused_connections_total",
            "Connections answered 503 and closed because the connection limit was reached.",
            self.refused_connections.load(Ordering::Relaxed),
        );
        counter(
            "emo_guard_activations_total",
            "Guards that started acting (a reply's guard counts again each time it switches on).",
            self.guard_activations.load(Ordering::Relaxed),
        );
        let mut gauge = |name: &str, help: &str, v: usize| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("emo_queue_depth", "Requests waiting for the engine.", self.queue_depth.load(Ordering::Relaxed));
        gauge("emo_batch_size", "Sequences in the running batch.", self.batch_size.load(Ordering::Relaxed));
        let _ = writeln!(s, "# HELP emo_time_per_output_token_seconds Decoding step time per generated token.");
        let _ = writeln!(s, "# TYPE emo_time_per_output_token_seconds summary");
        let _ = writeln!(s, "emo_time_per_output_token_seconds_sum {}", self.tpot_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(s, "emo_time_per_output_token_seconds_count {}", self.tpot_count.load(Ordering::Relaxed));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.request(200);
        m.request(200);
        m.request(400);
        m.prompt(10);
        m.generated(3);
        m.step(Duration::from_millis(20), 2);
        let t = m.render();
        assert!(t.contains("emo_requests_total{status=\"200\"} 2"), "{t}");
        assert!(t.contains("emo_requests_total{status=\"400\"} 1"));
        assert!(t.contains("emo_completion_tokens_total 5"));
        assert!(t.contains("emo_time_per_output_token_seconds_sum 0.04"), "{t}");
        assert!(t.contains("emo_time_per_output_token_seconds_count 2"));
    }
}
