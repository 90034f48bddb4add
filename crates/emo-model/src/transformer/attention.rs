//! Grouped-query attention of one block: the fused kernel when nothing hooks its scores or pattern, explicit
//! attention (and per-head results) when something does.
use tch::{Kind, Tensor};

use super::{linear, rms_norm, Block, Transformer};
use crate::hooks::{HookContext, HookPoint, HookSet};
use crate::kv_cache::DecodeState;
use crate::rope::apply_rope;
use crate::{ModelError, Result};

impl Transformer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        l: usize,
        blk: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        state: &mut DecodeState,
        hooks: &mut HookSet,
        ctx: &HookContext,
    ) -> Result<Tensor> {
        let (b, t, _) = h.size3().map_err(ModelError::Torch)?;
        let (nh, nkv, hd) = (self.cfg.n_heads as i64, self.cfg.n_kv_heads as i64, self.cfg.d_head as i64);
        let x = self.norm_hooked(h, &blk.attn_norm, [HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l)], hooks, ctx)?;
        let qkv = linear(&x, &blk.qkv_w, blk.qkv_b.as_ref())?;
        let parts = qkv.split_with_sizes([nh * hd, nkv * hd, nkv * hd], -1);
        let (q, k) = (parts[0].view([b, t, nh, hd]), parts[1].view([b, t, nkv, hd]));
        let (q, k) = match &blk.qk_norm {
            Some((qn, kn)) => (rms_norm(&q, qn, self.cfg.rms_norm_eps, self.cfg.gemma), rms_norm(&k, kn, self.cfg.rms_norm_eps, self.cfg.gemma)),
            None => (q, k),
        };
        // Hooks see [batch, pos, head, d_head] (TransformerLens' layout; Qwen3's q and k after their norm);
        // attention runs on [batch, head, pos, d_head].
        let q = hooks.apply(HookPoint::AttnQ(l), q, ctx)?.transpose(1, 2);
        let k = hooks.apply(HookPoint::AttnK(l), k, ctx)?.transpose(1, 2);
        let v = hooks.apply(HookPoint::AttnV(l), parts[2].view([b, t, nkv, hd]), ctx)?.transpose(1, 2);
        let q = hooks.apply(HookPoint::AttnRotQ(l), apply_rope(&q, cos, sin).transpose(1, 2), ctx)?.transpose(1, 2);
        let k = hooks.apply(HookPoint::AttnRotK(l), apply_rope(&k, cos, sin).transpose(1, 2), ctx)?.transpose(1, 2);
        let (k, v) = state.append_kv(l, &k, &v);
        // Grouped-query attention without copying keys and values per query head: fold each KV head's group
        // of query heads into the query length (head h uses KV head h / group, as HF's repeat_kv).
        let group = nh / nkv;
        // Soft-capped scores (Gemma 2) exist only in explicit attention, as do hooked ones.
        let explicit = self.cfg.attn_softcap.is_some() || hooks.is_active(HookPoint::AttnScores(l)) || hooks.is_active(HookPoint::AttnPattern(l));
        let scale = self.cfg.gemma.then_some(self.cfg.query_scale);
        let z = if explicit {
            self.attention_pattern(l, &q, &k, &v, mask, hooks, ctx)?
        } else if group == 1 {
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, scale, false)
        } else {
            let keys = k.size()[2];
            let q = q.reshape([b, nkv, group * t, hd]);
            let m = mask.unsqueeze(2).expand([b, 1, group, t, keys], false).reshape([b, 1, group * t, keys]);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&m), 0.0, false, scale, false).reshape([b, nh, t, hd])
        };
        // hook_z is [batch, pos, head, d_head], TransformerLens' layout.
        let z = hooks.apply(HookPoint::AttnZ(l), z.transpose(1, 2), ctx)?;
        if hooks.is_active(HookPoint::AttnResult(l)) {
            // Each head through its own columns of W_O: [batch, pos, head, d_model], summed to hook_attn_out.
            let w = blk.o_w.dense(self.kind).view([self.cfg.d_model as i64, nh, hd]);
            let result = Tensor::einsum("bthk,dhk->bthd", &[&z, &w], None::<i64>);
            let result = hooks.apply(HookPoint::AttnResult(l), result, ctx)?;
            return Ok(result.sum_dim_intlist(2, false, result.kind()));
        }
        linear(&z.reshape([b, t, nh * hd]), &blk.o_w, None)
    }

    /// Attention computed step by step, for calls that hook its scores or pattern (the fused kernel exposes
    /// neither). `q` is [batch, head, query, d_head], `k` and `v` [batch, kv_head, key, d_head]; returns z as
    /// [batch, head, query, d_head].
    #[allow(clippy::too_many_arguments)]
    fn attention_pattern(
        &self,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        hooks: &mut HookSet,
        ctx: &HookContext,
    ) -> Result<Tensor> {
        let group = (self.cfg.n_heads / self.cfg.n_kv_heads) as i64;
        let (k, v) = if group > 1 {
            (k.repeat_interleave_self_int(group, Some(1), None), v.repeat_interleave_self_int(group, Some(1), None))
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let scores = q.matmul(&k.transpose(-2, -1)) * self.cfg.query_scale;
        let scores = match self.cfg.attn_softcap {
            Some(cap) => (scores / cap).tanh() * cap,
            None => scores,
        };
        let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
        let scores = hooks.apply(HookPoint::AttnScores(l), scores, ctx)?;
        // In f32 whatever the dtype, as Hugging Face's eager attention does.
        let pattern = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        let pattern = hooks.apply(HookPoint::AttnPattern(l), pattern, ctx)?;
        Ok(pattern.matmul(&v))
    }
}
