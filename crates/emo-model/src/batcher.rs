//! Continuous batching: sequences join a running batch between decoding steps and leave it when they
//! finish, without waiting for the batch to drain (what serving engines such as vLLM do; here with one
//! contiguous KV cache per batch, regrouped when rows come and go, instead of paged blocks).
//!
//! Every row carries its own decoding settings and its own edits ([`RowControl`]), so plain, steered and
//! modulated sequences share a batch. A row's tokens are those [`crate::generate::generate`] gives it alone,
//! up to floating-point summation order (tested token for token on the real model).
//!
//! ```no_run
//! use emo_model::batcher::{BatchRequest, ContinuousBatch, Event, RowControl};
//! use emo_model::{GenerationConfig, LoadOptions, Model};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let mut batch = ContinuousBatch::new(&model.transformer, model.pad_token_id());
//! let prompt = model.tokenizer.encode("Hello", true)?;
//! let cfg = GenerationConfig { eos_token_ids: model.eos_token_ids.clone(), ..GenerationConfig::greedy(20) };
//! let mut events = batch.admit(vec![BatchRequest { id: 1, prompt, config: cfg, control: RowControl::none() }])?;
//! while !batch.is_empty() {
//!     events.extend(batch.step()?); // new requests may be admitted between any two steps
//! }
//! let tokens: Vec<u32> = events.iter().filter_map(|e| match e { Event::Token { token, .. } => Some(*token), _ => None }).collect();
//! # Ok::<(), emo_model::ModelError>(())
//! ```
use std::collections::VecDeque;

use tch::{Kind, Tensor};

use crate::generate::{choose_tokens, worth_compacting, Choice, GenerationConfig, RowDecoder, StopReason};
use crate::hooks::{ForwardScores, HookSet, Positions, Readout, Readouts};
use crate::hooks::{Intervention, Interventions};
use crate::kv_cache::left_pad;
use crate::kv_cache::DecodeState;
use crate::transformer::{ChunkInFlight, LogitsFor, Transformer};
use crate::{ModelError, Result};

/// A row's own edits: interventions grouped by the tokens they act on (residual steering at the last
/// prompt token and every generated token, circuit heads at every token, ...), and optionally a live
/// readout of its state and a guard acting on it.
#[derive(Clone, Debug, Default)]
pub struct RowControl {
    /// (tokens edited, edits) pairs.
    pub edits: Vec<(Positions, Intervention)>,
    /// Scores read at the last token of every forward of the row, reported as [`Event::Readout`] before the
    /// token they chose.
    pub readout: Option<Readout>,
    /// Edits that join the row's own once its readout crosses a threshold.
    pub guard: Option<Guard>,
}

/// Conditional control: once score `score` of the row's [`Readout`] rises above `threshold`, the `action`
/// edits join the row's own from the next forward on (the token whose state crossed is already chosen), for
/// the rest of the reply or while the score stays above ([`GuardHold`]).
#[derive(Clone, Debug)]
pub struct Guard {
    /// Index of the readout's score watched.
    pub score: usize,
    /// The guard acts when the score is above this (finite).
    pub threshold: f64,
    /// The edits it adds, by the tokens they act on (usually [`Positions::Generated`]).
    pub action: Vec<(Positions, Intervention)>,
    /// How long it acts.
    pub hold: GuardHold,
}

/// How long a [`Guard`] acts once its score crossed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuardHold {
    /// Until the reply ends.
    #[default]
    Rest,
    /// While the score stays above the threshold: it switches off when the score falls back and on again
    /// when it rises.
    WhileAbove,
}

impl Guard {
    /// Whether the guard acts next, given its state now and the score just read.
    fn next(&self, active: bool, score: f32) -> bool {
        let above = f64::from(score) > self.threshold;
        match self.hold {
            GuardHold::Rest => active || above,
            GuardHold::WhileAbove => above,
        }
    }
}

impl RowControl {
    /// No edits.
    pub fn none() -> Self {
        RowControl::default()
    }

    /// Adds `edits` at the tokens `positions` selects.
    pub fn with(mut self, positions: Positions, edits: Intervention) -> Self {
        self.edits.push((positions, edits));
        self
    }

    /// Whether the row is left alone (reading it does not count).
    pub fn is_none(&self) -> bool {
        self.edits.iter().all(|(_, i)| i.edits.is_empty()) && self.guard.is_none()
    }

    /// The edits in force: the row's own, and its guard's when the guard acts.
    fn in_force(&self, guarded: bool) -> RowControl {
        let mut edits = self.edits.clone();
        if let (true, Some(g)) = (guarded, &self.guard) {
            edits.extend(g.action.iter().cloned());
        }
        RowControl { edits, readout: None, guard: None }
    }

    /// Checks that a guard has a readout score to watch and a finite threshold.
    fn check(&self, id: u64) -> Result<()> {
        let Some(g) = &self.guard else { return Ok(()) };
        let width = self.readout.as_ref().map_or(0, Readout::width);
        if g.score >= width {
            return Err(ModelError::InvalidArgument(format!("request {id}: its guard watches score {} but its readout has {width} scores", g.score)));
        }
        if !g.threshold.is_finite() {
            return Err(ModelError::InvalidArgument(format!("request {id}: guard threshold {} is not a finite number", g.threshold)));
        }
        Ok(())
    }
}

/// The hooks of a batch whose row i carries `rows[i]`: one [`Interventions`] per distinct position
/// selector, with no edit for the rows that have none there.
pub fn row_hooks(rows: &[&RowControl]) -> Vec<Interventions> {
    let mut selectors: Vec<Positions> = Vec::new();
    for c in rows {
        for (p, i) in &c.edits {
            if !i.edits.is_empty() && !selectors.contains(p) {
                selectors.push(p.clone());
            }
        }
    }
    selectors
        .into_iter()
        .map(|sel| {
            let per_row = rows
                .iter()
                .map(|c| {
                    let mut merged = Intervention::none();
                    for (p, i) in &c.edits {
                        if *p == sel {
                            merged.edits.extend(i.edits.iter().cloned());
                        }
                    }
                    merged
                })
                .collect();
            Interventions::new(per_row, sel)
        })
        .collect()
}

/// A sequence to add to the batch.
pub struct BatchRequest {
    /// The caller's key for this sequence, echoed in its events.
    pub id: u64,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Its decoding settings; `eos_token_ids` must hold the model's end tokens.
    pub config: GenerationConfig,
    /// Its edits.
    pub control: RowControl,
}

/// What happened to a sequence during a call.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Its readout's scores of the state that chose its next token (the [`Event::Token`] that follows).
    Readout {
        /// The sequence.
        id: u64,
        /// One score per direction of its [`Readout`].
        scores: Vec<f32>,
    },
    /// Its guard started (`active`) or stopped acting, from the next token on.
    Guard {
        /// The sequence.
        id: u64,
        /// Whether it acts now.
        active: bool,
        /// Index of the first reply token the switch affects (the tokens generated so far).
        at_token: usize,
    },
    /// It produced a token of its reply.
    Token {
        /// The sequence.
        id: u64,
        /// The token.
        token: u32,
    },
    /// It finished and left the batch.
    Finished {
        /// The sequence.
        id: u64,
        /// Why.
        stop: StopReason,
    },
}

struct Row {
    id: u64,
    decoder: RowDecoder,
    control: RowControl,
    // Whether its guard's edits are in force.
    guarded: bool,
    // The token to feed at the next step; None once the row finished (it then rides along on padding until
    // the batch is regrouped).
    next: Option<u32>,
}

/// A request queued with [`ContinuousBatch::enqueue`] whose prompt has not fully run yet.
struct Prefill {
    request: BatchRequest,
    /// Its own decode state once its first chunk started (prompts longer than a chunk only).
    state: Option<DecodeState>,
    /// Prompt tokens whose chunks have ended.
    done: usize,
    /// The chunk part-way through the blocks, and its token count.
    chunk: Option<(ChunkInFlight, usize)>,
    hooks: Vec<Interventions>,
    // Its readout, during its last chunk.
    readouts: Option<Readouts>,
}

/// A running batch of sequences over one model.
pub struct ContinuousBatch<'m> {
    model: &'m Transformer,
    pad_id: u32,
    state: Option<DecodeState>,
    rows: Vec<Row>,
    hooks: Vec<Interventions>,
    readouts: Readouts,
    pending: VecDeque<Prefill>,
    prefill_tokens: usize,
    // Seconds of a decoding step (moving average): while rows decode, a long prompt's chunk runs about this
    // long per step.
    decode_secs: Option<f64>,
    // Seconds of one block of a long prompt's chunk (moving average): a slice takes the next block only if
    // it fits.
    block_secs: Option<f64>,
}

/// Prompt tokens [`ContinuousBatch::step`] prefills at most per step, by default: the short prompts it starts
/// together, and the size of a long prompt's chunks. A long prompt's chunk runs its blocks a few at a time
/// (about one decoding step's time per step while rows decode; all of them alone, unless the caller's
/// `interrupt` says requests are waiting), so the chunk size trades only the long prompt's own speed
/// (larger matrix products) against its [chunk, context] attention temporaries (docs/performance.md).
pub const PREFILL_TOKENS: usize = 128;

impl<'m> ContinuousBatch<'m> {
    /// An empty batch; `pad_id` pads prompts and finished rows.
    pub fn new(model: &'m Transformer, pad_id: u32) -> Self {
        ContinuousBatch {
            model,
            pad_id,
            state: None,
            rows: Vec::new(),
            hooks: Vec::new(),
            readouts: Readouts::new(Vec::new()),
            pending: VecDeque::new(),
            prefill_tokens: PREFILL_TOKENS,
            decode_secs: None,
            block_secs: None,
        }
    }

    /// Sets the prompt tokens each [`ContinuousBatch::step`] may prefill, and a long prompt's chunk size (at
    /// least 1).
    pub fn with_prefill_tokens(mut self, tokens: usize) -> Self {
        self.prefill_tokens = tokens.max(1);
        self
    }

    /// Sequences still decoding.
    pub fn len(&self) -> usize {
        self.rows.iter().filter(|r| r.next.is_some()).count()
    }

    /// Sequences queued by [`ContinuousBatch::enqueue`] whose prompt has not fully run.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether no sequence is decoding or waiting for its prefill.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.pending.is_empty()
    }

    /// Ids of the sequences still decoding, in batch order.
    pub fn ids(&self) -> Vec<u64> {
        self.rows.iter().filter(|r| r.next.is_some()).map(|r| r.id).collect()
    }

    /// Queues requests whose prompts [`ContinuousBatch::step`] then runs between decoding steps, at most
    /// [`PREFILL_TOKENS`] (see [`ContinuousBatch::with_prefill_tokens`]) per step: short prompts together,
    /// a long one in chunks, so that a long prompt neither stalls the running rows nor materialises
    /// [prompt, prompt] attention scores. Tokens come out as with [`ContinuousBatch::admit`].
    ///
    /// A request with an empty prompt or a token outside the vocabulary is refused here, before anything is
    /// queued, so that it cannot fail a later step shared with other rows.
    pub fn enqueue(&mut self, requests: Vec<BatchRequest>) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        for r in &requests {
            if r.prompt.is_empty() {
                return Err(ModelError::InvalidArgument(format!("request {}: the prompt has no tokens", r.id)));
            }
            if let Some(bad) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidArgument(format!("request {}: token id {bad} is outside the vocabulary of {vocab}", r.id)));
            }
            r.control.check(r.id)?;
        }
        self.pending.extend(requests.into_iter().map(|request| Prefill {
            request,
            state: None,
            done: 0,
            chunk: None,
            hooks: Vec::new(),
            readouts: None,
        }));
        Ok(())
    }

    /// Runs the prompts of `requests` as one batch now, chooses each one's first token and adds them to the
    /// running batch. Returns their first tokens (and the end of those that finish at once).
    pub fn admit(&mut self, requests: Vec<BatchRequest>) -> Result<Vec<Event>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for r in &requests {
            r.control.check(r.id)?;
        }
        let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
        let (ids, valid, lens) = left_pad(&prompts, self.pad_id)?;
        let mut fresh = DecodeState::new(&lens, self.model.config().n_layers, self.model.device(), true);
        let controls: Vec<&RowControl> = requests.iter().map(|r| &r.control).collect();
        let mut prefill_hooks = row_hooks(&controls);
        let mut readouts = Readouts::new(requests.iter().map(|r| r.control.readout.clone()).collect());
        let logits = {
            let mut set = HookSet::new();
            set.push_all(&mut prefill_hooks);
            // After the edits: the readout scores the state the row goes on with.
            if !readouts.is_empty() {
                set.push(&mut readouts);
            }
            self.model.forward_chunk(&ids, &valid, &mut fresh, &mut set, LogitsFor::Last)?
        };
        let scores = readouts.take_last()?;
        self.start_rows(requests, &logits, fresh, scores)
    }

    /// Chooses the first token of rows whose prompts just ran into `fresh` (`logits` of their last prompt
    /// token, `scores` their readouts there) and adds them to the running batch.
    fn start_rows(&mut self, requests: Vec<BatchRequest>, logits: &Tensor, fresh: DecodeState, scores: ForwardScores) -> Result<Vec<Event>> {
        let mut new_rows: Vec<Row> = requests
            .into_iter()
            .map(|r| Row { id: r.id, decoder: RowDecoder::new(&r.prompt, &r.config), control: r.control, guarded: false, next: None })
            .collect();
        let mut events = Vec::new();
        let zero_budget: Vec<bool> = new_rows.iter().map(|r| r.decoder.config().max_new_tokens == 0).collect();
        {
            let mut live: Vec<Option<&mut RowDecoder>> =
                new_rows.iter_mut().zip(&zero_budget).map(|(r, &z)| (!z).then_some(&mut r.decoder)).collect();
            let choices = choose_tokens(&logits.select(1, 0), &mut live)?;
            for ((row, choice), scores) in new_rows.iter_mut().zip(choices).zip(scores) {
                emit(row, choice, scores, &mut events);
            }
        }
        self.join_parts(Some(fresh), new_rows)?;
        Ok(events)
    }

    /// One decoding step for every sequence in the batch, then up to the prefill budget of queued prompts
    /// ([`ContinuousBatch::enqueue`]). Returns each sequence's next token, the end of those that finish, and
    /// the first tokens of those whose prompt finished running.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        self.step_until(&|| false)
    }

    /// [`ContinuousBatch::step`] for a caller that learns of new requests while it runs (a server): when no
    /// row decodes, a long prompt's chunk runs block after block until it ends or `interrupt()` says
    /// requests wait to be queued, so that they start within one block rather than one chunk.
    pub fn step_until(&mut self, interrupt: &dyn Fn() -> bool) -> Result<Vec<Event>> {
        let started = std::time::Instant::now();
        let mut events = self.decode()?;
        if !events.is_empty() {
            self.decode_secs = Some(average(self.decode_secs, started.elapsed().as_secs_f64()));
        }
        let waiting = !events.is_empty();
        events.extend(self.prefill(waiting, interrupt)?);
        Ok(events)
    }

    /// Runs queued prompts for at most the prefill budget: short prompts not yet started, oldest first, in
    /// one forward; then blocks of the current chunk of the oldest long prompt, on its own state. `waiting`:
    /// this step already has events for the caller.
    fn prefill(&mut self, waiting: bool, interrupt: &dyn Fn() -> bool) -> Result<Vec<Event>> {
        let mut budget = self.prefill_tokens;
        let mut short = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let n = self.pending[i].request.prompt.len();
            if self.pending[i].state.is_none() && n <= budget {
                budget -= n;
                short.extend(self.pending.remove(i).map(|p| p.request));
            } else {
                i += 1;
            }
        }
        let mut events = self.admit(short)?;
        let (model, n_layers) = (self.model, self.model.config().n_layers);
        // Every queued prompt has tokens left (it leaves the queue when its last chunk ran).
        let Some(front) = self.pending.front_mut() else {
            return Ok(events);
        };
        let prompt_len = front.request.prompt.len();
        if front.state.is_none() {
            let mut state = DecodeState::new(&[prompt_len as i64], n_layers, model.device(), true);
            state.reserve((prompt_len + front.request.config.max_new_tokens) as i64);
            front.state = Some(state);
            front.hooks = row_hooks(&[&front.request.control]);
        }
        let state = front.state.as_mut().expect("set above");
        if front.chunk.is_none() && front.done + self.prefill_tokens >= prompt_len && front.request.control.readout.is_some() {
            // The last chunk's last token chooses the first reply token: only its readout is reported.
            front.readouts = Some(Readouts::new(vec![front.request.control.readout.clone()]));
        }
        let mut set = HookSet::new();
        set.push_all(&mut front.hooks);
        if let Some(r) = front.readouts.as_mut() {
            set.push(r);
        }
        if front.chunk.is_none() {
            let n = self.prefill_tokens.min(prompt_len - front.done);
            let chunk: Vec<i64> = front.request.prompt[front.done..front.done + n].iter().map(|&t| t as i64).collect();
            let valid = Tensor::ones([1, n as i64], (Kind::Bool, tch::Device::Cpu));
            let tokens = Tensor::from_slice(&chunk).view([1, n as i64]);
            front.chunk = Some((model.begin_chunk(&tokens, &valid, None, state, &mut set, false)?, n));
        }
        // While other rows decode, or tokens of this step wait to be delivered, the chunk runs about as long as
        // a decoding step (its next block only if it fits), so that each of their tokens waits about twice its
        // time alone; otherwise it runs to its end unless requests are waiting.
        let bounded = waiting || !events.is_empty() || self.rows.iter().any(|r| r.next.is_some());
        let slice = self.decode_secs.unwrap_or(0.0);
        let block_secs = &mut self.block_secs;
        let (started, mut last) = (std::time::Instant::now(), std::time::Instant::now());
        let mut more = || {
            *block_secs = Some(average(*block_secs, last.elapsed().as_secs_f64()));
            last = std::time::Instant::now();
            if bounded {
                started.elapsed().as_secs_f64() + block_secs.unwrap_or(0.0) <= slice
            } else {
                !interrupt()
            }
        };
        let (chunk, n) = front.chunk.as_mut().expect("set above");
        let n = *n;
        if !model.run_blocks(chunk, state, &mut set, &mut more)? {
            return Ok(events);
        }
        let chunk = front.chunk.take().expect("ran above").0;
        let logits = model.end_chunk(chunk, state, &mut set, LogitsFor::Last)?;
        drop(set);
        // Each chunk's temporaries outgrow the last one's (they scale with the context), and glibc's heap keeps
        // what they leave resident unless its free pages go back (at 5k tokens: 1.20x the cache, not 1.12x).
        if model.device() == tch::Device::Cpu {
            crate::device::return_freed_pages();
        }
        front.done += n;
        if front.done == prompt_len {
            let mut done = self.pending.pop_front().expect("the front ran above");
            let state = done.state.expect("ran above");
            let scores = match done.readouts.as_mut() {
                Some(r) => r.take_last()?,
                None => vec![None],
            };
            events.extend(self.start_rows(vec![done.request], &logits, state, scores)?);
        }
        Ok(events)
    }

    fn decode(&mut self) -> Result<Vec<Event>> {
        let Some(state) = self.state.as_mut() else {
            return Ok(Vec::new());
        };
        if self.rows.iter().all(|r| r.next.is_none()) {
            return Ok(Vec::new());
        }
        let b = self.rows.len() as i64;
        let feed: Vec<i64> = self.rows.iter().map(|r| r.next.unwrap_or(self.pad_id) as i64).collect();
        let tokens = Tensor::from_slice(&feed).view([b, 1]);
        let ones = Tensor::ones([b, 1], (Kind::Bool, tch::Device::Cpu));
        let logits = {
            let mut set = HookSet::new();
            set.push_all(&mut self.hooks);
            if !self.readouts.is_empty() {
                set.push(&mut self.readouts);
            }
            self.model.forward_chunk(&tokens, &ones, state, &mut set, LogitsFor::Last)?
        };
        let scores = self.readouts.take_last()?;
        let mut events = Vec::new();
        let choices = {
            let mut live: Vec<Option<&mut RowDecoder>> = self.rows.iter_mut().map(|r| r.next.is_some().then_some(&mut r.decoder)).collect();
            choose_tokens(&logits.select(1, 0), &mut live)?
        };
        let mut switched = false;
        for ((row, choice), scores) in self.rows.iter_mut().zip(choices).zip(scores) {
            if row.next.is_some() {
                switched |= emit(row, choice, scores, &mut events);
            }
        }
        if switched {
            self.rebuild_hooks();
        }
        self.compact_if_worth_it()?;
        Ok(events)
    }

    /// Drops sequence `id` from the batch or the prefill queue (a client went away). Returns whether it was
    /// there.
    pub fn cancel(&mut self, id: u64) -> Result<bool> {
        if let Some(pos) = self.pending.iter().position(|p| p.request.id == id) {
            self.pending.remove(pos);
            return Ok(true);
        }
        let Some(row) = self.rows.iter_mut().find(|r| r.id == id && r.next.is_some()) else {
            return Ok(false);
        };
        row.next = None;
        self.compact_if_worth_it()?;
        Ok(true)
    }

    /// Regroups the batch without its finished rows once that is worth a copy of the cache.
    fn compact_if_worth_it(&mut self) -> Result<()> {
        let dead = self.rows.iter().filter(|r| r.next.is_none()).count();
        if worth_compacting(dead, self.rows.len()) {
            self.join_parts(None, Vec::new())?;
        }
        Ok(())
    }

    /// Regroups the live rows of the running batch and the live rows of `fresh` into one state.
    fn join_parts(&mut self, fresh: Option<DecodeState>, new_rows: Vec<Row>) -> Result<()> {
        let keep_old: Vec<i64> = (0..self.rows.len() as i64).filter(|&i| self.rows[i as usize].next.is_some()).collect();
        let keep_new: Vec<i64> = (0..new_rows.len() as i64).filter(|&i| new_rows[i as usize].next.is_some()).collect();
        // Room for every kept row's remaining tokens, so decoding never reallocates the cache (the slots are
        // only touched as tokens come).
        let headroom = self
            .rows
            .iter()
            .chain(&new_rows)
            .filter(|r| r.next.is_some())
            .map(|r| r.decoder.config().max_new_tokens.saturating_sub(r.decoder.new_tokens()) + 1)
            .max()
            .unwrap_or(1);
        let all_new = keep_old.is_empty() && fresh.as_ref().is_some_and(|s| s.batch() == keep_new.len() as i64);
        // The old state is consumed (or dropped when none of its rows stays) before the new one is built.
        let mut parts: Vec<(DecodeState, Vec<i64>)> = Vec::new();
        if let Some(s) = self.state.take() {
            if !keep_old.is_empty() {
                parts.push((s, keep_old));
            }
        }
        let state = if all_new {
            // Nothing to merge: the fresh state becomes the batch's as it is, without a copy of its cache.
            fresh
        } else {
            if let Some(s) = fresh {
                if !keep_new.is_empty() {
                    parts.push((s, keep_new));
                }
            }
            if parts.is_empty() {
                None
            } else {
                Some(DecodeState::regroup(parts, headroom as i64)?)
            }
        };
        let old = std::mem::take(&mut self.rows);
        self.rows = old.into_iter().chain(new_rows).filter(|r| r.next.is_some()).collect();
        self.state = state;
        self.rebuild_hooks();
        self.readouts = Readouts::new(self.rows.iter().map(|r| r.control.readout.clone()).collect());
        if self.state.as_ref().map_or(0, |s| s.batch()) != self.rows.len() as i64 {
            return Err(ModelError::InvalidArgument("continuous batch: rows and decode state disagree".into()));
        }
        Ok(())
    }
}

impl ContinuousBatch<'_> {
    /// The running rows' hooks, from the edits in force (a guard's join its row's once it acts).
    fn rebuild_hooks(&mut self) {
        let controls: Vec<RowControl> = self.rows.iter().map(|r| r.control.in_force(r.guarded)).collect();
        self.hooks = row_hooks(&controls.iter().collect::<Vec<_>>());
    }
}

/// A moving average that follows a change within a few samples.
fn average(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| 0.7 * o + 0.3 * new)
}

/// Turns a row's choice (and its readout's `scores` of the state that made it) into events and sets the
/// token it feeds next, if it goes on; moves its guard. Returns whether the guard switched.
fn emit(row: &mut Row, choice: Option<Choice>, scores: Option<Vec<f32>>, events: &mut Vec<Event>) -> bool {
    let id = row.id;
    let token = match choice {
        Some(Choice::Token(t) | Choice::Last(t)) => Some(t),
        _ => None,
    };
    if let (Some(_), Some(s)) = (token, &scores) {
        events.push(Event::Readout { id, scores: s.clone() });
    }
    row.next = choose_next(id, choice, events);
    let (Some(guard), Some(s), Some(_)) = (&row.control.guard, scores, row.next) else { return false };
    let active = guard.next(row.guarded, s[guard.score]);
    if active == row.guarded {
        return false;
    }
    row.guarded = active;
    events.push(Event::Guard { id, active, at_token: row.decoder.new_tokens() });
    true
}

/// The events of a row's choice; returns the token to feed next, if the row goes on.
fn choose_next(id: u64, choice: Option<Choice>, events: &mut Vec<Event>) -> Option<u32> {
    match choice {
        Some(Choice::Token(token)) => {
            events.push(Event::Token { id, token });
            Some(token)
        }
        Some(Choice::Last(token)) => {
            events.push(Event::Token { id, token });
            events.push(Event::Finished { id, stop: StopReason::Length });
            None
        }
        Some(Choice::Eos) => {
            events.push(Event::Finished { id, stop: StopReason::Eos });
            None
        }
        Some(Choice::NonFinite) => {
            events.push(Event::Finished { id, stop: StopReason::NonFinite });
            None
        }
        None => {
            events.push(Event::Finished { id, stop: StopReason::Length });
            None
        }
    }
}
