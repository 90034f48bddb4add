//! Sweeps in the spirit of TransformerLens' `generic_activation_patch`: prompts x interventions x a metric
//! -> a `[prompt, intervention]` table, with rows packed into full forwards.
//!
//! Interventions at the last prompt token (every ablation, enhancement and injection of sections 6 and 7)
//! run through prefix branching: each prompt's prefix once, then every intervention as a branch row that
//! starts at its first edited layer. Metric points below that layer are read from the prefix's clean last
//! token, which is exact since no hook touches them. Interventions at other positions pay a full forward
//! per row.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use emo_model::branch::Prefix;
use emo_model::{Capture, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Model, ModelError, Positions, Result, Transformer};
use indicatif::ProgressBar;

use crate::stage::progress_bar;
use tch::{Kind, Tensor};

/// What a sweep reads from each row: the sum over `points` of the projection of the last prompt token's
/// activation there on a direction, e.g. the residual after every layer's sublayer add on that layer's
/// emotion direction (section 6's score s), or `ln_final.hook_normalized` on v_ref (section 7's).
pub struct Metric {
    points: Vec<HookPoint>,
    // [n_points, d] shared by every prompt, or [n_prompts, n_points, d].
    directions: Tensor,
}

impl Metric {
    /// `sum_i <act(points[i]), directions[.., i, :]>`; `directions` is `[points, d_model]` for every prompt
    /// alike, or `[prompts, points, d_model]` for a direction set per prompt (e.g. its emotion's). Points
    /// must be residual sites (`hook_resid_pre`, `hook_resid_mid`, `hook_resid_post`) or
    /// `ln_final.hook_normalized`.
    pub fn projection(points: Vec<HookPoint>, directions: Tensor) -> Result<Metric> {
        let bad_point =
            points.iter().find(|p| !matches!(p, HookPoint::ResidPre(_) | HookPoint::ResidMid(_) | HookPoint::ResidPost(_) | HookPoint::LnFinal));
        if let Some(p) = bad_point {
            return Err(ModelError::InvalidArgument(format!("a sweep metric reads residual sites or ln_final, not {p}")));
        }
        let size = directions.size();
        let n = points.len() as i64;
        let ok = match size.len() {
            2 => size[0] == n,
            3 => size[1] == n,
            _ => false,
        };
        if !ok || points.is_empty() {
            return Err(ModelError::InvalidArgument(format!(
                "metric directions have shape {size:?}; expected [{n}, d_model] or [prompts, {n}, d_model] for {n} points"
            )));
        }
        Ok(Metric { points, directions: directions.to_kind(Kind::Float) })
    }

    /// `<ln_final.hook_normalized, v>` at the last prompt token.
    pub fn final_state(v: &Tensor) -> Result<Metric> {
        Metric::projection(vec![HookPoint::LnFinal], v.reshape([1, -1]))
    }

    /// The points read.
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// Directions of point `i` for each of `prompts` (indices into the sweep's prompts): [n, d].
    fn directions_for(&self, i: usize, prompts: &Tensor) -> Tensor {
        if self.directions.dim() == 2 {
            let v = self.directions.get(i as i64);
            v.unsqueeze(0).expand([prompts.size()[0], v.size()[0]], false)
        } else {
            self.directions.select(1, i as i64).index_select(0, prompts)
        }
    }
}

/// A prefix lent to one sweep at a time.
pub type SharedPrefix = Rc<RefCell<Prefix>>;

/// Prefixes kept between sweeps of one model over the same prompts: section 6 runs four sweeps per emotion
/// on two prompt sets, and every emotion's enhancement sweeps share the neutral prompts, so most prefixes
/// would otherwise be computed again. Kept up to a byte budget; a prefix that does not fit is used once and
/// dropped, never one already kept evicted (sweeps visit their prompts in cycles, where evicting the oldest
/// would keep nothing that is asked for again).
pub struct PrefixCache {
    max_bytes: usize,
    kept: RefCell<HashMap<Vec<Vec<u32>>, SharedPrefix>>,
    hits: Cell<usize>,
    misses: Cell<usize>,
}

impl PrefixCache {
    /// The budget `emo paper`, `run_sweep` and `sublayer_importance` use: the 21 distinct prefixes of the
    /// main job's sweeps (about 20 MB each on SmolLM2 in f32, 16 MB on the 1.5B model in bf16) fit it.
    pub const DEFAULT_BYTES: usize = 512 << 20;

    /// An empty cache keeping at most `max_bytes` of prefixes (0: keep none).
    pub fn new(max_bytes: usize) -> Self {
        PrefixCache { max_bytes, kept: RefCell::new(HashMap::new()), hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// The prefix of `prompts` on `t`: kept from an earlier call, or computed (and kept if it fits).
    pub fn get(&self, t: &Transformer, prompts: &[Vec<u32>], pad_id: u32) -> Result<SharedPrefix> {
        if let Some(p) = self.kept.borrow().get(prompts) {
            self.hits.set(self.hits.get() + 1);
            return Ok(Rc::clone(p));
        }
        self.misses.set(self.misses.get() + 1);
        let prefix = Rc::new(RefCell::new(t.prefill_prefix(prompts, pad_id)?));
        if self.bytes() + prefix.borrow().bytes() <= self.max_bytes {
            self.kept.borrow_mut().insert(prompts.to_vec(), Rc::clone(&prefix));
        }
        Ok(prefix)
    }

    /// (prefixes reused, prefixes computed) so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.hits.get(), self.misses.get())
    }

    /// Bytes of the prefixes kept, as they are now: a prefix's key buffers grow when a branch chunk wider
    /// than their spare slots first runs on it. (A prefix in use at this moment counts 0: sweeps take one at
    /// a time.)
    pub fn bytes(&self) -> usize {
        self.kept.borrow().values().map(|p| p.try_borrow().map_or(0, |p| p.bytes())).sum()
    }
}

/// One sweep: every prompt under every intervention.
pub struct Sweep<'a> {
    /// Token prompts (e.g. rendered chat prompts).
    pub prompts: &'a [Vec<u32>],
    /// Interventions; include `Intervention::none()` for the baseline.
    pub interventions: &'a [Intervention],
    /// Where the interventions act: [`Positions::LastPrompt`] branches over a shared prefix.
    pub positions: Positions,
    /// What is read.
    pub metric: &'a Metric,
    /// Rows per forward pass.
    pub max_rows: usize,
    /// Prompts sharing one prefix pass (branching only).
    pub prompts_per_prefix: usize,
    /// Draw a progress bar (rate, ETA) on stderr.
    pub progress: bool,
    /// Advance this bar (one bar over several sweeps) instead of drawing one of its own; it is left
    /// unfinished for the caller.
    pub bar: Option<ProgressBar>,
    /// Run every row as a full forward even where branching is exact: to measure what branching saves and
    /// to check that it changes nothing. Slower by the prompt length, same table.
    pub full_forwards: bool,
    /// Prefixes shared with other sweeps of the same model (none: each computed for this sweep alone).
    pub prefixes: Option<&'a PrefixCache>,
}

impl<'a> Sweep<'a> {
    /// A sweep with 64 rows per forward, 8 prompts per prefix, no progress bar, branching where exact.
    pub fn new(prompts: &'a [Vec<u32>], interventions: &'a [Intervention], positions: Positions, metric: &'a Metric) -> Self {
        Sweep {
            prompts,
            interventions,
            positions,
            metric,
            max_rows: 64,
            prompts_per_prefix: 8,
            progress: false,
            bar: None,
            full_forwards: false,
            prefixes: None,
        }
    }

    /// Whether this sweep runs through prefix branching (exact when every intervention acts at the last
    /// prompt token only), unless [`Sweep::full_forwards`] asks otherwise.
    pub fn branches(&self) -> bool {
        self.positions == Positions::LastPrompt && !self.full_forwards
    }

    /// Runs it: the metric for every (prompt, intervention), [prompts, interventions] f64.
    pub fn run(&self, model: &Model) -> Result<Tensor> {
        self.run_prompts(model, 0..self.prompts.len())
    }

    /// Runs it for the prompts `range` only (a batch of a resumable sweep): [range.len(), interventions].
    pub fn run_prompts(&self, model: &Model, range: Range<usize>) -> Result<Tensor> {
        if self.max_rows == 0 || self.prompts_per_prefix == 0 {
            return Err(ModelError::InvalidArgument("a sweep needs at least one row per forward and one prompt per prefix".into()));
        }
        if self.metric.directions.dim() == 3 && self.metric.directions.size()[0] != self.prompts.len() as i64 {
            return Err(ModelError::InvalidArgument(format!(
                "metric directions are given for {} prompts, the sweep has {}",
                self.metric.directions.size()[0],
                self.prompts.len()
            )));
        }
        if range.start > range.end || range.end > self.prompts.len() {
            return Err(ModelError::InvalidArgument(format!("prompts {range:?} of a sweep over {}", self.prompts.len())));
        }
        let (p, n) = (range.len(), self.interventions.len());
        let own_bar = self.bar.is_none();
        let bar = self.bar.clone().unwrap_or_else(|| progress_bar(self.progress, "sweep", (p * n) as u64, "rows"));
        let mut table = vec![0f64; p * n];
        if self.branches() {
            self.run_branched(model, range, &mut table, &bar)?;
        } else {
            self.run_full(model, range, &mut table, &bar)?;
        }
        if own_bar {
            bar.finish_and_clear();
        }
        Ok(Tensor::from_slice(&table).view([p as i64, n as i64]))
    }

    /// `table` is [range.len(), interventions]; prompt indices into the metric stay global.
    fn run_branched(&self, model: &Model, range: Range<usize>, table: &mut [f64], bar: &ProgressBar) -> Result<()> {
        let t = &model.transformer;
        let n_layers = t.config().n_layers;
        let n = self.interventions.len();
        // Interventions sorted by their first layer, so that a chunk of rows starts as late as it can.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.interventions[i].first_layer().unwrap_or(n_layers));
        let start = range.start;
        for (g, group) in self.prompts[range].chunks(self.prompts_per_prefix).enumerate() {
            let first_prompt = start + g * self.prompts_per_prefix;
            let prefix = match self.prefixes {
                Some(cache) => cache.get(t, group, model.pad_token_id())?,
                None => Rc::new(RefCell::new(t.prefill_prefix(group, model.pad_token_id())?)),
            };
            let mut prefix = prefix.borrow_mut();
            // Rows intervention-major: (intervention, prompt in group).
            let rows: Vec<(usize, usize)> = order.iter().flat_map(|&i| (0..group.len()).map(move |q| (i, q))).collect();
            for chunk in rows.chunks(self.max_rows) {
                let from = chunk.iter().filter_map(|&(i, _)| self.interventions[i].first_layer()).min().unwrap_or(n_layers);
                let ivs: Vec<Intervention> = chunk.iter().map(|&(i, _)| self.interventions[i].clone()).collect();
                let which: Vec<usize> = chunk.iter().map(|&(_, q)| q).collect();
                let read: Vec<usize> = (0..self.metric.points.len()).filter(|&k| reads_after(self.metric.points[k], from)).collect();
                let mut edits = Interventions::new(ivs, Positions::LastPrompt);
                let mut cap = Capture::new(read.iter().map(|&k| self.metric.points[k]), Positions::LastPrompt);
                let _ = t.forward_branches(&mut prefix, &which, &mut HookSet::new().with(&mut edits).with(&mut cap), LogitsFor::Skip)?;
                let global: Vec<i64> = which.iter().map(|&q| (first_prompt + q) as i64).collect();
                let scores = self.score(chunk.len(), &global, |k| {
                    if read.contains(&k) {
                        cap.per_row(self.metric.points[k], chunk.len())
                    } else {
                        let clean = prefix.clean(self.metric.points[k]).expect("metric points are kept clean");
                        // The index on the activation's device: a GPU (or a later device of a placed model) holds it.
                        let rows = Tensor::from_slice(&which.iter().map(|&q| q as i64).collect::<Vec<_>>()).to_device(clean.device());
                        Ok(clean.index_select(0, &rows))
                    }
                })?;
                for (r, &(i, q)) in chunk.iter().enumerate() {
                    table[(first_prompt - start + q) * n + i] = scores[r];
                }
                bar.inc(chunk.len() as u64);
            }
        }
        Ok(())
    }

    fn run_full(&self, model: &Model, range: Range<usize>, table: &mut [f64], bar: &ProgressBar) -> Result<()> {
        let t = &model.transformer;
        let n = self.interventions.len();
        let start = range.start;
        let rows: Vec<(usize, usize)> = range.flat_map(|q| (0..n).map(move |i| (i, q))).collect();
        for chunk in rows.chunks(self.max_rows) {
            let ivs: Vec<Intervention> = chunk.iter().map(|&(i, _)| self.interventions[i].clone()).collect();
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&(_, q)| self.prompts[q].clone()).collect();
            let mut edits = Interventions::new(ivs, self.positions.clone());
            let mut cap = Capture::new(self.metric.points.iter().copied(), Positions::LastPrompt);
            let _ = t.forward_rows(&batch, model.pad_token_id(), &mut HookSet::new().with(&mut edits).with(&mut cap), LogitsFor::Skip)?;
            let global: Vec<i64> = chunk.iter().map(|&(_, q)| q as i64).collect();
            let scores = self.score(chunk.len(), &global, |k| cap.per_row(self.metric.points[k], chunk.len()))?;
            for (r, &(i, q)) in chunk.iter().enumerate() {
                table[(q - start) * n + i] = scores[r];
            }
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    }

    /// The metric of `rows` rows whose prompts are `prompts`, given each point's last-token activations.
    fn score(&self, rows: usize, prompts: &[i64], mut act: impl FnMut(usize) -> Result<Tensor>) -> Result<Vec<f64>> {
        let prompts = Tensor::from_slice(prompts);
        let mut total = Tensor::zeros([rows as i64], (Kind::Double, tch::Device::Cpu));
        for k in 0..self.metric.points.len() {
            let a = act(k)?.to_device(tch::Device::Cpu).to_kind(Kind::Float);
            let d = self.metric.directions_for(k, &prompts);
            total += (a * d).sum_dim_intlist(-1, false, Kind::Double);
        }
        Ok(Vec::<f64>::try_from(total)?)
    }
}

/// Whether a metric point can differ from the clean pass when the first edited layer is `from`.
fn reads_after(point: HookPoint, from: usize) -> bool {
    point.layer().is_none_or(|l| l >= from)
}
