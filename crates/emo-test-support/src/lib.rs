//! What the workspace's integration tests share, written once: the largest difference of two tensors, a
//! judge that accepts every reply, and circuit fixtures. A dev-dependency only (never published).
#![warn(missing_docs)]

use emo_data::{DataError, Emotion, Judge, Verdict};
use emo_modulate::circuit::{Circuit, CircuitLayer, LayerHeads, LayerNeurons, PerKind};
use tch::{Kind, Tensor};

/// The largest absolute difference of two tensors, in f64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max()).expect("a scalar")
}

/// Says "match" for every reply: run mechanics do not depend on what a judge decides, and it makes every
/// group complete so that the paper's filter has something to keep.
pub struct Yes;

impl Judge for Yes {
    fn name(&self) -> String {
        "yes".into()
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        Ok(items.iter().map(|_| Verdict::decided(true, 1.0)).collect())
    }
}

/// A circuit of `emotion` with the neurons and heads of each layer in turn (`layers[i]` for layer i), in
/// the authors' JSON layout with the paper's ratio settings and the given budget totals.
pub fn circuit(emotion: Emotion, k_total: usize, k_alloc: PerKind, min_per_layer: PerKind, layers: Vec<(Vec<usize>, Vec<usize>)>) -> Circuit {
    Circuit {
        emotion,
        k_total,
        ratio_mode: "fixed".into(),
        ratio_fixed: 0.7,
        k_alloc,
        min_per_layer,
        cap_ratio: 0.4,
        summary: serde_json::json!({}),
        layers: layers
            .into_iter()
            .enumerate()
            .map(|(layer, (neurons, heads))| CircuitLayer {
                layer,
                mlp: LayerNeurons { k: neurons.len(), neurons },
                attention: LayerHeads { k: heads.len(), heads },
            })
            .collect(),
    }
}
