//! Prefix branching: run each prompt's tokens before the last one once, then evaluate many interventions at
//! the last prompt token as candidates that share that prefix's KV cache.
//!
//! An intervention that acts only at the last prompt token cannot change any earlier position, so every
//! setting sees the same keys and values for the prefix. A branch chunk puts a prompt's N candidates side by
//! side in the chunk dimension of one batch row: each sits at the last prompt position, attends to the
//! prefix and to itself only, and the prefix's keys and values are shared by all of them (joined to the
//! chunk's own once per layer, never copied per candidate nor stored, so a prefix can serve many sweeps).
//! The chunk starts at the first layer any hook touches: below it every candidate equals the clean last
//! token, whose residuals the [`Prefix`] keeps.
//!
//! This is exact (up to floating-point summation order) for hooks that act at [`Positions::LastPrompt`]
//! only: neuron ablation and enhancement, a head-output add at the last token, a sublayer-output injection.
//! Hooks at other positions would see a different forward pass; use a full forward for them.
//!
//! ```no_run
//! use emo_model::{Edit, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Model, LoadOptions, Positions};
//! # let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! # let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4]];
//! let t = &model.transformer;
//! let mut prefix = t.prefill_prefix(&prompts, model.pad_token_id())?;
//! // Eight neuron ablations of layer 10 on prompt 0, one row each.
//! let rows: Vec<Intervention> =
//!     (0..8).map(|k| Intervention::none().with(HookPoint::MlpPost(10), Edit::Zero(vec![k]))).collect();
//! let mut edits = Interventions::new(rows, Positions::LastPrompt);
//! let logits = t.forward_branches(&mut prefix, &[0; 8], &mut HookSet::new().with(&mut edits), LogitsFor::Last)?;
//! assert_eq!(logits.size()[0], 8);
//! # Ok::<(), emo_model::ModelError>(())
//! ```
use std::collections::BTreeMap;

use tch::Tensor;

use crate::hooks::Capture;
use crate::hooks::{HookPoint, HookSet, Positions};
use crate::kv_cache::DecodeState;
use crate::transformer::{LogitsFor, Transformer};
use crate::{ModelError, Result};

/// A batch of prompts whose tokens before the last one have been run once, ready for branch chunks.
pub struct Prefix {
    state: DecodeState,
    last: Vec<i64>,
    pad_id: i64,
    clean: BTreeMap<HookPoint, Tensor>,
}

impl Prefix {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Bytes held: the prefix's keys and values and the clean residuals.
    pub fn bytes(&self) -> usize {
        self.state.bytes() + self.clean.values().map(crate::device::tensor_bytes).sum::<usize>()
    }

    /// The clean (unedited) last-token activation of every prompt at `point`, [prompts, ...]: kept for
    /// `hook_resid_pre`, `hook_resid_mid` and `hook_resid_post` of every layer and `ln_final.hook_normalized`.
    pub fn clean(&self, point: HookPoint) -> Option<&Tensor> {
        self.clean.get(&point)
    }
}

impl Transformer {
    /// Runs every prompt's tokens but the last (left-padded with `pad_id`) and then its clean last token,
    /// keeping the KV cache of the former and the residuals of the latter. Every prompt needs at least two
    /// tokens.
    pub fn prefill_prefix(&self, prompts: &[Vec<u32>], pad_id: u32) -> Result<Prefix> {
        if let Some(i) = prompts.iter().position(|p| p.len() < 2) {
            return Err(ModelError::InvalidArgument(format!(
                "prompt {i} has {} token(s); branching needs a prefix of at least one token before the last",
                prompts[i].len()
            )));
        }
        let heads: Vec<Vec<u32>> = prompts.iter().map(|p| p[..p.len() - 1].to_vec()).collect();
        let (ids, valid, _) = crate::kv_cache::left_pad(&heads, pad_id)?;
        let lens: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        let n_layers = self.config().n_layers;
        let mut state = DecodeState::new(&lens, n_layers, self.device(), true);
        // Exactly the prefix's slots: branch chunks never write after them.
        state.reserve(ids.size()[1]);
        let _ = self.forward_chunk(&ids, &valid, &mut state, &mut HookSet::new(), LogitsFor::Skip)?;
        let last = prompts.iter().map(|p| *p.last().expect("checked above") as i64).collect();
        let mut prefix = Prefix { state, last, pad_id: pad_id as i64, clean: BTreeMap::new() };
        let points: Vec<HookPoint> = (0..n_layers)
            .flat_map(|l| [HookPoint::ResidPre(l), HookPoint::ResidMid(l), HookPoint::ResidPost(l)])
            .chain([HookPoint::LnFinal])
            .collect();
        let mut capture = Capture::new(points.iter().copied(), Positions::LastPrompt);
        let rows: Vec<usize> = (0..prompts.len()).collect();
        let _ = self.forward_branches(&mut prefix, &rows, &mut HookSet::new().with(&mut capture), LogitsFor::Skip)?;
        for p in points {
            let t = capture.per_row(p, prompts.len())?.to_device(self.device()).to_kind(self.kind());
            prefix.clean.insert(p, t);
        }
        Ok(prefix)
    }

    /// Evaluates logical rows at the last prompt token over a shared prefix: `rows[r]` is the prompt row `r`
    /// continues, and hooks see row `r` as [`crate::hooks::Selection::row_ids`] = r (so an
    /// [`crate::Interventions`] of `rows.len()` rows gives each its own edit). Blocks before the first layer
    /// any hook wants are skipped. Returns the logits of each row, [rows, vocab] (an empty tensor for
    /// [`LogitsFor::Skip`]).
    pub fn forward_branches(&self, prefix: &mut Prefix, rows: &[usize], hooks: &mut HookSet, logits: LogitsFor) -> Result<Tensor> {
        let p = prefix.len();
        if let Some(bad) = rows.iter().find(|&&r| r >= p) {
            return Err(ModelError::InvalidArgument(format!("branch row names prompt {bad}, the prefix has {p} prompts")));
        }
        if rows.is_empty() {
            return Ok(Tensor::empty([0], (self.kind(), self.device())));
        }
        // Each prompt's candidates side by side in the chunk dimension, padded to the widest.
        let mut cols: Vec<Vec<i64>> = vec![Vec::new(); p];
        for (r, &prompt) in rows.iter().enumerate() {
            cols[prompt].push(r as i64);
        }
        let width = cols.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(p * width);
        let mut tokens = Vec::with_capacity(p * width);
        for (prompt, c) in cols.iter().enumerate() {
            for j in 0..width {
                let r = c.get(j).copied().unwrap_or(-1);
                ids.push(r);
                tokens.push(if r >= 0 { prefix.last[prompt] } else { prefix.pad_id });
            }
        }
        let shape = [p as i64, width as i64];
        let device = self.device();
        let row_ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let tokens = Tensor::from_slice(&tokens).view(shape).to_device(device);

        let n_layers = self.config().n_layers;
        hooks.route(n_layers);
        let first = HookPoint::all(n_layers)
            .into_iter()
            .find(|&pt| hooks.is_active(pt))
            .map(|pt| match pt {
                HookPoint::Embed => 0,
                pt => pt.layer().unwrap_or(n_layers),
            })
            .unwrap_or(n_layers);
        let from = if prefix.clean.is_empty() { 0 } else { first };
        let resid = if from == 0 {
            None
        } else {
            let point = if from < n_layers { HookPoint::ResidPre(from) } else { HookPoint::ResidPost(n_layers - 1) };
            let clean = &prefix.clean[&point]; // [p, d]
            Some(clean.unsqueeze(1).expand([p as i64, width as i64, clean.size()[1]], false).contiguous())
        };
        let out = self.forward_branch_chunk(&tokens, &row_ids, from, resid, &mut prefix.state, hooks, logits)?;
        if logits == LogitsFor::Skip {
            return Ok(out);
        }
        // [p, width, vocab] -> [rows, vocab] in logical-row order.
        let flat_ids = row_ids.view([-1]);
        let keep = flat_ids.ge(0).nonzero().squeeze_dim(1);
        let vocab = out.size()[2];
        let picked = out.view([-1, vocab]).index_select(0, &keep);
        let order = flat_ids.index_select(0, &keep).argsort(0, false);
        Ok(picked.index_select(0, &order))
    }
}
