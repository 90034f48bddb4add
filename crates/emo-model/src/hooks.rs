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
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use tch::{Kind, Tensor};

use crate::{ModelError, Result};

/// A place in the forward pass where an activation can be read or replaced.
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

/// What a hook knows about the chunk being computed.
pub struct HookContext<'a> {
    /// Absolute position of each token of the chunk, -1 for left padding: [batch, chunk] i64.
    pub positions: &'a Tensor,
    /// Prompt length (without padding) of each row: [batch, 1] i64, on the model's device.
    pub prompt_lens: &'a Tensor,
    /// 0 for the forward that includes the prompt, n for the n-th decoding step.
    pub step: usize,
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
}

impl<'a> HookContext<'a> {
    /// A context for a chunk with these absolute positions and prompt lengths.
    pub fn new(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize) -> Self {
        HookContext { positions, prompt_lens, step, selections: RefCell::new(Vec::new()) }
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
        let s = Rc::new(Selection { mask, rows, cols, positions });
        self.selections.borrow_mut().push((sel.clone(), Rc::clone(&s)));
        s
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
                let ids: Vec<usize> =
                    self.slots.iter().enumerate().filter(|(_, s)| s.hook_ref().wants(point)).map(|(i, _)| i).collect();
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
    /// returns the final activation. Replacements must keep the shape and dtype.
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
                act = if new.kind() != act.kind() { new.to_kind(act.kind()) } else { new };
            }
        }
        Ok(act)
    }
}

/// One capture: the rows and absolute positions selected, and the activations there.
#[derive(Debug)]
pub struct Captured {
    /// Batch row of each captured vector, [n] i64.
    pub rows: Tensor,
    /// Absolute position of each captured vector, [n] i64.
    pub positions: Tensor,
    /// The activations, [n, ...] (the point's trailing dimensions), on the CPU in f32.
    pub values: Tensor,
}

/// Reads activations at chosen points and positions, keeping only those rows (never whole
/// [batch, pos, d] tensors unless asked with [`Positions::All`]).
pub struct Capture {
    points: Vec<HookPoint>,
    positions: Positions,
    chunks: BTreeMap<HookPoint, Vec<Captured>>,
}

impl Capture {
    /// Captures `points` at the tokens `positions` selects.
    pub fn new(points: impl IntoIterator<Item = HookPoint>, positions: Positions) -> Self {
        let mut points: Vec<HookPoint> = points.into_iter().collect();
        points.sort();
        points.dedup();
        Capture { points, positions, chunks: BTreeMap::new() }
    }

    /// Everything captured at `point`, concatenated over calls and steps in order.
    pub fn get(&self, point: HookPoint) -> Option<Captured> {
        let chunks = self.chunks.get(&point)?;
        let cat = |f: &dyn Fn(&Captured) -> &Tensor| Tensor::cat(&chunks.iter().map(f).collect::<Vec<_>>(), 0);
        Some(Captured { rows: cat(&|c| &c.rows), positions: cat(&|c| &c.positions), values: cat(&|c| &c.values) })
    }

    /// The activation at `point` for each of `batch` rows when exactly one token per row was captured
    /// (e.g. [`Positions::LastPrompt`]): [batch, ...] ordered by row.
    pub fn per_row(&self, point: HookPoint, batch: usize) -> Result<Tensor> {
        let c = self.get(point).ok_or_else(|| ModelError::Hook {
            point: point.to_string(),
            msg: "nothing was captured here".into(),
        })?;
        let rows: Vec<i64> = Vec::<i64>::try_from(&c.rows).map_err(ModelError::Torch)?;
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        if sorted != (0..batch as i64).collect::<Vec<_>>() {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("expected one captured token for each of {batch} rows, got rows {rows:?}"),
            });
        }
        let order = c.rows.argsort(0, false);
        Ok(c.values.index_select(0, &order))
    }

    /// Forgets what was captured, keeping the configuration.
    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}

impl Hook for Capture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let sel = ctx.select(&self.positions);
        if sel.rows.size()[0] == 0 {
            return Ok(None);
        }
        let values = act.index(&[Some(&sel.rows), Some(&sel.cols)]);
        let cpu = tch::Device::Cpu;
        self.chunks.entry(point).or_default().push(Captured {
            rows: sel.rows.to_device(cpu),
            positions: sel.positions.to_device(cpu),
            values: values.to_device(cpu).to_kind(Kind::Float),
        });
        Ok(None)
    }
}

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
        let v = &self.vectors[&point];
        let trailing = &act.size()[2..];
        if v.size() != trailing {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("vector has shape {:?}, the activation's trailing shape is {trailing:?}", v.size()),
            });
        }
        let v = v.to_device(act.device()).to_kind(act.kind());
        // Work on the selected tokens only: a steering edit touches one token per row per step.
        let sel = ctx.select(&self.positions);
        if sel.rows.size()[0] == 0 {
            return Ok(None);
        }
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
