//! Hook points and hooks: read or edit any activation of the forward pass.
//!
//! Names follow TransformerLens exactly (`blocks.3.hook_resid_mid`, `blocks.3.attn.hook_z`, ...), so
//! results and code translate one to one. Hooks are never attached to a model: a [`HookSet`] borrows them for
//! one call (`forward`, `generate`), so an error or a panic cannot leave one behind, and a call without hooks
//! pays nothing.
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
//! The built-in hooks live beside this module: [`Capture`] (reads), [`AddVector`] and [`Ablate`] (one edit
//! for every row), [`Interventions`] (an edit of its own for each row).
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use tch::Tensor;

pub use crate::capture::{Capture, Captured};
pub use crate::edits::{Ablate, AddVector, Scale};
pub use crate::interventions::{Edit, Intervention, Interventions};
use crate::{ModelError, Result};

/// A place in the forward pass where an activation can be read or replaced, named as TransformerLens names it.
///
/// ```
/// use emo_model::HookPoint;
/// let p: HookPoint = "blocks.3.attn.hook_z".parse()?;
/// assert_eq!(p, HookPoint::AttnZ(3));
/// assert_eq!(HookPoint::ResidPost(12).to_string(), "blocks.12.hook_resid_post");
/// assert!("blocks.3.hook_resid_middle".parse::<HookPoint>().is_err());
/// # Ok::<(), emo_model::ModelError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings, [batch, pos, d_model].
    Embed,
    /// `blocks.{i}.hook_resid_pre`: residual entering block i, [batch, pos, d_model].
    ResidPre(usize),
    /// `blocks.{i}.attn.hook_z`: per-head attention output before `o_proj`, [batch, pos, head, d_head].
    AttnZ(usize),
    /// `blocks.{i}.hook_attn_out`: attention output after `o_proj`, [batch, pos, d_model].
    AttnOut(usize),
    /// `blocks.{i}.hook_resid_mid`: residual after the attention add (the paper's attention site).
    ResidMid(usize),
    /// `blocks.{i}.mlp.hook_post`: `act(gate) * up` before `down_proj`, [batch, pos, d_mlp].
    MlpPost(usize),
    /// `blocks.{i}.hook_mlp_out`: MLP output after `down_proj`, [batch, pos, d_model].
    MlpOut(usize),
    /// `blocks.{i}.hook_resid_post`: residual after the MLP add (the paper's MLP site).
    ResidPost(usize),
    /// `ln_final.hook_normalized`: the final RMSNorm's output, [batch, pos, d_model].
    LnFinal,
    /// `logits`: unembedding output, [batch, pos, vocab] (only the positions logits were computed for).
    Logits,
}

impl HookPoint {
    /// The block this point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        match *self {
            HookPoint::ResidPre(l)
            | HookPoint::AttnZ(l)
            | HookPoint::AttnOut(l)
            | HookPoint::ResidMid(l)
            | HookPoint::MlpPost(l)
            | HookPoint::MlpOut(l)
            | HookPoint::ResidPost(l) => Some(l),
            HookPoint::Embed | HookPoint::LnFinal | HookPoint::Logits => None,
        }
    }

    /// All hook points of an `n_layers`-deep model, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed];
        for l in 0..n_layers {
            v.extend([
                HookPoint::ResidPre(l),
                HookPoint::AttnZ(l),
                HookPoint::AttnOut(l),
                HookPoint::ResidMid(l),
                HookPoint::MlpPost(l),
                HookPoint::MlpOut(l),
                HookPoint::ResidPost(l),
            ]);
        }
        v.extend([HookPoint::LnFinal, HookPoint::Logits]);
        v
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => write!(f, "hook_embed"),
            HookPoint::ResidPre(l) => write!(f, "blocks.{l}.hook_resid_pre"),
            HookPoint::AttnZ(l) => write!(f, "blocks.{l}.attn.hook_z"),
            HookPoint::AttnOut(l) => write!(f, "blocks.{l}.hook_attn_out"),
            HookPoint::ResidMid(l) => write!(f, "blocks.{l}.hook_resid_mid"),
            HookPoint::MlpPost(l) => write!(f, "blocks.{l}.mlp.hook_post"),
            HookPoint::MlpOut(l) => write!(f, "blocks.{l}.hook_mlp_out"),
            HookPoint::ResidPost(l) => write!(f, "blocks.{l}.hook_resid_post"),
            HookPoint::LnFinal => write!(f, "ln_final.hook_normalized"),
            HookPoint::Logits => write!(f, "logits"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let unknown = || {
            ModelError::InvalidArgument(format!(
                "unknown hook point `{s}` (expected e.g. hook_embed, blocks.3.hook_resid_pre, blocks.3.attn.hook_z, \
                 blocks.3.hook_attn_out, blocks.3.hook_resid_mid, blocks.3.mlp.hook_post, blocks.3.hook_mlp_out, \
                 blocks.3.hook_resid_post, ln_final.hook_normalized, logits)"
            ))
        };
        match s {
            "hook_embed" => return Ok(HookPoint::Embed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            "logits" => return Ok(HookPoint::Logits),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let l: usize = layer.parse().map_err(|_| unknown())?;
        Ok(match name {
            "hook_resid_pre" => HookPoint::ResidPre(l),
            "attn.hook_z" => HookPoint::AttnZ(l),
            "hook_attn_out" => HookPoint::AttnOut(l),
            "hook_resid_mid" => HookPoint::ResidMid(l),
            "mlp.hook_post" => HookPoint::MlpPost(l),
            "hook_mlp_out" => HookPoint::MlpOut(l),
            "hook_resid_post" => HookPoint::ResidPost(l),
            _ => return Err(unknown()),
        })
    }
}

/// Which tokens a hook acts on, by absolute position within each sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Every real token (never padding).
    All,
    /// Every prompt token.
    Prompt,
    /// The last prompt token (the paper's reading site: after the assistant header).
    LastPrompt,
    /// Every generated token.
    Generated,
    /// The last prompt token and every generated token: what the authors' "last position of every forward
    /// call" amounts to with a KV cache, here defined so that it is the same without one.
    LastPromptAndGenerated,
    /// Absolute positions in `start..end`.
    Range(i64, i64),
}

impl fmt::Display for Positions {
    /// The names [`Positions::from_str`] reads: `all`, `prompt`, `last-prompt`, `generated`,
    /// `last-prompt-and-generated`, `START..END`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Positions::All => write!(f, "all"),
            Positions::Prompt => write!(f, "prompt"),
            Positions::LastPrompt => write!(f, "last-prompt"),
            Positions::Generated => write!(f, "generated"),
            Positions::LastPromptAndGenerated => write!(f, "last-prompt-and-generated"),
            Positions::Range(a, b) => write!(f, "{a}..{b}"),
        }
    }
}

impl FromStr for Positions {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "all" => Positions::All,
            "prompt" => Positions::Prompt,
            "last-prompt" => Positions::LastPrompt,
            "generated" => Positions::Generated,
            "last-prompt-and-generated" => Positions::LastPromptAndGenerated,
            _ => {
                let range = s.split_once("..").and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
                match range {
                    Some((a, b)) if a >= 0 && a < b => Positions::Range(a, b),
                    _ => {
                        return Err(ModelError::InvalidArgument(format!(
                            "unknown positions `{s}` (expected all, prompt, last-prompt, generated, \
                             last-prompt-and-generated, or START..END with 0 <= START < END)"
                        )))
                    }
                }
            }
        })
    }
}

/// What a hook knows about the chunk being computed.
pub struct HookContext<'a> {
    /// Absolute position of each token of the chunk, -1 for left padding: [batch, chunk] i64.
    pub positions: &'a Tensor,
    /// Prompt length (without padding) of each row: [batch, 1] i64, on the model's device.
    pub prompt_lens: &'a Tensor,
    /// 0 for the forward that includes the prompt, n for the n-th decoding step.
    pub step: usize,
    /// The logical row of each token, [batch, chunk] i64 (-1 for padding), where it is not the batch row
    /// (branched forwards).
    pub row_ids: Option<&'a Tensor>,
    // Selections are the same at every hook point of a chunk: compute each once, not once per point.
    selections: RefCell<Vec<(Positions, Rc<Selection>)>>,
}

/// The tokens of a chunk that a [`Positions`] selects.
pub struct Selection {
    /// [batch, chunk] bool.
    pub mask: Tensor,
    /// Row of each selected token, [n] i64.
    pub rows: Tensor,
    /// Column (index within the chunk) of each selected token, [n] i64.
    pub cols: Tensor,
    /// Absolute position of each selected token, [n] i64.
    pub positions: Tensor,
    /// Logical row of each selected token, [n] i64: the batch row in a plain forward, the intervention row
    /// in a branched one.
    pub row_ids: Tensor,
}

impl<'a> HookContext<'a> {
    /// A context for a chunk with these absolute positions and prompt lengths.
    pub fn new(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize) -> Self {
        HookContext { positions, prompt_lens, step, row_ids: None, selections: RefCell::new(Vec::new()) }
    }

    /// A context whose tokens belong to the logical rows `row_ids` ([batch, chunk] i64) instead of their
    /// batch rows.
    pub fn with_row_ids(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize, row_ids: &'a Tensor) -> Self {
        HookContext { row_ids: Some(row_ids), ..HookContext::new(positions, prompt_lens, step) }
    }

    /// The tokens `sel` selects in this chunk (computed once per chunk and selector).
    pub fn select(&self, sel: &Positions) -> Rc<Selection> {
        if let Some((_, s)) = self.selections.borrow().iter().find(|(p, _)| p == sel) {
            return Rc::clone(s);
        }
        let p = self.positions;
        let mask = match sel {
            Positions::All => p.ge(0),
            Positions::Prompt => p.ge(0).logical_and(&p.lt_tensor(self.prompt_lens)),
            Positions::LastPrompt => p.eq_tensor(&(self.prompt_lens - 1)),
            Positions::Generated => p.ge_tensor(self.prompt_lens),
            Positions::LastPromptAndGenerated => p.ge_tensor(&(self.prompt_lens - 1)),
            Positions::Range(a, b) => p.ge(*a).logical_and(&p.lt(*b)),
        };
        let idx = mask.nonzero(); // [n, 2]: (row, column)
        let rows = idx.select(1, 0);
        let cols = idx.select(1, 1);
        let positions = p.index(&[Some(&rows), Some(&cols)]);
        let row_ids = match self.row_ids {
            Some(ids) => ids.index(&[Some(&rows), Some(&cols)]),
            None => rows.shallow_clone(),
        };
        let s = Rc::new(Selection { mask, rows, cols, positions, row_ids });
        self.selections.borrow_mut().push((sel.clone(), Rc::clone(&s)));
        s
    }

    /// The tokens `sel` selects in this chunk, or `None` when it selects none (most decode steps for a
    /// last-prompt-token hook), so a hook can return early.
    pub fn select_some(&self, sel: &Positions) -> Option<Rc<Selection>> {
        let s = self.select(sel);
        (s.rows.size()[0] > 0).then_some(s)
    }

    /// A [batch, chunk] boolean mask of the tokens `sel` selects in this chunk.
    pub fn mask(&self, sel: &Positions) -> Tensor {
        self.select(sel).mask.shallow_clone()
    }
}

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
        let mut act = act;
        for &i in ids {
            if let Some(new) = self.slots[i].hook().call(point, &act, ctx)? {
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
}
