//! [`HookSet`]: the hooks active during one call, routed once per call to the points they want.
use std::collections::BTreeMap;

use tch::Tensor;

use super::{FnHook, Hook, HookContext, HookPoint};
use crate::{ModelError, Result};

enum Slot<'a> {
    Borrowed(&'a mut dyn Hook),
    Owned(Box<dyn Hook + 'a>),
}

impl Slot<'_> {
    fn hook(&mut self) -> &mut dyn Hook {
        match self {
            Slot::Borrowed(h) => &mut **h,
            Slot::Owned(h) => h.as_mut(),
        }
    }
    fn hook_ref(&self) -> &dyn Hook {
        match self {
            Slot::Borrowed(h) => &**h,
            Slot::Owned(h) => h.as_ref(),
        }
    }
}

/// The hooks active during one call. Borrowed hooks stay owned by the caller, who reads their results after
/// the call; the set itself lives no longer than the call it is passed to.
#[derive(Default)]
pub struct HookSet<'a> {
    slots: Vec<Slot<'a>>,
    // Point -> indices of the hooks that want it; rebuilt lazily so `wants` is asked once per point.
    routes: BTreeMap<HookPoint, Vec<usize>>,
    routed: bool,
}

impl<'a> HookSet<'a> {
    /// An empty set: the forward pass runs with no hook overhead.
    pub fn new() -> Self {
        HookSet::default()
    }

    /// Adds a hook the caller keeps (e.g. a [`Capture`] to read afterwards).
    pub fn with(mut self, hook: &'a mut dyn Hook) -> Self {
        self.push(hook);
        self
    }

    /// Adds a hook the caller keeps.
    pub fn push(&mut self, hook: &'a mut dyn Hook) {
        self.slots.push(Slot::Borrowed(hook));
        self.routed = false;
    }

    /// Adds every hook of `hooks`, which the caller keeps (e.g. the per-row `Interventions` of a batch).
    pub fn push_all<H: Hook + 'a>(&mut self, hooks: &'a mut [H]) {
        for h in hooks {
            self.push(h);
        }
    }

    /// Adds a closure run at `point`: it sees the activation and the chunk's context and returns
    /// `Ok(Some(t))` to replace the activation, `Ok(None)` to keep it (TransformerLens' `fwd_hooks`).
    ///
    /// ```no_run
    /// use emo_model::{HookPoint, HookSet, LoadOptions, Model};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let mut norms = Vec::new();
    /// let hooks = &mut HookSet::new().on(HookPoint::ResidPost(5), |act, _ctx| {
    ///     norms.push(act.norm().double_value(&[]));
    ///     Ok(None)
    /// });
    /// model.run_with_hooks("The meeting moved to Friday.", hooks)?;
    /// # Ok::<(), emo_model::ModelError>(())
    /// ```
    pub fn on<F>(mut self, point: HookPoint, f: F) -> Self
    where
        F: FnMut(&Tensor, &HookContext) -> Result<Option<Tensor>> + 'a,
    {
        self.push_owned(FnHook::new(point, f));
        self
    }

    /// Adds a hook the set owns (e.g. an [`FnHook`] closure).
    pub fn push_owned(&mut self, hook: impl Hook + 'a) {
        self.slots.push(Slot::Owned(Box::new(hook)));
        self.routed = false;
    }

    /// Whether no hook is registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Prepares the routing table for an `n_layers`-deep model. Called by the model at the start of a call.
    pub fn route(&mut self, n_layers: usize) {
        if self.routed {
            return;
        }
        self.routes.clear();
        if !self.slots.is_empty() {
            for point in HookPoint::all(n_layers) {
                let ids: Vec<usize> = self.slots.iter().enumerate().filter(|(_, s)| s.hook_ref().wants(point)).map(|(i, _)| i).collect();
                if !ids.is_empty() {
                    self.routes.insert(point, ids);
                }
            }
        }
        self.routed = true;
    }

    /// Whether some hook wants `point` (after [`HookSet::route`]).
    pub fn is_active(&self, point: HookPoint) -> bool {
        self.routes.contains_key(&point)
    }

    /// Runs the hooks that want `point` in registration order, each seeing the previous one's output, and
    /// returns the final activation. Replacements must keep the shape and device (a different dtype is
    /// converted).
    pub fn apply(&mut self, point: HookPoint, act: Tensor, ctx: &HookContext) -> Result<Tensor> {
        let Some(ids) = self.routes.get(&point) else {
            return Ok(act);
        };
        chain(&mut self.slots, ids.iter().copied(), point, act, ctx)
    }
}

/// A set is itself a hook, so a call can add its own hooks after a caller's set (as `run_with_cache` adds
/// the cache after the caller's edits).
impl Hook for HookSet<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.slots.iter().any(|s| s.hook_ref().wants(point))
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let ids: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].hook_ref().wants(point)).collect();
        chain(&mut self.slots, ids.into_iter(), point, act.shallow_clone(), ctx).map(Some)
    }
}

/// Runs the hooks `ids` of `slots` at `point` in order, checking each replacement.
fn chain(slots: &mut [Slot], ids: impl Iterator<Item = usize>, point: HookPoint, act: Tensor, ctx: &HookContext) -> Result<Tensor> {
    let mut act = act;
    for i in ids {
        if let Some(new) = slots[i].hook().call(point, &act, ctx)? {
            if new.size() != act.size() {
                return Err(ModelError::Hook {
                    point: point.to_string(),
                    msg: format!("hook returned shape {:?}, activation has {:?}", new.size(), act.size()),
                });
            }
            if new.device() != act.device() {
                return Err(ModelError::Hook {
                    point: point.to_string(),
                    msg: format!("hook returned a tensor on {:?}, the activation is on {:?}", new.device(), act.device()),
                });
            }
            act = if new.kind() != act.kind() { new.to_kind(act.kind()) } else { new };
        }
    }
    Ok(act)
}
