//! Hook points and hooks: read or edit any activation of the forward pass.
//!
//! Names follow TransformerLens exactly (`blocks.3.hook_resid_mid`, `blocks.3.attn.hook_z`, ...), so
//! results and code translate one to one. Hooks are never attached to a model: a [`HookSet`] borrows them for
//! one call (`run_with_hooks`, `generate`), so an error or a panic cannot leave one behind, and a call
//! without hooks pays nothing.
//!
//! Every hook sees a [`HookContext`] with the absolute position of each token of the current chunk (prompt
//! tokens count from 0, generated tokens continue after them, left padding is -1). Position selectors
//! ([`Positions`]) are defined on those absolute positions, so "last prompt token" or "every generated token"
//! select the same tokens with or without the KV cache and at any amount of batch padding.
//!
//! Each token also belongs to a *logical row*: its batch row in a plain forward, the intervention row it
//! evaluates in a branched one ([`crate::branch`]). Hooks that keep per-row state (captures, per-row
//! interventions) address rows through [`Selection::row_ids`], so they work unchanged in both.
//!
//! The rooms: [`points`] (the names), [`context`] (positions and what a hook sees), [`set`] (routing),
//! and the built-in hooks: [`capture`] (selected rows, kept off the heap), [`cache`] (whole activations,
//! TransformerLens' `ActivationCache`, gradients included), [`readout`] (linear probes read at the token being
//! decoded) and [`interventions`] (the one edit type: zeroing,
//! scaling, adding vectors, for every row alike or per row). Any closure is a hook too ([`HookSet::on`]).
use tch::Tensor;

pub mod cache;
pub mod capture;
pub mod context;
pub mod interventions;
pub mod points;
pub mod readout;
pub mod set;

pub use cache::{ActivationCache, CacheHook};
pub use capture::{Capture, Captured};
pub use context::{HookContext, Positions, Selection};
pub use interventions::{Edit, Intervention, Interventions};
pub use points::HookPoint;
pub use readout::{ForwardScores, Readout, Readouts};
pub use set::HookSet;

use crate::Result;

/// Something that reads or edits activations. Return `Ok(Some(t))` to replace the activation with `t` (same
/// shape), `Ok(None)` to leave it as it is.
pub trait Hook {
    /// Whether this hook wants to see `point`; asked once per call, not per step.
    fn wants(&self, point: HookPoint) -> bool;
    /// Called with the activation at `point`.
    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>>;
}

/// A closure hook at one point: `FnHook::new(point, |act, ctx| ...)`.
pub struct FnHook<F> {
    point: HookPoint,
    f: F,
}

impl<F> FnHook<F>
where
    F: FnMut(&Tensor, &HookContext) -> Result<Option<Tensor>>,
{
    /// Wraps `f` to run at `point`.
    pub fn new(point: HookPoint, f: F) -> Self {
        FnHook { point, f }
    }
}

impl<F> Hook for FnHook<F>
where
    F: FnMut(&Tensor, &HookContext) -> Result<Option<Tensor>>,
{
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn call(&mut self, _point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        (self.f)(act, ctx)
    }
}
