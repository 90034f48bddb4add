//! Emotion neurons (paper section 6.1, spec section 7): how much each MLP neuron's write vector pushes the
//! residual stream along the layer's MLP-site emotion direction, weighted by how strongly the neuron fires at
//! the last prompt token.
use std::fmt::Write as _;
use std::path::Path;

use emo_data::Emotion;
use emo_model::Transformer;
use emo_run::store::write_atomic;
use emo_run::{Result, RunError};
use tch::{Kind, Tensor};

/// The neuron-space alignment beta[e][L] = W_down_L^T v[e][L] for directions `v` ([6, n_layers, d_model], the
/// MLP site's): [6, n_layers, d_mlp] f32 on the CPU.
pub fn alignment(model: &Transformer, v: &Tensor) -> Result<Tensor> {
    through_weights(model, v, "down_proj", Transformer::w_down)
}

/// `v[:, L] @ W_L` for every layer L, with `W_L` a `[d_model, width]` weight of layer L (`name` for errors):
/// [6, n_layers, width] f32 on the CPU.
pub(crate) fn through_weights(model: &Transformer, v: &Tensor, name: &str, weight: fn(&Transformer, usize) -> Option<Tensor>) -> Result<Tensor> {
    let per_layer = (0..model.config().n_layers)
        .map(|l| {
            let w = weight(model, l).ok_or_else(|| RunError::Invalid(format!("no {name} weight in layer {l}")))?;
            Ok(v.select(1, l as i64).to_device(w.device()).to_kind(Kind::Float).matmul(&w.to_kind(Kind::Float)).to_device(tch::Device::Cpu))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&per_layer, 1))
}

/// Per emotion, layer and neuron (each `[6, n_layers, d_mlp]`, f64): the mean contribution c = a * beta over
/// the samples of that emotion, its positive and negative parts (C_pos = mean of max(c, 0), C_neg = mean of
/// min(c, 0), so C_mean = C_pos + C_neg), beta, and the mean gated activation (H_mean).
#[derive(Debug)]
pub struct NeuronStats {
    /// Mean contribution.
    pub c_mean: Tensor,
    /// Mean positive part of the contribution.
    pub c_pos: Tensor,
    /// Mean negative part of the contribution.
    pub c_neg: Tensor,
    /// The alignment W_down^T v.
    pub beta: Tensor,
    /// Mean gated activation at the last prompt token.
    pub h_mean: Tensor,
    /// Samples per emotion.
    pub samples: [u64; 6],
}

impl NeuronStats {
    /// Neurons of `layer` ranked for `emotion` by mean contribution, signed, descending (ties by index).
    pub fn ranking(&self, emotion: Emotion, layer: usize) -> Vec<usize> {
        rank_desc(&self.c_mean.get(emotion.index() as i64).get(layer as i64))
    }

    /// The authors' CSV for one emotion: `layer,neuron,C_mean,C_pos,C_neg,beta,H_mean`, neurons of each layer in
    /// rank order.
    pub fn csv(&self, emotion: Emotion) -> Result<String> {
        let e = emotion.index() as i64;
        let cols = [&self.c_mean, &self.c_pos, &self.c_neg, &self.beta, &self.h_mean].map(|t| t.get(e).to_kind(Kind::Double));
        let n_layers = cols[0].size()[0] as usize;
        let mut out = String::from("layer,neuron,C_mean,C_pos,C_neg,beta,H_mean\n");
        for l in 0..n_layers {
            let rows: Vec<Vec<f64>> = cols.iter().map(|c| Vec::<f64>::try_from(c.get(l as i64))).collect::<std::result::Result<_, _>>()?;
            for j in self.ranking(emotion, l) {
                let _ = writeln!(out, "{l},{j},{},{},{},{},{}", rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j]);
            }
        }
        Ok(out)
    }

    /// Writes [`NeuronStats::csv`] to `path`, atomically.
    pub fn write_csv(&self, emotion: Emotion, path: &Path) -> Result<()> {
        write_atomic(path, self.csv(emotion)?.as_bytes())
    }
}

/// Indices of a 1-D tensor by value, descending, ties by index (a stable, reproducible ranking).
pub fn rank_desc(values: &Tensor) -> Vec<usize> {
    let v: Vec<f64> = Vec::<f64>::try_from(values.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default();
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx
}
