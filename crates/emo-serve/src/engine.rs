//! The engine loop: one thread owns the model's running batch ([`ContinuousBatch`]). Waiting requests are
//! queued into it between steps; each step decodes one token for every running row and then prefills up
//! to a token budget of queued prompts (short ones together, a long one in chunks whose blocks run a few
//! at a time and yield to arriving requests), so a long prompt never stalls the others. Rows whose client went away are dropped; each row's tokens go back to its HTTP
//! handler as text through a channel.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emo_model::{BatchRequest, ContinuousBatch, Event, GenerationConfig, Model, StopReason};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::FinishReason;
use crate::controls::{ControlSpec, Controls};
use crate::metrics::Metrics;
use crate::text::ReplyText;
use emo_steer::trace::{EmotionTrace, Pieces};

/// A request handed to the engine.
pub struct Job {
    /// Unique per server.
    pub id: u64,
    /// Prompt token ids (chat template applied).
    pub prompt: Vec<u32>,
    /// Decoding settings, the model's end tokens included.
    pub config: GenerationConfig,
    /// Its steering and modulation.
    pub control: ControlSpec,
    /// Strings that end the reply.
    pub stop: Vec<String>,
    /// Where its output goes; a closed channel means the client went away.
    pub out: UnboundedSender<Output>,
}

/// What the engine sends back for a job.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// More of the reply.
    Piece(Piece),
    /// The reply ended.
    Done {
        /// Why.
        finish: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The reply could not be made or was cut: OpenAI's error `code` (`engine_error`, `non_finite_state`,
    /// `shutting_down`) and what happened.
    Failed {
        /// OpenAI-style error code.
        code: &'static str,
        /// What happened.
        message: String,
    },
}

/// More of a reply: its text, and, when the request reads its emotions, each new token's text and scores and
/// the guard's switches since the last piece.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Piece {
    /// Reply text (held back while it may still become a stop string).
    pub text: String,
    /// The new tokens' texts and scores (empty unless the request asked for `emotion_trace`).
    pub trace: EmotionTrace,
    /// The guard's switches.
    pub guard: Vec<GuardSwitch>,
}

/// A guard starting or stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GuardSwitch {
    /// Index of the first reply token it affects.
    pub token: usize,
    /// Whether it acts from there.
    pub active: bool,
}

impl Piece {
    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.trace.tokens.is_empty() && self.guard.is_empty()
    }
}

impl Output {
    fn failed(code: &'static str, message: impl Into<String>) -> Self {
        Output::Failed { code, message: message.into() }
    }
}

struct Live {
    tokens: Vec<u32>,
    text: ReplyText,
    out: UnboundedSender<Output>,
    // Set when the client asked for the trace: the token texts, and the scores of the next token.
    pieces: Option<Pieces>,
    scores: Option<Vec<f32>>,
    // What is not sent yet.
    piece: Piece,
}

/// The engine's settings.
pub struct EngineConfig {
    /// Most sequences decoding or prefilling at once.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step, between decoding steps ([`ContinuousBatch::with_prefill_tokens`]).
    pub prefill_tokens: usize,
    /// Set when the shutdown grace has run out: every running and waiting reply ends with a
    /// `shutting_down` error and the engine returns, so that it never outlives the process's LibTorch.
    pub abort: Arc<AtomicBool>,
}

/// Runs until every sender of `jobs` is gone and the last row has finished, or until `cfg.abort`.
pub fn run(model: Arc<Model>, controls: Controls, jobs: Receiver<Job>, cfg: EngineConfig, metrics: Arc<Metrics>) {
    let mut batch = ContinuousBatch::new(&model.transformer, model.pad_token_id()).with_prefill_tokens(cfg.prefill_tokens);
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut open = true;
    while open || !batch.is_empty() {
        if cfg.abort.load(Ordering::Relaxed) {
            let message = "the server stopped before the reply ended (its shutdown grace period ran out)";
            for (_, row) in live.drain() {
                let _ = row.out.send(Output::failed("shutting_down", message));
            }
            while let Ok(j) = jobs.try_recv() {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                let _ = j.out.send(Output::failed("shutting_down", message));
            }
            metrics.set_batch_size(0);
            return;
        }
        // Intake: wait when idle, otherwise take whatever is waiting, up to the batch limit.
        let mut new = Vec::new();
        if batch.is_empty() {
            match jobs.recv_timeout(Duration::from_millis(50)) {
                Ok(j) => new.push(j),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    continue;
                }
            }
        }
        while batch.len() + batch.pending() + new.len() < cfg.max_batch.max(1) {
            match jobs.try_recv() {
                Ok(j) => new.push(j),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Counted as the engine's before they leave the queue, so a request checking capacity in between
        // sees them twice (refused a little early) rather than nowhere.
        metrics.engine_rows.store(batch.len() + batch.pending() + new.len(), Ordering::Relaxed);
        metrics.queue_depth.fetch_sub(new.len(), Ordering::Relaxed);
        if !new.is_empty() {
            admit(&controls, model.transformer.device(), &mut batch, &mut live, new);
        }
        if !batch.is_empty() {
            let t = Instant::now();
            // A long prompt running alone yields between blocks to requests that wait and would fit.
            let room = batch.len() + batch.pending() < cfg.max_batch.max(1);
            let waiting = || room && metrics.queue_depth.load(Ordering::Relaxed) > 0;
            match batch.step_until(&waiting) {
                Ok(events) => {
                    let produced = events.iter().filter(|e| matches!(e, Event::Token { .. })).count();
                    metrics.step(t.elapsed(), produced);
                    // The gauge counts new rows before their first token reaches a client, so a client that
                    // has a token can never read a batch without its row.
                    metrics.set_batch_size(batch.len());
                    deliver(&model, &mut batch, &mut live, events, &metrics);
                }
                Err(e) => {
                    // A failed step leaves the batch unusable: every row fails, the server goes on.
                    for (_, row) in live.drain() {
                        let _ = row.out.send(Output::failed("engine_error", format!("decoding failed: {e}")));
                    }
                    batch = ContinuousBatch::new(&model.transformer, model.pad_token_id()).with_prefill_tokens(cfg.prefill_tokens);
                }
            }
        }
        drop_gone(&mut batch, &mut live);
        metrics.set_batch_size(batch.len());
        metrics.engine_rows.store(batch.len() + batch.pending(), Ordering::Relaxed);
    }
}

/// Queues the jobs whose edits build and whose prompts the batch takes; their prompts run in the next steps.
fn admit(controls: &Controls, device: tch::Device, batch: &mut ContinuousBatch, live: &mut HashMap<u64, Live>, jobs: Vec<Job>) {
    for j in jobs {
        if j.out.is_closed() {
            continue;
        }
        let traced = j.control.readout.as_ref().is_some_and(|r| r.reported);
        let control = match controls.build(&j.control, device) {
            Ok(control) => control,
            Err(e) => {
                let _ = j.out.send(Output::failed("engine_error", format!("could not build the request's edits: {e}")));
                continue;
            }
        };
        match batch.enqueue(vec![BatchRequest { id: j.id, prompt: j.prompt, config: j.config, control }]) {
            Ok(()) => {
                let pieces = traced.then(Pieces::default);
                live.insert(
                    j.id,
                    Live { tokens: Vec::new(), text: ReplyText::new(j.stop), out: j.out, pieces, scores: None, piece: Piece::default() },
                );
            }
            Err(e) => {
                let _ = j.out.send(Output::failed("engine_error", format!("could not queue the request: {e}")));
            }
        }
    }
}

/// Turns token events into text (and readouts) for each row's handler; a stop string or a gone client ends
/// the row.
fn deliver(model: &Model, batch: &mut ContinuousBatch, live: &mut HashMap<u64, Live>, events: Vec<Event>, metrics: &Metrics) {
    for event in events {
        match event {
            Event::Readout { id, scores } => {
                if let Some(row) = live.get_mut(&id) {
                    row.scores = Some(scores);
                }
            }
            Event::Guard { id, active, at_token } => {
                if active {
                    metrics.guard_activation();
                }
                if let Some(row) = live.get_mut(&id) {
                    row.piece.guard.push(GuardSwitch { token: at_token, active });
                }
            }
            Event::Token { id, token } => {
                let Some(row) = live.get_mut(&id) else { continue };
                row.tokens.push(token);
                let decoded = model.tokenizer.decode(&row.tokens, true).unwrap_or_default();
                if let (Some(pieces), Some(scores)) = (row.pieces.as_mut(), row.scores.take()) {
                    row.piece.trace.push(pieces.push(decoded.clone()), scores);
                }
                let delta = row.text.update(decoded);
                row.piece.text.push_str(&delta.text);
                let mut ok = true;
                // A traced row sends every token's scores as they come, even while its text is held back.
                if !row.piece.text.is_empty() || !row.piece.trace.tokens.is_empty() {
                    ok = row.out.send(Output::Piece(std::mem::take(&mut row.piece))).is_ok();
                }
                if delta.stopped {
                    ok = false;
                    let _ = row.out.send(Output::Done { finish: FinishReason::Stop, completion_tokens: row.tokens.len() });
                }
                if !ok {
                    live.remove(&id);
                    let _ = batch.cancel(id);
                }
            }
            Event::Finished { id, stop } => {
                let Some(mut row) = live.remove(&id) else { continue };
                row.piece.text.push_str(&row.text.finish());
                if !row.piece.is_empty() {
                    let _ = row.out.send(Output::Piece(std::mem::take(&mut row.piece)));
                }
                let finish = match stop {
                    StopReason::Eos => FinishReason::Stop,
                    StopReason::Length => FinishReason::Length,
                    StopReason::NonFinite => {
                        let message = format!(
                            "the reply's hidden state stopped being finite after {} tokens (its steering or modulation is too strong)",
                            row.tokens.len()
                        );
                        let _ = row.out.send(Output::failed("non_finite_state", message));
                        continue;
                    }
                };
                let _ = row.out.send(Output::Done { finish, completion_tokens: row.tokens.len() });
            }
        }
    }
}

/// Frees the rows of clients that disconnected.
fn drop_gone(batch: &mut ContinuousBatch, live: &mut HashMap<u64, Live>) {
    let gone: Vec<u64> = live.iter().filter(|(_, r)| r.out.is_closed()).map(|(id, _)| *id).collect();
    for id in gone {
        live.remove(&id);
        let _ = batch.cancel(id);
    }
}
