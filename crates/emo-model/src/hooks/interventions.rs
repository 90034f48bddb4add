//! Per-row interventions: one hook in which every logical row carries its own edits, so that a single batch
//! mixes emotions, unit sets, random seeds and "no intervention" (sections 6 and 7 sweep hundreds of such
//! settings, and steering batches need not hold one emotion).
//!
//! At each hook point an edit acts on the selected tokens of its row as
//! `h' = h * m + a + RMS(h) * b`, where `m` holds the unit factors (0 for ablated units), `a` the fixed
//! additions and `b` the RMS-scaled ones (RMS of the unedited `h`, per token, as the paper's steering).
//! Rows are logical rows ([`crate::hooks::Selection::row_ids`]): batch rows in a plain forward, intervention
//! rows in a branched one, so the same [`Interventions`] gives the same result either way.
//!
//! ```no_run
//! use emo_model::{Edit, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Model, LoadOptions, Positions};
//! # let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! # let prompt: Vec<u32> = vec![1, 2, 3];
//! // Row 0: nothing; row 1: neurons 3 and 7 of layer 5 zeroed; row 2: two heads of layer 8 zeroed.
//! let rows = vec![
//!     Intervention::none(),
//!     Intervention::none().with(HookPoint::MlpPost(5), Edit::Zero(vec![3, 7])),
//!     Intervention::none().with(HookPoint::AttnZ(8), Edit::Zero(vec![0, 4])),
//! ];
//! let mut edits = Interventions::new(rows, Positions::LastPrompt);
//! let prompts = vec![prompt.clone(), prompt.clone(), prompt];
//! let logits = model.transformer.forward_rows(&prompts, model.pad_token_id(), &mut HookSet::new().with(&mut edits), LogitsFor::Last)?;
//! # Ok::<(), emo_model::ModelError>(())
//! ```
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::{Hook, HookContext, HookPoint, Positions};
use crate::{ModelError, Result};

/// One edit at one hook point. Units index the first dimension after `[batch, pos]`: neurons of
/// `mlp.hook_post`, channels of a residual point, heads of `attn.hook_z`.
#[derive(Debug)]
pub enum Edit {
    /// Set these units to zero (ablation).
    Zero(Vec<i64>),
    /// Multiply these units by a factor.
    ScaleUnits(Vec<i64>, f64),
    /// Add a vector shaped like the point's trailing dimensions (or flat with as many elements; for
    /// `attn.hook_z`, `[n_heads * d_head]` in `o_proj`'s input order).
    Add(Tensor),
    /// Add `alpha * RMS(h) * v`, RMS per token over the point's trailing elements.
    AddRms(Tensor, f64),
}

impl Clone for Edit {
    fn clone(&self) -> Self {
        match self {
            Edit::Zero(u) => Edit::Zero(u.clone()),
            Edit::ScaleUnits(u, f) => Edit::ScaleUnits(u.clone(), *f),
            Edit::Add(v) => Edit::Add(v.shallow_clone()),
            Edit::AddRms(v, a) => Edit::AddRms(v.shallow_clone(), *a),
        }
    }
}

/// The edits of one row. Several edits at one point combine: unit factors multiply, vectors add.
#[derive(Clone, Debug, Default)]
pub struct Intervention {
    /// (point, edit) pairs.
    pub edits: Vec<(HookPoint, Edit)>,
}

impl Intervention {
    /// No edit: the row runs as it would without hooks.
    pub fn none() -> Self {
        Intervention::default()
    }

    /// Zeroes `units` at `point` (neurons of `mlp.hook_post`, heads of `attn.hook_z`, ...).
    pub fn zero(point: HookPoint, units: impl IntoIterator<Item = i64>) -> Self {
        Intervention::none().with(point, Edit::Zero(units.into_iter().collect()))
    }

    /// Adds `vector` at `point` (`h += v`), shaped like the point's trailing dimensions.
    pub fn add(point: HookPoint, vector: Tensor) -> Self {
        Intervention::none().with(point, Edit::Add(vector))
    }

    /// Adds `alpha * RMS(h) * vector` at `point`: the paper's steering edit.
    pub fn add_rms(point: HookPoint, vector: Tensor, alpha: f64) -> Self {
        Intervention::none().with(point, Edit::AddRms(vector, alpha))
    }

    /// Adds an edit at `point`.
    pub fn with(mut self, point: HookPoint, edit: Edit) -> Self {
        self.edits.push((point, edit));
        self
    }

    /// The earliest layer an edit touches (`Some(0)` for `hook_embed`, `None` when there is no edit or only
    /// `ln_final`/`logits` edits, which come after every layer).
    pub fn first_layer(&self) -> Option<usize> {
        self.edits
            .iter()
            .filter_map(|(p, _)| match p {
                HookPoint::Embed => Some(0),
                p => p.layer(),
            })
            .min()
    }
}

/// The dense form of every row's edits at one point, on the activation's device and dtype.
struct Dense {
    device: Device,
    kind: Kind,
    factor: Option<Tensor>,
    add: Option<Tensor>,
    rms: Option<Tensor>,
}

/// A hook applying each logical row's own [`Intervention`] (or one for every row) at the tokens `positions`
/// selects.
pub struct Interventions {
    rows: Vec<Intervention>,
    // One intervention for every row, however many the batch has.
    shared: bool,
    positions: Positions,
    points: Vec<HookPoint>,
    dense: BTreeMap<HookPoint, Dense>,
}

impl Interventions {
    /// Row `r` of the batch (or logical row `r` of a branched forward) gets `rows[r]`.
    pub fn new(rows: Vec<Intervention>, positions: Positions) -> Self {
        let mut points: Vec<HookPoint> = rows.iter().flat_map(|r| r.edits.iter().map(|(p, _)| *p)).collect();
        points.sort();
        points.dedup();
        Interventions { rows, shared: false, positions, points, dense: BTreeMap::new() }
    }

    /// Every row of any batch gets `intervention`: ablating a neuron or steering every prompt alike.
    ///
    /// ```no_run
    /// use emo_model::{Edit, HookPoint, HookSet, Intervention, Interventions, LoadOptions, Model, Positions};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let mut ablate = Interventions::all_rows(Intervention::zero(HookPoint::MlpPost(5), [123]), Positions::All);
    /// let logits = model.run_with_hooks("The meeting moved to Friday.", &mut HookSet::new().with(&mut ablate))?;
    /// # Ok::<(), emo_model::ModelError>(())
    /// ```
    pub fn all_rows(intervention: Intervention, positions: Positions) -> Self {
        Interventions { shared: true, ..Interventions::new(vec![intervention], positions) }
    }

    /// Number of rows (1 for [`Interventions::all_rows`], which serves any number).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows.
    pub fn rows(&self) -> &[Intervention] {
        &self.rows
    }

    /// The tokens edited.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Every point some row edits, in forward order.
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// Whether every edit acts only at the last prompt token, so that a branched forward over a shared prefix
    /// is exact for it ([`crate::branch`]).
    pub fn branchable(&self) -> bool {
        self.positions == Positions::LastPrompt
    }

    fn dense(&mut self, point: HookPoint, trailing: &[i64], device: Device, kind: Kind) -> Result<&Dense> {
        let stale = self.dense.get(&point).is_none_or(|d| d.device != device || d.kind != kind);
        if stale {
            let built = build_dense(&self.rows, point, trailing, device, kind)?;
            self.dense.insert(point, built);
        }
        Ok(&self.dense[&point])
    }
}

fn build_dense(rows: &[Intervention], point: HookPoint, trailing: &[i64], device: Device, kind: Kind) -> Result<Dense> {
    let err = |msg: String| ModelError::Hook { point: point.to_string(), msg };
    let n_units = trailing.first().copied().unwrap_or(1);
    let numel: i64 = trailing.iter().product();
    let r = rows.len() as i64;
    // Built on the CPU in f32, moved once.
    let (mut factor, mut add, mut rms): (Option<Tensor>, Option<Tensor>, Option<Tensor>) = (None, None, None);
    let opts = (Kind::Float, Device::Cpu);
    let flat = |v: &Tensor, row: usize| -> Result<Tensor> {
        if v.numel() as i64 != numel || (v.dim() != 1 && v.size() != trailing) {
            return Err(err(format!("row {row}: vector has shape {:?}, the activation's trailing shape is {trailing:?}", v.size())));
        }
        Ok(v.to_device(Device::Cpu).to_kind(Kind::Float).reshape([numel]))
    };
    for (i, row) in rows.iter().enumerate() {
        for (p, edit) in &row.edits {
            if *p != point {
                continue;
            }
            match edit {
                Edit::Zero(units) | Edit::ScaleUnits(units, _) => {
                    let value = if let Edit::ScaleUnits(_, f) = edit { *f } else { 0.0 };
                    if let Some(bad) = units.iter().find(|&&u| u < 0 || u >= n_units) {
                        return Err(err(format!("row {i}: unit {bad} out of range 0..{n_units}")));
                    }
                    let f = factor.get_or_insert_with(|| Tensor::ones([r, n_units, numel / n_units], opts));
                    if !units.is_empty() {
                        let mut row_f = f.get(i as i64);
                        let ids = Tensor::from_slice(units);
                        let scaled = row_f.index_select(0, &ids) * value;
                        let _ = row_f.index_copy_(0, &ids, &scaled);
                    }
                }
                Edit::Add(v) => {
                    let a = add.get_or_insert_with(|| Tensor::zeros([r, numel], opts));
                    let _ = a.get(i as i64).g_add_(&flat(v, i)?);
                }
                Edit::AddRms(v, alpha) => {
                    let b = rms.get_or_insert_with(|| Tensor::zeros([r, numel], opts));
                    let _ = b.get(i as i64).g_add_(&(flat(v, i)? * *alpha));
                }
            }
        }
    }
    let shape: Vec<i64> = std::iter::once(r).chain(trailing.iter().copied()).collect();
    let place = |t: Option<Tensor>| t.map(|t| t.reshape(shape.as_slice()).to_device(device).to_kind(kind));
    Ok(Dense { device, kind, factor: place(factor), add: place(add), rms: place(rms) })
}

impl Hook for Interventions {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let Some(sel) = ctx.select_some(&self.positions) else {
            return Ok(None);
        };
        let n_rows = self.rows.len() as i64;
        let shared_ids;
        let ids = if self.shared {
            shared_ids = sel.row_ids.zeros_like();
            &shared_ids
        } else {
            &sel.row_ids
        };
        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if lo < 0 || hi >= n_rows {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("the batch has logical rows {lo}..={hi}, but {n_rows} interventions were given"),
            });
        }
        // Positions index queries: [batch, head, query, key] is edited as [batch, query, head, key].
        let queries_first = point.pos_dim() == 2;
        let act = if queries_first { act.transpose(1, 2) } else { act.shallow_clone() };
        let trailing = act.size()[2..].to_vec();
        let dense = self.dense(point, &trailing, act.device(), act.kind())?;
        let index = [Some(sel.rows.shallow_clone()), Some(sel.cols.shallow_clone())];
        let h = act.index(&index); // [n, trailing...]
        let mut new = match &dense.factor {
            Some(f) => &h * f.index_select(0, ids),
            None => h.shallow_clone(),
        };
        if let Some(a) = &dense.add {
            new += a.index_select(0, ids);
        }
        if let Some(b) = &dense.rms {
            let dims: Vec<i64> = (1..h.dim() as i64).collect();
            let rms = (h.square().mean_dim(dims.as_slice(), true, h.kind()) + 1e-12).sqrt();
            new += rms * b.index_select(0, ids);
        }
        let edited = act.index_put(&index, &new, false);
        Ok(Some(if queries_first { edited.transpose(1, 2) } else { edited }))
    }
}
