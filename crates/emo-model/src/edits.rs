//! Edits that act the same on every row: [`AddVector`] (steering, enhancement) and [`Ablate`] (zeroing
//! units). [`crate::Interventions`] gives each row its own.
use std::collections::BTreeMap;

use tch::Tensor;

use crate::hooks::{Hook, HookContext, HookPoint, Positions};
use crate::{ModelError, Result};

/// How an [`AddVector`] edit is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// `h += alpha * v`.
    Fixed(f64),
    /// `h += alpha * RMS(h) * v`, RMS per token over the last dimension (+1e-12 inside the root), as the
    /// paper's steering does.
    Rms(f64),
}

/// Adds a vector to activations: steering (paper section 5) or enhancement (section 6).
pub struct AddVector {
    vectors: BTreeMap<HookPoint, Tensor>,
    scale: Scale,
    positions: Positions,
}

impl AddVector {
    /// Adds `vectors[point]` (shaped like the point's trailing dimensions, e.g. [d_model]) at each point.
    pub fn new(vectors: impl IntoIterator<Item = (HookPoint, Tensor)>, scale: Scale, positions: Positions) -> Self {
        AddVector { vectors: vectors.into_iter().collect(), scale, positions }
    }
}

impl Hook for AddVector {
    fn wants(&self, point: HookPoint) -> bool {
        self.vectors.contains_key(&point)
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let v = self.vectors.get_mut(&point).expect("routed to points it wants");
        let trailing = &act.size()[2..];
        if v.size() != trailing {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("vector has shape {:?}, the activation's trailing shape is {trailing:?}", v.size()),
            });
        }
        // Moved (and cast) once, on the first call that needs it, not at every step.
        if v.device() != act.device() || v.kind() != act.kind() {
            *v = v.to_device(act.device()).to_kind(act.kind());
        }
        let v = &*v;
        // Work on the selected tokens only: a steering edit touches one token per row per step.
        let Some(sel) = ctx.select_some(&self.positions) else {
            return Ok(None);
        };
        let index = [Some(sel.rows.shallow_clone()), Some(sel.cols.shallow_clone())];
        let h = act.index(&index);
        let delta = match self.scale {
            Scale::Fixed(alpha) => v * alpha,
            Scale::Rms(alpha) => {
                let rms = (h.square().mean_dim(-1, true, h.kind()) + 1e-12).sqrt();
                rms * v * alpha
            }
        };
        Ok(Some(act.index_put(&index, &(h + delta), false)))
    }
}

/// Sets chosen units of an activation to zero (or to fixed values): neuron ablation on `mlp.hook_post`
/// (last dimension), head ablation on `attn.hook_z` (the head dimension).
pub struct Ablate {
    units: BTreeMap<HookPoint, Vec<i64>>,
    positions: Positions,
}

impl Ablate {
    /// Zeroes `units[point]` at each point: indices into the last dimension for [batch, pos, d] points, into
    /// the head dimension for `attn.hook_z`.
    pub fn new(units: impl IntoIterator<Item = (HookPoint, Vec<i64>)>, positions: Positions) -> Self {
        Ablate { units: units.into_iter().collect(), positions }
    }
}

impl Hook for Ablate {
    fn wants(&self, point: HookPoint) -> bool {
        self.units.contains_key(&point)
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let ids = &self.units[&point];
        if ids.is_empty() {
            return Ok(None);
        }
        let dim = 2; // the first dimension after [batch, pos]: units, or heads for hook_z
        let n = act.size()[dim];
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= n) {
            return Err(ModelError::Hook { point: point.to_string(), msg: format!("unit {bad} out of range 0..{n}") });
        }
        let mut keep = Tensor::ones([n], (act.kind(), act.device()));
        let _ = keep.index_fill_(0, &Tensor::from_slice(ids).to_device(act.device()), 0.0);
        let mask = ctx.mask(&self.positions).to_kind(act.kind()).unsqueeze(-1); // [b, t, 1]
                                                                                // factor = 1 where not selected; `keep` where selected.
        let mut factor = mask * (keep - 1.0) + 1.0; // [b, t, n]
        while factor.dim() < act.dim() {
            factor = factor.unsqueeze(-1);
        }
        Ok(Some(act * factor))
    }
}
