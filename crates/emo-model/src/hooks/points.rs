//! [`HookPoint`]: every place in a Llama-style forward pass where an activation can be read or replaced,
//! named exactly as TransformerLens names it.
use std::fmt;
use std::str::FromStr;

use crate::{ModelError, Result};

/// A place in the forward pass where an activation can be read or replaced, named as TransformerLens names it.
///
/// Shapes are TransformerLens' layouts: `[batch, pos, ...]` for every point except `attn.hook_attn_scores`
/// and `attn.hook_pattern`, which are `[batch, head, query_pos, key_pos]` ([`HookPoint::pos_dim`]).
/// Points that need work of their own (the attention pattern, per-head results, norm scales) are computed
/// only in calls where some hook wants them.
///
/// ```
/// use emo_model::HookPoint;
/// let p: HookPoint = "blocks.3.attn.hook_z".parse()?;
/// assert_eq!(p, HookPoint::AttnZ(3));
/// assert_eq!(HookPoint::ResidPost(12).to_string(), "blocks.12.hook_resid_post");
/// assert_eq!("blocks.0.ln1.hook_scale".parse::<HookPoint>()?, HookPoint::Ln1Scale(0));
/// assert!("blocks.3.hook_resid_middle".parse::<HookPoint>().is_err());
/// # Ok::<(), emo_model::ModelError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings, [batch, pos, d_model].
    Embed,
    /// `blocks.{i}.hook_resid_pre`: residual entering block i, [batch, pos, d_model].
    ResidPre(usize),
    /// `blocks.{i}.ln1.hook_scale`: the attention RMSNorm's `sqrt(mean(x²) + eps)`, [batch, pos, 1], in f32.
    Ln1Scale(usize),
    /// `blocks.{i}.ln1.hook_normalized`: the attention RMSNorm's output, weight applied (what the attention
    /// reads; TransformerLens folds the weight into `W_Q/W_K/W_V` instead), [batch, pos, d_model].
    Ln1Normalized(usize),
    /// `blocks.{i}.attn.hook_q`: queries before RoPE, [batch, pos, head, d_head].
    AttnQ(usize),
    /// `blocks.{i}.attn.hook_k`: keys before RoPE, [batch, pos, kv_head, d_head] (grouped-query attention
    /// has fewer key heads, as in TransformerLens).
    AttnK(usize),
    /// `blocks.{i}.attn.hook_v`: values, [batch, pos, kv_head, d_head].
    AttnV(usize),
    /// `blocks.{i}.attn.hook_rot_q`: queries after RoPE, [batch, pos, head, d_head].
    AttnRotQ(usize),
    /// `blocks.{i}.attn.hook_rot_k`: keys after RoPE, [batch, pos, kv_head, d_head].
    AttnRotK(usize),
    /// `blocks.{i}.attn.hook_attn_scores`: `q·k / sqrt(d_head)` with masked keys at -inf,
    /// [batch, head, query_pos, key_pos] (keys: every cached position, padding included).
    AttnScores(usize),
    /// `blocks.{i}.attn.hook_pattern`: the softmax of the scores, [batch, head, query_pos, key_pos].
    AttnPattern(usize),
    /// `blocks.{i}.attn.hook_z`: per-head attention output before `o_proj`, [batch, pos, head, d_head].
    AttnZ(usize),
    /// `blocks.{i}.attn.hook_result`: each head's output after `o_proj`, [batch, pos, head, d_model]; they sum
    /// to `hook_attn_out`.
    AttnResult(usize),
    /// `blocks.{i}.hook_attn_out`: attention output after `o_proj`, [batch, pos, d_model].
    AttnOut(usize),
    /// `blocks.{i}.hook_resid_mid`: residual after the attention add (the paper's attention site).
    ResidMid(usize),
    /// `blocks.{i}.ln2.hook_scale`: the MLP RMSNorm's scale, [batch, pos, 1], in f32.
    Ln2Scale(usize),
    /// `blocks.{i}.ln2.hook_normalized`: the MLP RMSNorm's output, weight applied, [batch, pos, d_model].
    Ln2Normalized(usize),
    /// `blocks.{i}.mlp.hook_pre`: the gate projection before its activation, [batch, pos, d_mlp].
    MlpPre(usize),
    /// `blocks.{i}.mlp.hook_pre_linear`: the up projection, [batch, pos, d_mlp].
    MlpPreLinear(usize),
    /// `blocks.{i}.mlp.hook_post`: `act(gate) * up` before `down_proj`, [batch, pos, d_mlp].
    MlpPost(usize),
    /// `blocks.{i}.hook_mlp_out`: MLP output after `down_proj`, [batch, pos, d_model].
    MlpOut(usize),
    /// `blocks.{i}.hook_resid_post`: residual after the MLP add (the paper's MLP site).
    ResidPost(usize),
    /// `ln_final.hook_scale`: the final RMSNorm's scale, [batch, pos, 1], in f32.
    LnFinalScale,
    /// `ln_final.hook_normalized`: the final RMSNorm's output, weight applied, [batch, pos, d_model].
    LnFinal,
    /// `logits`: unembedding output, [batch, pos, vocab] (only the positions logits were computed for).
    Logits,
}

/// Makes a block's point for a layer.
type AtLayer = fn(usize) -> HookPoint;

/// The points of one block in forward order, by their name after `blocks.{i}.`.
const BLOCK_POINTS: [(&str, AtLayer); 21] = [
    ("hook_resid_pre", HookPoint::ResidPre),
    ("ln1.hook_scale", HookPoint::Ln1Scale),
    ("ln1.hook_normalized", HookPoint::Ln1Normalized),
    ("attn.hook_q", HookPoint::AttnQ),
    ("attn.hook_k", HookPoint::AttnK),
    ("attn.hook_v", HookPoint::AttnV),
    ("attn.hook_rot_q", HookPoint::AttnRotQ),
    ("attn.hook_rot_k", HookPoint::AttnRotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::AttnPattern),
    ("attn.hook_z", HookPoint::AttnZ),
    ("attn.hook_result", HookPoint::AttnResult),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_scale", HookPoint::Ln2Scale),
    ("ln2.hook_normalized", HookPoint::Ln2Normalized),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

/// Points outside the blocks: (name, point).
const OUTER_POINTS: [(&str, HookPoint); 4] = [
    ("hook_embed", HookPoint::Embed),
    ("ln_final.hook_scale", HookPoint::LnFinalScale),
    ("ln_final.hook_normalized", HookPoint::LnFinal),
    ("logits", HookPoint::Logits),
];

impl HookPoint {
    /// The block this point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        self.block_name().map(|(l, _)| l)
    }

    /// (layer, name after `blocks.{layer}.`) for points inside a block.
    fn block_name(&self) -> Option<(usize, &'static str)> {
        use HookPoint::*;
        let l = match *self {
            ResidPre(l) | Ln1Scale(l) | Ln1Normalized(l) | AttnQ(l) | AttnK(l) | AttnV(l) | AttnRotQ(l) | AttnRotK(l) | AttnScores(l)
            | AttnPattern(l) | AttnZ(l) | AttnResult(l) | AttnOut(l) | ResidMid(l) | Ln2Scale(l) | Ln2Normalized(l) | MlpPre(l) | MlpPreLinear(l)
            | MlpPost(l) | MlpOut(l) | ResidPost(l) => l,
            Embed | LnFinalScale | LnFinal | Logits => return None,
        };
        BLOCK_POINTS.iter().find(|(_, make)| make(l) == *self).map(|(name, _)| (l, *name))
    }

    /// The same kind of point at another layer (points outside the blocks stay as they are).
    pub fn at_layer(&self, layer: usize) -> HookPoint {
        match self.block_name() {
            Some((_, name)) => BLOCK_POINTS.iter().find(|(n, _)| *n == name).map_or(*self, |(_, make)| make(layer)),
            None => *self,
        }
    }

    /// The dimension that indexes token positions: 1 for `[batch, pos, ...]` points, 2 for the attention
    /// scores and pattern (`[batch, head, query_pos, key_pos]`), whose query positions hooks select.
    pub fn pos_dim(&self) -> usize {
        match self {
            HookPoint::AttnScores(_) | HookPoint::AttnPattern(_) => 2,
            _ => 1,
        }
    }

    /// The points of block `layer`, in forward order.
    pub fn block(layer: usize) -> impl Iterator<Item = HookPoint> {
        BLOCK_POINTS.iter().map(move |(_, make)| make(layer))
    }

    /// All hook points of an `n_layers`-deep model, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed];
        v.extend((0..n_layers).flat_map(HookPoint::block));
        v.extend([HookPoint::LnFinalScale, HookPoint::LnFinal, HookPoint::Logits]);
        v
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((l, name)) = self.block_name() {
            return write!(f, "blocks.{l}.{name}");
        }
        let name = OUTER_POINTS.iter().find(|(_, p)| p == self).map_or("?", |(n, _)| *n);
        f.write_str(name)
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let unknown = || {
            let names: Vec<&str> = BLOCK_POINTS.iter().map(|(n, _)| *n).collect();
            ModelError::InvalidArgument(format!(
                "unknown hook point `{s}` (expected hook_embed, ln_final.hook_scale, ln_final.hook_normalized, logits, or blocks.L. \
                 followed by one of {})",
                names.join(", ")
            ))
        };
        if let Some((_, p)) = OUTER_POINTS.iter().find(|(n, _)| *n == s) {
            return Ok(*p);
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let l: usize = layer.parse().map_err(|_| unknown())?;
        BLOCK_POINTS.iter().find(|(n, _)| *n == name).map(|(_, make)| make(l)).ok_or_else(unknown)
    }
}
