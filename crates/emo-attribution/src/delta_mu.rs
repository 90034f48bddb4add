//! Emotion difference vectors delta_mu (spec section 7), the vectors section 6's enhancement and section 7's
//! circuits add: at `o_proj`'s input (`attn.hook_z`, flattened) and `down_proj`'s input (`mlp.hook_post`), last
//! prompt token; per (scenario, valence) group subtract the mean over the six emotions, average over groups;
//! not normalised. (The authors grouped by scenario only, which left 20 of their 448 groups.)
//!
//! Every complete group holds exactly one sample per emotion, so the mean over groups of the centred vectors
//! is the mean of emotion e over complete-group samples minus the mean of those six means: per-emotion sums
//! over complete groups are all a run has to keep.
use tch::{Kind, Tensor};

/// delta_mu per emotion and layer.
#[derive(Debug)]
pub struct DeltaMu {
    /// At `o_proj`'s input: `[6, n_layers, n_heads * d_head]`, f64.
    pub attn: Tensor,
    /// At `down_proj`'s input: `[6, n_layers, d_mlp]`, f64.
    pub mlp: Tensor,
    /// Complete groups used.
    pub groups: u64,
}

/// Centres per-emotion means over complete groups (`[6, ...]`): each emotion's mean minus the mean over
/// emotions.
pub fn centre(means: &Tensor) -> Tensor {
    let m = means.to_kind(Kind::Double);
    &m - m.mean_dim(0, true, Kind::Double)
}
