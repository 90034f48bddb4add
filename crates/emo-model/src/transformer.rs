//! The decoder shared by the Llama, Qwen2, Qwen3, Phi-3 and Gemma 2/3 families: embeddings, pre-norm blocks with grouped-query
//! attention (RoPE, optional q/k/v biases, optional per-head q/k RMSNorm) and a SwiGLU MLP, final RMSNorm,
//! unembedding. Every hook point of
//! [`HookPoint`] is computed here and passed through the call's [`HookSet`]. Loading is in `load.rs`, a
//! block's attention in `attention.rs`; a model placed across devices ([`Placement`]) runs each device's
//! blocks there, moving the residual at the boundaries.
use tch::{Device, Kind, Tensor};

use crate::config::TransformerConfig;
use crate::hooks::{HookContext, HookPoint, HookSet};
use crate::kv_cache::DecodeState;
use crate::packed::Projection;
use crate::placement::Placement;
use crate::rope::Rope;
use crate::{ModelError, Result};

mod attention;
mod load;

/// For which positions of a chunk to compute logits. Generation needs only the last one, which skips most
/// of the unembedding (a fifth of SmolLM2's weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position: [batch, chunk, vocab].
    All,
    /// The last position of the chunk: [batch, 1, vocab].
    Last,
    /// None (activations only); `forward_chunk` returns an empty tensor.
    Skip,
}

struct Block {
    attn_norm: Tensor,
    // q, k and v fused into one matmul: fewer kernel launches per token.
    qkv_w: Projection,
    qkv_b: Option<Tensor>,
    // Qwen3's per-head RMSNorm weights for queries and keys, [d_head] each.
    qk_norm: Option<(Tensor, Tensor)>,
    o_w: Projection,
    mlp_norm: Tensor,
    // Gemma's norms of the attention and MLP outputs before each residual add.
    post_attn_norm: Option<Tensor>,
    post_mlp_norm: Option<Tensor>,
    // gate and up fused likewise.
    gate_up_w: Projection,
    down_w: Projection,
}

/// A loaded decoder in one dtype, on one device or across several ([`Placement`]: contiguous layer ranges,
/// the embedding on the first device, the final norm and unembedding on the last).
pub struct Transformer {
    cfg: TransformerConfig,
    kind: Kind,
    placement: Placement,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Projection,
    // The unembedding is the embedding's tensor (a copy of it when they are on different devices).
    tied: bool,
    // Per device of the placement, on it: the rotation, and Gemma 3's local layers' own (their base, no
    // scaling).
    ropes: Vec<(Rope, Option<Rope>)>,
}

// SAFETY: a `Transformer` owns its weight tensors and never mutates them after `load` (every forward op
// is out-of-place on them); its fields are private and its accessors return copies, so safe code cannot get
// a handle to a weight (not even through `shallow_clone`) to edit in place; LibTorch tensor reads are
// thread-safe. Sharing `&Transformer` across threads (one model serving several worker threads) is therefore
// sound; tests/hooks.rs runs one model from several threads and checks each gets the single-thread result.
unsafe impl Sync for Transformer {}

fn chunk_context<'a>(positions: &'a Tensor, prompt_lens: &'a Tensor, step: usize, row_ids: Option<&'a Tensor>) -> HookContext<'a> {
    match row_ids {
        Some(ids) => HookContext::with_row_ids(positions, prompt_lens, step, ids),
        None => HookContext::new(positions, prompt_lens, step),
    }
}

/// A chunk of [`Transformer::forward_chunk`] part-way through the blocks: the residual leaving the last block
/// run and what every block needs (positions, mask, logical rows).
pub(crate) struct ChunkInFlight {
    h: Tensor,
    positions: Tensor,
    mask: Tensor,
    row_ids: Option<Tensor>,
    // The first block not run yet.
    next: usize,
    t: i64,
    grad: bool,
}

impl ChunkInFlight {
    fn context<'a>(&'a self, state: &'a DecodeState) -> HookContext<'a> {
        chunk_context(&self.positions, state.prompt_lens(), state.step(), self.row_ids.as_ref())
    }
}

/// A chunk's positions, prompt lengths, logical rows and masks moved to a later device of the placement, so
/// that its blocks and hooks find them beside their activations.
struct OnDevice {
    positions: Tensor,
    prompt_lens: Tensor,
    row_ids: Option<Tensor>,
    mask: Option<Tensor>,
    windowed: Option<Tensor>,
}

impl OnDevice {
    fn new(ctx: &HookContext, mask: Option<&Tensor>, windowed: Option<&Tensor>, device: Device) -> Self {
        OnDevice {
            positions: ctx.positions.to_device(device),
            prompt_lens: ctx.prompt_lens.to_device(device),
            row_ids: ctx.row_ids.map(|r| r.to_device(device)),
            mask: mask.map(|m| m.to_device(device)),
            windowed: windowed.map(|w| w.to_device(device)),
        }
    }

    fn context(&self, step: usize) -> HookContext<'_> {
        chunk_context(&self.positions, &self.prompt_lens, step, self.row_ids.as_ref())
    }
}

impl Transformer {
    /// The model's shape.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// The first device: where the embedding is, where [`DecodeState`]s, positions and masks are made and
    /// where logits come back (on one device, the device of every weight).
    pub fn device(&self) -> Device {
        self.placement.first()
    }

    /// Which device holds each layer ([`crate::placement`]).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The device holding `layer`'s weights and KV cache, where its hooks see its activations.
    pub fn layer_device(&self, layer: usize) -> Device {
        self.placement.layer_device(layer)
    }

    /// The device of the final norm and the unembedding (the last of the placement): where
    /// `ln_final` and `logits` hooks see their activations.
    pub fn unembed_device(&self) -> Device {
        self.placement.last()
    }

    /// The dtype of weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A copy of the unembedding matrix, [vocab, d_model], on [`Transformer::unembed_device`]. The weights
    /// themselves are never handed out: a shared handle could be edited in place from safe code while
    /// another thread reads it (see the `Sync` impl).
    pub fn unembed(&self) -> Tensor {
        self.lm_head.dense(self.kind)
    }

    /// A copy of a layer's `W_O`, [d_model, n_heads * d_head], on the layer's device: head h writes through
    /// columns h*d_head..(h+1)*d_head.
    pub fn w_o(&self, layer: usize) -> Option<Tensor> {
        self.blocks.get(layer).map(|b| b.o_w.dense(self.kind))
    }

    /// A copy of a layer's `W_down`, [d_model, d_mlp], on the layer's device.
    pub fn w_down(&self, layer: usize) -> Option<Tensor> {
        self.blocks.get(layer).map(|b| b.down_w.dense(self.kind))
    }

    /// Bytes held by the weights (packed matrices at their packed size), and how many of the projection
    /// matrices are packed, of how many.
    pub fn weight_bytes(&self) -> (usize, usize, usize) {
        let dense = crate::device::tensor_bytes;
        let mut bytes = dense(&self.embed) + dense(&self.norm);
        // A tied unembedding on another device than the embedding is a copy.
        if !self.tied || self.placement.first() != self.placement.last() {
            bytes += self.lm_head.resident_bytes();
        }
        let (mut packed, mut total) = (0, 0);
        for b in &self.blocks {
            bytes += dense(&b.attn_norm) + dense(&b.mlp_norm) + b.qkv_b.as_ref().map_or(0, dense);
            bytes += b.qk_norm.as_ref().map_or(0, |(q, k)| dense(q) + dense(k));
            bytes += b.post_attn_norm.as_ref().map_or(0, dense) + b.post_mlp_norm.as_ref().map_or(0, dense);
            for p in [&b.qkv_w, &b.o_w, &b.gate_up_w, &b.down_w] {
                bytes += p.resident_bytes();
                let (pk, n) = p.packed_parts();
                packed += pk;
                total += n;
            }
        }
        (bytes, packed, total)
    }

    /// One forward pass, without a cache, over whole token rows (left-padded with `pad_id`; every token counts
    /// as prompt for hook positions). Returns logits as `logits` asks.
    pub fn forward_rows(&self, rows: &[Vec<u32>], pad_id: u32, hooks: &mut HookSet, logits: LogitsFor) -> Result<Tensor> {
        self.forward_padded(rows, pad_id, hooks, logits, false)
    }

    /// [`Transformer::forward_rows`] with autograd: every activation from `hook_embed` on is in the graph,
    /// so the gradient of anything computed from the logits or from activations hooks kept can be taken with
    /// respect to any hook point or to a tensor an intervention added (see
    /// [`crate::ActivationCache::gradients`]). Needs dequantized weights; memory grows with the graph, so
    /// keep batches small. Every other forward runs without autograd.
    pub fn forward_rows_grad(&self, rows: &[Vec<u32>], pad_id: u32, hooks: &mut HookSet, logits: LogitsFor) -> Result<Tensor> {
        if self.weight_bytes().1 > 0 {
            return Err(ModelError::InvalidArgument("gradients need dequantized weights: load the model with WeightFormat::Dequantized".into()));
        }
        self.forward_padded(rows, pad_id, hooks, logits, true)
    }

    /// The rows left-padded into one cacheless forward, with autograd or without.
    fn forward_padded(&self, rows: &[Vec<u32>], pad_id: u32, hooks: &mut HookSet, logits: LogitsFor, grad: bool) -> Result<Tensor> {
        let (ids, valid, lens) = crate::kv_cache::left_pad(rows, pad_id)?;
        let mut state = DecodeState::new(&lens, self.cfg.n_layers, self.device(), false);
        self.forward_chunk_inner(&ids, &valid, None, &mut state, hooks, logits, grad)
    }

    /// Runs one chunk of tokens for every row of `state`: the left-padded prompts first, then one token per
    /// row per decoding step. `tokens` is [batch, chunk] i64 and `valid` [batch, chunk] bool (false for left
    /// padding). The chunk's keys and values are appended to `state`. Returns logits as `logits` asks.
    pub fn forward_chunk(&self, tokens: &Tensor, valid: &Tensor, state: &mut DecodeState, hooks: &mut HookSet, logits: LogitsFor) -> Result<Tensor> {
        self.forward_chunk_inner(tokens, valid, None, state, hooks, logits, false)
    }

    /// [`Transformer::forward_chunk`] for a batch whose row b is the logical row `rows[b]`, which hooks see
    /// as [`crate::hooks::Selection::row_ids`]: a batch that finished rows have left keeps addressing each
    /// row's interventions and captures by its place among the prompts ([`crate::generate::generate`]).
    pub fn forward_chunk_as(
        &self,
        tokens: &Tensor,
        valid: &Tensor,
        rows: &[i64],
        state: &mut DecodeState,
        hooks: &mut HookSet,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        self.forward_chunk_inner(tokens, valid, Some(rows), state, hooks, logits, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_chunk_inner(
        &self,
        tokens: &Tensor,
        valid: &Tensor,
        rows: Option<&[i64]>,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        logits: LogitsFor,
        grad: bool,
    ) -> Result<Tensor> {
        let mut chunk = self.begin_chunk(tokens, valid, rows, state, hooks, grad)?;
        self.run_blocks(&mut chunk, state, hooks, &mut || true)?;
        self.end_chunk(chunk, state, hooks, logits)
    }

    /// Starts a chunk of [`Transformer::forward_chunk`] whose blocks then run a few at a time
    /// ([`Transformer::run_blocks`]) and whose logits come from [`Transformer::end_chunk`]: continuous batching
    /// pauses a long prompt's chunk between blocks so that requests arriving meanwhile need not wait for all
    /// of it. Until the chunk ends, `state` must serve no other call.
    pub(crate) fn begin_chunk(
        &self,
        tokens: &Tensor,
        valid: &Tensor,
        rows: Option<&[i64]>,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        grad: bool,
    ) -> Result<ChunkInFlight> {
        let _guard = (!grad).then(tch::no_grad_guard);
        let (b, t) = tokens.size2().map_err(ModelError::Torch)?;
        if valid.size() != [b, t] || state.batch() != b {
            return Err(ModelError::InvalidArgument(format!(
                "tokens {:?}, mask {:?} and a decode state of batch {} do not match",
                tokens.size(),
                valid.size(),
                state.batch()
            )));
        }
        if rows.is_some_and(|r| r.len() as i64 != b) {
            return Err(ModelError::InvalidArgument(format!("{} logical rows given for a batch of {b}", rows.map_or(0, <[i64]>::len))));
        }
        if !state.caches() && !state.is_empty() {
            return Err(ModelError::InvalidArgument("a decode state without a KV cache serves one forward call; start a new one".into()));
        }
        let vocab = self.cfg.vocab_size as i64;
        if t > 0 {
            let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
            if lo < 0 || hi >= vocab {
                return Err(ModelError::InvalidArgument(format!("token ids must be in 0..{vocab}, got {lo}..={hi}")));
            }
        }
        hooks.route(self.cfg.n_layers);
        let device = self.device();
        let tokens = tokens.to_device(device);
        let valid = valid.to_device(device);

        let (positions, mask) = state.begin_chunk(&valid);
        // Padding belongs to no row (-1), as in a branched forward.
        let row_ids = rows.map(|r| {
            let ids = Tensor::from_slice(r).to_device(device).view([b, 1]).expand([b, t], false);
            ids.where_self(&valid, &Tensor::from(-1i64).to_device(device))
        });
        let mut chunk = ChunkInFlight { h: Tensor::empty([0], (self.kind, device)), positions, mask, row_ids, next: 0, t, grad };
        let embedded = self.embed_tokens(&tokens);
        // Under autograd the graph starts here: weights need no gradient, activations do.
        let embedded = if grad { embedded.set_requires_grad(true) } else { embedded };
        chunk.h = hooks.apply(HookPoint::Embed, embedded, &chunk.context(state))?;
        Ok(chunk)
    }

    /// Runs the chunk's next blocks, one at least, then one more while `more()` says so; returns whether
    /// every block has run.
    pub(crate) fn run_blocks(
        &self,
        chunk: &mut ChunkInFlight,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        more: &mut dyn FnMut() -> bool,
    ) -> Result<bool> {
        let _guard = (!chunk.grad).then(tch::no_grad_guard);
        if chunk.next < self.cfg.n_layers {
            hooks.route(self.cfg.n_layers);
            let (positions, prompt_lens, mask) = (chunk.positions.shallow_clone(), state.prompt_lens().shallow_clone(), chunk.mask.shallow_clone());
            let row_ids = chunk.row_ids.as_ref().map(Tensor::shallow_clone);
            let ctx = chunk_context(&positions, &prompt_lens, state.step(), row_ids.as_ref());
            let h = std::mem::replace(&mut chunk.h, Tensor::empty([0], (self.kind, self.device())));
            chunk.h = self.blocks_from(&mut chunk.next, h, &mask, state, hooks, &ctx, more)?;
        }
        Ok(chunk.next == self.cfg.n_layers)
    }

    /// Ends a chunk whose blocks have all run: commits its keys to `state` and returns logits as `logits` asks.
    pub(crate) fn end_chunk(&self, chunk: ChunkInFlight, state: &mut DecodeState, hooks: &mut HookSet, logits: LogitsFor) -> Result<Tensor> {
        let _guard = (!chunk.grad).then(tch::no_grad_guard);
        if chunk.next != self.cfg.n_layers {
            return Err(ModelError::InvalidArgument(format!("a chunk ended after {} of {} blocks", chunk.next, self.cfg.n_layers)));
        }
        let prompt_lens = state.prompt_lens().shallow_clone();
        let ctx = chunk_context(&chunk.positions, &prompt_lens, state.step(), chunk.row_ids.as_ref());
        state.end_chunk(chunk.t);
        self.head(chunk.h.shallow_clone(), logits, hooks, &ctx)
    }

    /// Runs a branch chunk over the committed prefix in `state` ([`crate::branch`]): `tokens[b, j]` is the
    /// j-th candidate for row b's next position, attending to the prefix and itself; `row_ids` names each
    /// token's logical row (-1 = padding). With `from_layer` > 0 the blocks before it are skipped and `resid`
    /// ([batch, chunk, d_model]) is the residual entering block `from_layer` (or leaving the last block).
    /// Returns logits for every token as `logits` asks (`Last` counts as `All` here: every token is last).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_branch_chunk(
        &self,
        tokens: &Tensor,
        row_ids: &Tensor,
        from_layer: usize,
        resid: Option<Tensor>,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let valid = row_ids.ge(0);
        let (positions, mask) = state.begin_branch_chunk(&valid);
        let prompt_lens = state.prompt_lens().shallow_clone();
        let ctx = HookContext::with_row_ids(&positions, &prompt_lens, state.step(), row_ids);
        let h = match resid {
            Some(h) if from_layer > 0 => h,
            _ => hooks.apply(HookPoint::Embed, self.embed_tokens(tokens), &ctx)?,
        };
        let mut next = from_layer;
        let h = self.blocks_from(&mut next, h, &mask, state, hooks, &ctx, &mut || true)?;
        let logits = if logits == LogitsFor::Skip { LogitsFor::Skip } else { LogitsFor::All };
        self.head(h, logits, hooks, &ctx)
    }

    /// Blocks from `*next` over one chunk, each hook point passed through `hooks`: one at least, then the
    /// next while `more()` says so. `*next` is left at the first block not run. `mask` and `ctx` are on the
    /// first device; each device's blocks get the residual, positions and masks moved to it, and the
    /// residual is returned on the device of the last block run.
    #[allow(clippy::too_many_arguments)]
    fn blocks_from(
        &self,
        next: &mut usize,
        mut h: Tensor,
        mask: &Tensor,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        ctx: &HookContext,
        more: &mut dyn FnMut() -> bool,
    ) -> Result<Tensor> {
        // Sliding-window attention: keys this many positions or more before the query are masked too (on
        // every layer, or on Gemma's local ones). Made where the state's key positions are: the first device.
        let windowed = self.cfg.sliding_window.map(|w| {
            let keys = state.key_positions(ctx.positions);
            let near = (ctx.positions.unsqueeze(-1) - keys.unsqueeze(1)).lt(w as i64);
            mask.logical_and(&near.unsqueeze(1))
        });
        let mut ran = false;
        for stage in self.placement.stage_of(*next)..self.placement.devices().len() {
            let layers = self.placement.ranges()[stage].clone();
            if layers.end <= *next {
                continue;
            }
            let device = self.placement.devices()[stage];
            // The residual crosses to the stage's device. Always called, even between two entries that are the
            // same device (`cpu,cpu`, where it is a no-op), so that a split on one device runs every path a
            // split across GPUs does.
            h = h.to_device(device);
            let moved = (stage > 0).then(|| OnDevice::new(ctx, Some(mask), windowed.as_ref(), device));
            let local;
            let (c, m, w) = match &moved {
                Some(mv) => {
                    local = mv.context(ctx.step);
                    (&local, mv.mask.as_ref().expect("moved above"), mv.windowed.as_ref())
                }
                None => (ctx, mask, windowed.as_ref()),
            };
            let stopped;
            (h, stopped) = self.stage_blocks(stage, layers.start.max(*next)..layers.end, next, h, m, w, state, hooks, c, more, &mut ran)?;
            if stopped {
                break;
            }
        }
        Ok(h)
    }

    /// The blocks `layers` of one device of the placement (`stage`), whose inputs are all on that device.
    /// Returns the residual and whether `more()` stopped the chunk before the range's end.
    #[allow(clippy::too_many_arguments)]
    fn stage_blocks(
        &self,
        stage: usize,
        layers: std::ops::Range<usize>,
        next: &mut usize,
        mut h: Tensor,
        mask: &Tensor,
        windowed: Option<&Tensor>,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        ctx: &HookContext,
        more: &mut dyn FnMut() -> bool,
        ran: &mut bool,
    ) -> Result<(Tensor, bool)> {
        let (rope, rope_local) = &self.ropes[stage];
        let (cos, sin) = rope.cos_sin(ctx.positions, self.kind);
        let local = rope_local.as_ref().map(|r| r.cos_sin(ctx.positions, self.kind));
        let eps = self.cfg.rms_norm_eps;
        for l in layers {
            if *ran && !more() {
                return Ok((h, true));
            }
            *ran = true;
            let blk = &self.blocks[l];
            let mask = match (windowed, self.cfg.window(l)) {
                (Some(w), Some(_)) => w,
                _ => mask,
            };
            h = hooks.apply(HookPoint::ResidPre(l), h, ctx)?;
            let (cos, sin) = match (&local, self.cfg.window(l)) {
                (Some((c, s)), Some(_)) => (c, s),
                _ => (&cos, &sin),
            };
            let attn = self.attention(l, blk, &h, cos, sin, mask, state, hooks, ctx)?;
            // Gemma norms the output before the add; hook_attn_out sees what is added (as TransformerLens).
            let attn = match &blk.post_attn_norm {
                Some(w) => rms_norm(&attn, w, eps, true),
                None => attn,
            };
            let attn = hooks.apply(HookPoint::AttnOut(l), attn, ctx)?;
            h = hooks.apply(HookPoint::ResidMid(l), h + attn, ctx)?;
            let x = self.norm_hooked(&h, &blk.mlp_norm, [HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l)], hooks, ctx)?;
            let gu = linear(&x, &blk.gate_up_w, None)?.chunk(2, -1);
            let pre = hooks.apply(HookPoint::MlpPre(l), gu[0].shallow_clone(), ctx)?;
            let pre_linear = hooks.apply(HookPoint::MlpPreLinear(l), gu[1].shallow_clone(), ctx)?;
            let act = if self.cfg.gemma { pre.gelu("tanh") } else { pre.silu() };
            let post = hooks.apply(HookPoint::MlpPost(l), act * pre_linear, ctx)?;
            let mlp = linear(&post, &blk.down_w, None)?;
            let mlp = match &blk.post_mlp_norm {
                Some(w) => rms_norm(&mlp, w, eps, true),
                None => mlp,
            };
            let mlp = hooks.apply(HookPoint::MlpOut(l), mlp, ctx)?;
            h = hooks.apply(HookPoint::ResidPost(l), h + mlp, ctx)?;
            *next = l + 1;
        }
        Ok((h, false))
    }

    /// The final norm and the unembedding, for the positions `logits` asks. They run on the last device
    /// (where `ln_final` and `logits` hooks see them); the logits come back on the first, beside the
    /// positions and row ids callers index them with.
    fn head(&self, h: Tensor, logits: LogitsFor, hooks: &mut HookSet, ctx: &HookContext) -> Result<Tensor> {
        let device = self.placement.last();
        // Moved always, as at every boundary (a no-op on one device).
        let h = h.to_device(device);
        let moved = self.placement.is_split().then(|| OnDevice::new(ctx, None, None, device));
        let local;
        let ctx = match &moved {
            Some(mv) => {
                local = mv.context(ctx.step);
                &local
            }
            None => ctx,
        };
        let h = self.norm_hooked(&h, &self.norm, [HookPoint::LnFinalScale, HookPoint::LnFinal], hooks, ctx)?;
        let t = h.size()[1];
        let (h, lpos) = match logits {
            LogitsFor::Skip => return Ok(Tensor::empty([0], (self.kind, self.device()))),
            LogitsFor::All => (h, None),
            LogitsFor::Last => (h.narrow(1, t - 1, 1), Some(ctx.positions.narrow(1, t - 1, 1))),
        };
        let out = linear(&h, &self.lm_head, None)?;
        let out = match self.cfg.final_softcap {
            Some(cap) => (out / cap).tanh() * cap,
            None => out,
        };
        let out = match lpos {
            None => hooks.apply(HookPoint::Logits, out, ctx)?,
            Some(p) => {
                let row_ids = ctx.row_ids.map(|r| r.narrow(1, t - 1, 1));
                let c = match &row_ids {
                    Some(r) => HookContext::with_row_ids(&p, ctx.prompt_lens, ctx.step, r),
                    None => HookContext::new(&p, ctx.prompt_lens, ctx.step),
                };
                hooks.apply(HookPoint::Logits, out, &c)?
            }
        };
        Ok(out.to_device(self.device()))
    }

    /// An RMSNorm and its two hook points (`hook_scale`, `hook_normalized`); the scale is computed apart
    /// only when hooked, and reading it leaves the output as it was.
    fn norm_hooked(
        &self,
        x: &Tensor,
        w: &Tensor,
        [scale_point, out_point]: [HookPoint; 2],
        hooks: &mut HookSet,
        ctx: &HookContext,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let y = if hooks.is_active(scale_point) {
            let xf = x.to_kind(Kind::Float);
            let inv = (xf.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt();
            let scale = inv.reciprocal();
            let hooked = hooks.apply(scale_point, scale.shallow_clone(), ctx)?;
            // An unchanged scale keeps the exact `rsqrt` of the unhooked path.
            let inv = if hooked.equal(&scale) { inv } else { hooked.reciprocal() };
            weighted(xf * inv, w, x.kind(), self.cfg.gemma)
        } else {
            rms_norm(x, w, eps, self.cfg.gemma)
        };
        hooks.apply(out_point, y, ctx)
    }

    /// The final RMSNorm (weight applied) of `x` ([..., d_model]): what the unembedding reads. Computed on
    /// [`Transformer::unembed_device`], where [`Transformer::unembed`] is, and returned there.
    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        rms_norm(&x.to_kind(self.kind).to_device(self.placement.last()), &self.norm, self.cfg.rms_norm_eps, self.cfg.gemma)
    }

    /// Token embeddings (scaled by sqrt(d_model) for Gemma, in the weights' dtype as Hugging Face does).
    fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        let e = Tensor::embedding(&self.embed, tokens, -1, false, false);
        if self.cfg.gemma {
            let scale = Tensor::from((self.cfg.d_model as f64).sqrt() as f32).to_kind(self.kind).to_device(self.device());
            e * scale
        } else {
            e
        }
    }
}

/// `x @ w^T + b` for a [batch, tokens, in] input, as one [rows, in] x [in, out] product on contiguous rows. A strided
/// input (the last position's [batch, 1, d_model] slice, or whatever a hook returns) sent LibTorch's CPU bf16
/// matmul down its batched path, which copied the whole weight once per row: a bf16 prefill of the 1.5B
/// model took 10x as long as it does now. On contiguous input this is the product `Tensor::linear` computes.
fn linear(x: &Tensor, w: &Projection, b: Option<&Tensor>) -> Result<Tensor> {
    let (batch, tokens, d) = x.size3().map_err(ModelError::Torch)?;
    Ok(w.forward(&x.contiguous().view([batch * tokens, d]), b)?.view([batch, tokens, -1]))
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, gemma: bool) -> Tensor {
    // In f32 whatever the dtype, as Hugging Face does.
    let xf = x.to_kind(Kind::Float);
    let var = xf.square().mean_dim(-1, true, Kind::Float);
    weighted(xf * (var + eps).rsqrt(), w, x.kind(), gemma)
}

/// The normalized f32 `n` times the norm's weight, in Hugging Face's order for the family: Llama casts to
/// the dtype, then multiplies by w; Gemma multiplies by (1 + w) in f32, then casts.
fn weighted(n: Tensor, w: &Tensor, kind: Kind, gemma: bool) -> Tensor {
    if gemma {
        (n * (w.to_kind(Kind::Float) + 1.0)).to_kind(kind)
    } else {
        n.to_kind(kind) * w
    }
}
