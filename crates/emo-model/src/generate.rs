//! Batched decoding with left padding and a KV cache, with Hugging Face's semantics for `max_new_tokens`,
//! `min_new_tokens`, `repetition_penalty` and `no_repeat_ngram_size` (spec section 3), greedy or sampled
//! ([`Sampling`]). Hooks stay active for the prompt and every generated token.
use std::collections::HashSet;

use tch::{Kind, Tensor};

use crate::hooks::HookSet;
use crate::kv_cache::{left_pad, DecodeState};
use crate::sampling::{Sampler, Sampling};
use crate::transformer::{LogitsFor, Transformer};
use crate::Result;

/// Decoding settings. Greedy by default: the paper's runs are greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// End-of-sequence is forbidden before this many new tokens.
    pub min_new_tokens: usize,
    /// Hugging Face's CTRL-style penalty on every token already in the sequence (1.0 = off).
    pub repetition_penalty: f32,
    /// Forbid repeating any n-gram of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Tokens that end a sequence; empty = the model's own.
    pub eos_token_ids: Vec<u32>,
    /// Ignore end-of-sequence tokens and always produce `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Use the KV cache (off only to check it: every step then re-runs the whole sequence).
    pub use_cache: bool,
    /// Greedy, or sampled with temperature, top-k, top-p and a seed.
    pub sampling: Sampling,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 100,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_ids: Vec::new(),
            ignore_eos: false,
            use_cache: true,
            sampling: Sampling::greedy(),
        }
    }
}

impl GenerationConfig {
    /// Plain greedy decoding of at most `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationConfig { max_new_tokens, ..Default::default() }
    }

    /// The paper's elicitation: greedy, 100 new tokens.
    pub fn elicitation() -> Self {
        Self::greedy(100)
    }

    /// The paper's steering validation: min 10, penalty 1.05, no repeated trigrams.
    pub fn steering() -> Self {
        GenerationConfig { min_new_tokens: 10, repetition_penalty: 1.05, no_repeat_ngram_size: 3, ..Self::greedy(100) }
    }

    /// The paper's circuit modulation: min 10, penalty 1.1, no repeated trigrams.
    pub fn modulation() -> Self {
        GenerationConfig { repetition_penalty: 1.1, ..Self::steering() }
    }

    /// Whether choosing a token needs the logits on the host (processors or sampling); plain greedy
    /// decoding takes the argmax on the device.
    pub fn needs_host_logits(&self) -> bool {
        self.repetition_penalty != 1.0 || self.no_repeat_ngram_size > 0 || self.min_new_tokens > 0 || !self.sampling.is_greedy()
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It produced an end-of-sequence token (not included in `tokens`).
    Eos,
    /// It reached `max_new_tokens`.
    Length,
    /// Its logits stopped being finite (an edit blew its hidden state up); nothing was chosen.
    NonFinite,
}

/// One row's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// New tokens, without the end-of-sequence token.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
}

/// What one decoding step did to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The row produced this token and goes on.
    Token(u32),
    /// The row produced this token and reached `max_new_tokens`.
    Last(u32),
    /// The row produced an end-of-sequence token (not part of its reply).
    Eos,
    /// The row's logits were not finite: it ends without a token.
    NonFinite,
}

/// One row's decoding: its sequence so far, its settings and its sampler. The batched [`generate`] and the
/// continuous batch ([`crate::batcher`]) both choose every token through it.
#[derive(Clone, Debug)]
pub struct RowDecoder {
    seq: Vec<u32>,
    new_tokens: usize,
    cfg: GenerationConfig,
    eos: HashSet<u32>,
    sampler: Sampler,
}

impl RowDecoder {
    /// A row with prompt `prompt`; `cfg.eos_token_ids` must already hold the model's end tokens.
    pub fn new(prompt: &[u32], cfg: &GenerationConfig) -> Self {
        RowDecoder {
            seq: prompt.to_vec(),
            new_tokens: 0,
            eos: cfg.eos_token_ids.iter().copied().collect(),
            sampler: Sampler::new(&cfg.sampling),
            cfg: cfg.clone(),
        }
    }

    /// The row's settings.
    pub fn config(&self) -> &GenerationConfig {
        &self.cfg
    }

    /// Prompt and new tokens so far.
    pub fn sequence(&self) -> &[u32] {
        &self.seq
    }

    /// Tokens chosen so far (an end-of-sequence token counts).
    pub fn new_tokens(&self) -> usize {
        self.new_tokens
    }

    /// Chooses the next token from the row's raw logits (processed here in place) and records it.
    pub fn choose(&mut self, logits: &mut [f32]) -> Choice {
        process_logits(logits, &self.seq, self.new_tokens, &self.cfg, &self.eos);
        let tok = self.sampler.pick(logits);
        self.record(tok)
    }

    /// Records a token chosen elsewhere (the device argmax of plain greedy rows).
    pub fn record(&mut self, tok: u32) -> Choice {
        self.seq.push(tok);
        self.new_tokens += 1;
        if !self.cfg.ignore_eos && self.eos.contains(&tok) {
            Choice::Eos
        } else if self.new_tokens >= self.cfg.max_new_tokens {
            Choice::Last(tok)
        } else {
            Choice::Token(tok)
        }
    }
}

/// Chooses the next token of every row from `last` ([rows, vocab] logits of each row's last position);
/// `rows[i]` is `None` for a row that is already finished (its logits are ignored).
pub fn choose_tokens(last: &Tensor, rows: &mut [Option<&mut RowDecoder>]) -> Result<Vec<Option<Choice>>> {
    let last = last.to_kind(Kind::Float);
    // Raw logits are finite unless an edit blew the state up; such a row must end, not emit argmax(NaN).
    let finite = Vec::<bool>::try_from(last.isfinite().all_dim(-1, false).to_device(tch::Device::Cpu))?;
    let mut choices = choose_finite(&last, rows)?;
    for ((choice, ok), row) in choices.iter_mut().zip(finite).zip(rows.iter()) {
        if !ok && row.is_some() {
            *choice = Some(Choice::NonFinite);
        }
    }
    Ok(choices)
}

fn choose_finite(last: &Tensor, rows: &mut [Option<&mut RowDecoder>]) -> Result<Vec<Option<Choice>>> {
    let host = rows.iter().flatten().any(|r| r.cfg.needs_host_logits());
    if host {
        let vocab = last.size()[1] as usize;
        let flat = Vec::<f32>::try_from(last.to_device(tch::Device::Cpu).contiguous().view(-1))?;
        Ok(rows
            .iter_mut()
            .enumerate()
            .map(|(r, row)| {
                row.as_mut().map(|row| {
                    let mut logits = flat[r * vocab..(r + 1) * vocab].to_vec();
                    row.choose(&mut logits)
                })
            })
            .collect())
    } else {
        let ids = Vec::<i64>::try_from(last.argmax(-1, false).to_device(tch::Device::Cpu))?;
        Ok(rows.iter_mut().zip(ids).map(|(row, t)| row.as_mut().map(|row| row.record(t as u32))).collect())
    }
}

/// Decodes every prompt of `prompts` in one batch.
///
/// Rows that finish leave the batch (once they are worth a copy of the cache, [`worth_compacting`]), so a
/// batch costs what its live rows cost rather than what its longest reply does. Hooks keep seeing each row
/// as its place among `prompts` ([`crate::hooks::Selection::row_ids`]); a hook that indexes the activation by
/// batch row sees only the live rows.
pub fn generate(model: &Transformer, prompts: &[Vec<u32>], cfg: &GenerationConfig, pad_id: u32, hooks: &mut HookSet) -> Result<Vec<Generated>> {
    let (ids, valid, lens) = left_pad(prompts, pad_id)?;
    let b = prompts.len();
    let device = model.device();
    let mut rows: Vec<RowDecoder> = prompts.iter().map(|p| RowDecoder::new(p, cfg)).collect();
    let mut out: Vec<Generated> = (0..b).map(|_| Generated { tokens: Vec::new(), stop: StopReason::Length }).collect();
    let mut done = vec![false; b];
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let n_layers = model.config().n_layers;
    let mut state = DecodeState::new(&lens, n_layers, device, cfg.use_cache);
    let mut logits = model.forward_chunk(&ids, &valid, &mut state, hooks, LogitsFor::Last)?;
    // The prompts' indices of the batch's rows, in order: finished rows leave it.
    let mut batch: Vec<usize> = (0..b).collect();
    for step in 0..cfg.max_new_tokens {
        let last = logits.select(1, logits.size()[1] - 1);
        let mut slots: Vec<Option<&mut RowDecoder>> = rows.iter_mut().map(Some).collect();
        let mut live: Vec<Option<&mut RowDecoder>> = batch.iter().map(|&r| slots[r].take().filter(|_| !done[r])).collect();
        let choices = choose_tokens(&last, &mut live)?;
        let mut feed = Vec::with_capacity(batch.len());
        for (&r, choice) in batch.iter().zip(choices) {
            match choice {
                Some(Choice::Eos) => {
                    done[r] = true;
                    out[r].stop = StopReason::Eos;
                }
                Some(Choice::NonFinite) => {
                    done[r] = true;
                    out[r].stop = StopReason::NonFinite;
                }
                Some(Choice::Token(t)) => out[r].tokens.push(t),
                Some(Choice::Last(t)) => {
                    out[r].tokens.push(t);
                    done[r] = true;
                }
                None => {}
            }
            // Finished rows still in the batch run on padding, as in Hugging Face; nobody reads them.
            feed.push(match choice {
                Some(Choice::Token(t)) => t as i64,
                _ => pad_id as i64,
            });
        }
        if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        if cfg.use_cache {
            let dead = batch.iter().filter(|&&r| done[r]).count();
            if worth_compacting(dead, batch.len()) {
                let keep: Vec<i64> = (0..batch.len() as i64).filter(|&i| !done[batch[i as usize]]).collect();
                let headroom = (cfg.max_new_tokens - step) as i64;
                state = DecodeState::regroup(vec![(state, keep.clone())], headroom)?;
                feed = keep.iter().map(|&i| feed[i as usize]).collect();
                batch.retain(|&r| !done[r]);
            }
            let n = batch.len() as i64;
            let tokens = Tensor::from_slice(&feed).view([n, 1]);
            let ones = Tensor::ones([n, 1], (Kind::Bool, tch::Device::Cpu));
            let ids: Vec<i64> = batch.iter().map(|&r| r as i64).collect();
            logits = model.forward_chunk_as(&tokens, &ones, &ids, &mut state, hooks, LogitsFor::Last)?;
        } else {
            // Re-run every row: only to check the cache.
            let seqs: Vec<Vec<u32>> = rows.iter().map(|r| r.seq.clone()).collect();
            let (ids, valid, _) = left_pad(&seqs, pad_id)?;
            let mut fresh = DecodeState::new(&lens, n_layers, device, false);
            logits = model.forward_chunk(&ids, &valid, &mut fresh, hooks, LogitsFor::Last)?;
        }
    }
    Ok(out)
}

/// Whether a batch with `dead` finished rows among `rows` should be regrouped without them: finished rows
/// ride along on padding (cheap) until they are a quarter of the batch, then the copy of the cache pays.
pub(crate) fn worth_compacting(dead: usize, rows: usize) -> bool {
    dead > 0 && (dead * 4 >= rows || dead == rows)
}

/// Applies the logits processors in Hugging Face's order to one row. `seq` is the row's prompt and new
/// tokens so far (never padding: unlike Hugging Face, left padding is not penalised), `step` the number of
/// tokens generated so far.
pub fn process_logits(row: &mut [f32], seq: &[u32], step: usize, cfg: &GenerationConfig, eos: &HashSet<u32>) {
    if cfg.repetition_penalty != 1.0 {
        let p = cfg.repetition_penalty;
        let seen: HashSet<u32> = seq.iter().copied().collect();
        for t in seen {
            if let Some(x) = row.get_mut(t as usize) {
                *x = if *x < 0.0 { *x * p } else { *x / p };
            }
        }
    }
    let n = cfg.no_repeat_ngram_size;
    if n > 0 && seq.len() + 1 >= n {
        let prefix = &seq[seq.len() + 1 - n..];
        let banned: HashSet<u32> = seq.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect();
        for t in banned {
            if let Some(x) = row.get_mut(t as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    if step < cfg.min_new_tokens {
        for &t in eos {
            if let Some(x) = row.get_mut(t as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}
