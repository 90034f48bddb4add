//! Emotion attention heads (paper section 6.2, spec section 7): the importance of head h at layer L is the
//! drop of the last-token `hook_resid_mid` projection on v_attn[e][L] when head h's slice of `o_proj`'s input
//! is zeroed at every position. Only layer L is read, and zeroing the slice removes exactly
//! W_O[:, h] z_h(last) from the residual there, so the drop is <W_O[:, h] z_h(last), v_attn[e][L]>: one clean
//! forward per sample gives every head of every layer.
use std::fmt::Write as _;
use std::path::Path;

use emo_data::Emotion;
use emo_model::Transformer;
use emo_run::store::write_atomic;
use emo_run::Result;
use tch::{Kind, Tensor};

use crate::neurons::{rank_desc, through_weights};

/// u[e][L] = W_O_L^T v[e][L] for directions `v` ([6, n_layers, d_model], the attention site's):
/// [6, n_layers, n_heads * d_head] f32 on the CPU. Head h's importance is its slice of u dotted with its z.
pub fn readout(model: &Transformer, v: &Tensor) -> Result<Tensor> {
    through_weights(model, v, "o_proj", Transformer::w_o)
}

/// Head importances `[n, n_layers, n_heads]` from last-token `attn.hook_z` `z` (`[n, n_layers, n_heads,
/// d_head]`) and each sample's readout `u` (`[n, n_layers, n_heads * d_head]`), in f64.
pub fn importance(z: &Tensor, u: &Tensor) -> Tensor {
    let s = z.size();
    let u = u.view([s[0], s[1], s[2], s[3]]);
    (z.to_kind(Kind::Double) * u.to_kind(Kind::Double)).sum_dim_intlist(-1, false, Kind::Double)
}

/// Per emotion, layer and head: mean and standard deviation of the importance over the samples of that
/// emotion (`[6, n_layers, n_heads]`, f64), samples per emotion, and the mean baseline projection
/// (`[6, n_layers]`).
#[derive(Debug)]
pub struct HeadStats {
    /// Mean importance.
    pub mean: Tensor,
    /// Sample standard deviation of the importance (0 with fewer than two samples).
    pub std: Tensor,
    /// Samples per emotion.
    pub samples: [u64; 6],
    /// Mean of the clean projection of `hook_resid_mid` (last token) on v_attn.
    pub baseline_mean: Tensor,
}

impl HeadStats {
    /// Heads of `layer` ranked for `emotion` by mean importance, descending (ties by index).
    pub fn ranking(&self, emotion: Emotion, layer: usize) -> Vec<usize> {
        rank_desc(&self.mean.get(emotion.index() as i64).get(layer as i64))
    }

    /// The authors' CSV for one emotion: `layer,head,mean_importance,std_importance,samples,baseline_mean`,
    /// heads of each layer in rank order.
    pub fn csv(&self, emotion: Emotion) -> Result<String> {
        let e = emotion.index() as i64;
        let (mean, std, base) = (self.mean.get(e), self.std.get(e), Vec::<f64>::try_from(self.baseline_mean.get(e).to_kind(Kind::Double))?);
        let mut out = String::from("layer,head,mean_importance,std_importance,samples,baseline_mean\n");
        for (l, b) in base.iter().enumerate() {
            let m = Vec::<f64>::try_from(mean.get(l as i64).to_kind(Kind::Double))?;
            let s = Vec::<f64>::try_from(std.get(l as i64).to_kind(Kind::Double))?;
            for h in self.ranking(emotion, l) {
                let _ = writeln!(out, "{l},{h},{},{},{},{b}", m[h], s[h], self.samples[e as usize]);
            }
        }
        Ok(out)
    }

    /// Writes [`HeadStats::csv`] to `path`, atomically.
    pub fn write_csv(&self, emotion: Emotion, path: &Path) -> Result<()> {
        write_atomic(path, self.csv(emotion)?.as_bytes())
    }
}
