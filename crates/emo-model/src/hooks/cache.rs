//! [`ActivationCache`]: whole activations of one forward pass, by TransformerLens name or by (name, layer),
//! with TransformerLens' residual-stream analyses and, after a forward with autograd, gradients.
//!
//! [`crate::Model::run_with_cache`] fills one; [`CacheHook`] is the hook behind it, for calls that build
//! their own [`crate::HookSet`].
use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::{Hook, HookContext, HookPoint};
use crate::transformer::Transformer;
use crate::{ModelError, Result};

/// The hook that fills an [`ActivationCache`]: keeps every activation `filter` accepts, whole, on its layer's
/// device and in the model's dtype (as TransformerLens does). It holds one forward pass: a point seen twice (a second
/// chunk, as in generation) is an error; [`crate::Capture`] is the hook for generation.
pub struct CacheHook<'f> {
    filter: Box<dyn Fn(HookPoint) -> bool + 'f>,
    acts: BTreeMap<HookPoint, Tensor>,
}

impl<'f> CacheHook<'f> {
    /// Keeps the points `filter` accepts.
    pub fn new(filter: impl Fn(HookPoint) -> bool + 'f) -> Self {
        CacheHook { filter: Box::new(filter), acts: BTreeMap::new() }
    }

    /// The cache of what was kept, for a forward over `tokens` ([batch, pos] i64) whose real tokens `mask`
    /// marks ([batch, pos] bool, false for padding).
    pub fn into_cache(self, tokens: Tensor, mask: Tensor, n_layers: usize) -> ActivationCache {
        ActivationCache { acts: self.acts, tokens, mask, n_layers }
    }
}

impl Hook for CacheHook<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        (self.filter)(point)
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, _ctx: &HookContext) -> Result<Option<Tensor>> {
        if self.acts.contains_key(&point) {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: "an activation cache holds one forward pass and this point ran twice (generation?); use a Capture".into(),
            });
        }
        // The tensor itself, not a copy: no op of the forward pass edits an activation in place, and under
        // autograd it must stay in the graph for `gradients`.
        self.acts.insert(point, act.shallow_clone());
        Ok(None)
    }
}

/// Whole activations of one forward pass, `[batch, pos, ...]` as TransformerLens lays them out (the
/// attention scores and pattern `[batch, head, query_pos, key_pos]`). Rows are left-padded: [`Self::mask`]
/// marks real tokens.
///
/// ```no_run
/// use emo_model::{HookPoint, LoadOptions, Model};
/// let model = Model::load("smollm2-135m", LoadOptions::default())?;
/// let (logits, cache) = model.run_with_cache("The meeting moved to Friday.", |_| true)?;
/// let resid = cache.by_name("blocks.10.hook_resid_post")?; // [1, pos, d_model]
/// let last_mlp = cache.at("mlp_out", -1)?;                  // TransformerLens' cache["mlp_out", -1]
/// let (stack, labels) = cache.accumulated_resid(None, true)?; // [components, batch, pos, d_model]
/// # Ok::<(), emo_model::ModelError>(())
/// ```
pub struct ActivationCache {
    acts: BTreeMap<HookPoint, Tensor>,
    tokens: Tensor,
    mask: Tensor,
    n_layers: usize,
}

impl ActivationCache {
    /// The activation at `point`, if cached.
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.acts.get(&point)
    }

    /// The activation at `point`, or an error naming it and saying what was cached.
    pub fn require(&self, point: HookPoint) -> Result<&Tensor> {
        self.acts.get(&point).ok_or_else(|| ModelError::Hook {
            point: point.to_string(),
            msg: format!("not in this cache ({} points cached; widen the filter of run_with_cache)", self.acts.len()),
        })
    }

    /// The activation named `name` as TransformerLens names it (`"blocks.10.hook_resid_post"`).
    pub fn by_name(&self, name: &str) -> Result<&Tensor> {
        self.require(name.parse()?)
    }

    /// TransformerLens' `cache[name, layer]`: `name` is a point's short name (`resid_post`, `z`, `pattern`,
    /// `post`, or with its module where the short name is ambiguous: `ln1.scale`, `ln2.normalized`), `layer`
    /// counts from the end when negative.
    pub fn at(&self, name: &str, layer: i64) -> Result<&Tensor> {
        let n = self.n_layers as i64;
        let l = if layer < 0 { n + layer } else { layer };
        if !(0..n).contains(&l) {
            return Err(ModelError::InvalidArgument(format!("layer {layer} out of range for a {n}-layer model")));
        }
        let matches: Vec<HookPoint> = HookPoint::block(l as usize).filter(|p| short_names(*p).iter().any(|s| s == name)).collect();
        match matches.as_slice() {
            [p] => self.require(*p),
            [] => Err(ModelError::InvalidArgument(format!(
                "no hook point `{name}` in a block (e.g. resid_pre, q, rot_k, pattern, z, result, attn_out, resid_mid, pre, post, mlp_out, \
                 resid_post, ln1.scale, ln2.normalized)"
            ))),
            many => Err(ModelError::InvalidArgument(format!(
                "`{name}` names {}: say which",
                many.iter().map(|p| short_names(*p)[0].clone()).collect::<Vec<_>>().join(" or ")
            ))),
        }
    }

    /// The cached points, in forward order.
    pub fn points(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.acts.keys().copied()
    }

    /// How many points are cached.
    pub fn len(&self) -> usize {
        self.acts.len()
    }

    /// Whether nothing was cached.
    pub fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }

    /// The token ids the forward ran on, [batch, pos] i64 (left padding included).
    pub fn tokens(&self) -> &Tensor {
        &self.tokens
    }

    /// Which tokens are real, [batch, pos] bool (false for left padding).
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// The activation at `point` as an `ndarray` array of f32 (for work outside LibTorch).
    pub fn to_ndarray(&self, point: HookPoint) -> Result<ndarray::ArrayD<f32>> {
        to_ndarray(self.require(point)?)
    }

    /// TransformerLens' `accumulated_resid`: the residual stream as it stands before each layer up to
    /// `layer` (each `resid_pre`, and each `resid_mid` too with `incl_mid`), then the final `resid_post` when
    /// `layer` is `None` (every layer). Returns [components, batch, pos, d_model] and labels (`0_pre`,
    /// `0_mid`, ..., `final_post`).
    pub fn accumulated_resid(&self, layer: Option<usize>, incl_mid: bool) -> Result<(Tensor, Vec<String>)> {
        let upto = self.upto(layer)?;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..upto {
            parts.push(self.require(HookPoint::ResidPre(l))?.shallow_clone());
            labels.push(format!("{l}_pre"));
            if incl_mid {
                parts.push(self.require(HookPoint::ResidMid(l))?.shallow_clone());
                labels.push(format!("{l}_mid"));
            }
        }
        if upto == self.n_layers {
            parts.push(self.require(HookPoint::ResidPost(self.n_layers - 1))?.shallow_clone());
            labels.push("final_post".into());
        }
        Ok((stack_on_first(&parts), labels))
    }

    /// TransformerLens' `decompose_resid`: the residual stream before `layer` (`None`: after every layer) as
    /// the sum of its parts: the embedding and each earlier attention and MLP output. Returns
    /// [components, batch, pos, d_model] and labels (`embed`, `0_attn_out`, `0_mlp_out`, ...).
    pub fn decompose_resid(&self, layer: Option<usize>) -> Result<(Tensor, Vec<String>)> {
        let upto = self.upto(layer)?;
        let mut parts = vec![self.require(HookPoint::Embed)?.shallow_clone()];
        let mut labels = vec!["embed".to_string()];
        for l in 0..upto {
            parts.push(self.require(HookPoint::AttnOut(l))?.shallow_clone());
            labels.push(format!("{l}_attn_out"));
            parts.push(self.require(HookPoint::MlpOut(l))?.shallow_clone());
            labels.push(format!("{l}_mlp_out"));
        }
        Ok((stack_on_first(&parts), labels))
    }

    /// TransformerLens' `apply_ln_to_stack`: divides each component of `stack` ([components, batch, pos,
    /// d_model]) by the scale the norm at `layer` computed on the whole residual (`None`: the final norm,
    /// `ln_final.hook_scale`; `Some(l)`: `blocks.l.ln1.hook_scale`), so that the components add up to the
    /// normalized residual. As in TransformerLens the norm's weight is not applied (TransformerLens folds it
    /// into the next matrix; here [`Self::logit_lens`] applies it).
    pub fn apply_ln_to_stack(&self, stack: &Tensor, layer: Option<usize>) -> Result<Tensor> {
        let point = match layer {
            None => HookPoint::LnFinalScale,
            Some(l) if l < self.n_layers => HookPoint::Ln1Scale(l),
            Some(l) if l == self.n_layers => HookPoint::LnFinalScale,
            Some(l) => return Err(ModelError::InvalidArgument(format!("layer {l} out of range for a {}-layer model", self.n_layers))),
        };
        let scale = self.require(point)?.to_device(stack.device());
        Ok((stack.to_kind(Kind::Float) / scale.to_kind(Kind::Float)).to_kind(stack.kind()))
    }

    /// The logit lens: each accumulated residual ([`Self::accumulated_resid`] with `incl_mid`) at position
    /// `pos` of every row (negative counts from the end) through the final norm and the unembedding, as if
    /// the model stopped there. Returns [components, batch, vocab] f32 and the labels.
    pub fn logit_lens(&self, model: &Transformer, pos: i64, incl_mid: bool) -> Result<(Tensor, Vec<String>)> {
        let (stack, labels) = self.accumulated_resid(None, incl_mid)?;
        let t = stack.size()[2];
        let p = if pos < 0 { t + pos } else { pos };
        if !(0..t).contains(&p) {
            return Err(ModelError::InvalidArgument(format!("position {pos} out of range for {t} positions")));
        }
        let resid = stack.select(2, p); // [components, batch, d_model]
        let normed = model.final_norm(&resid);
        Ok((normed.matmul(&model.unembed().to_kind(normed.kind()).tr()).to_kind(Kind::Float), labels))
    }

    /// Gradients of the scalar `metric` with respect to every cached activation, as a cache of the same
    /// points (zeros where the metric does not depend on one). The forward must have run with autograd
    /// ([`crate::Model::run_with_cache_grad`]); the graph is freed afterwards, so call this once per forward.
    pub fn gradients(&self, metric: &Tensor) -> Result<ActivationCache> {
        self.backward(metric, false)
    }

    /// [`Self::gradients`] keeping the graph, so that the gradients of another metric of the same forward
    /// can be taken after this one.
    pub fn gradients_keeping_graph(&self, metric: &Tensor) -> Result<ActivationCache> {
        self.backward(metric, true)
    }

    fn backward(&self, metric: &Tensor, keep_graph: bool) -> Result<ActivationCache> {
        if metric.numel() != 1 {
            return Err(ModelError::InvalidArgument(format!("the metric must be a scalar, got shape {:?}", metric.size())));
        }
        if !metric.requires_grad() {
            return Err(ModelError::InvalidArgument(
                "the metric does not depend on the forward's graph: run the forward with run_with_cache_grad".into(),
            ));
        }
        let (points, inputs): (Vec<HookPoint>, Vec<&Tensor>) = self.acts.iter().filter(|(_, t)| t.requires_grad()).map(|(p, t)| (*p, t)).unzip();
        let grads = Tensor::f_run_backward(&[metric], &inputs, keep_graph, false).map_err(ModelError::Torch)?;
        let mut acts = BTreeMap::new();
        for (p, g) in points.into_iter().zip(grads) {
            let g = if g.defined() { g } else { self.acts[&p].zeros_like() };
            acts.insert(p, g);
        }
        Ok(ActivationCache { acts, tokens: self.tokens.shallow_clone(), mask: self.mask.shallow_clone(), n_layers: self.n_layers })
    }

    fn upto(&self, layer: Option<usize>) -> Result<usize> {
        match layer {
            None => Ok(self.n_layers),
            Some(l) if l <= self.n_layers => Ok(l),
            Some(l) => Err(ModelError::InvalidArgument(format!("layer {l} out of range for a {}-layer model", self.n_layers))),
        }
    }
}

/// `parts` stacked on the first one's device: a model placed across devices caches each layer's activations
/// on that layer's device.
fn stack_on_first(parts: &[Tensor]) -> Tensor {
    let Some(device) = parts.first().map(Tensor::device) else {
        return Tensor::stack(parts, 0);
    };
    Tensor::stack(&parts.iter().map(|p| p.to_device(device)).collect::<Vec<_>>(), 0)
}

/// The names `cache.at` accepts for a block point: its name after `blocks.L.` without `hook_`
/// (`attn.z`, `ln1.scale`) and the last part alone (`z`, `scale`).
fn short_names(p: HookPoint) -> Vec<String> {
    let full = p.to_string();
    let rest = full.split_once('.').and_then(|(_, r)| r.split_once('.')).map_or(full.as_str(), |(_, r)| r).replace("hook_", "");
    let last = rest.rsplit('.').next().unwrap_or(&rest).to_string();
    vec![rest, last]
}

/// A tensor as an `ndarray` array of f32, on the CPU.
pub fn to_ndarray(t: &Tensor) -> Result<ndarray::ArrayD<f32>> {
    let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    (&t).try_into().map_err(ModelError::Torch)
}
