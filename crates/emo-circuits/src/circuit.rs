//! Circuits from a section-6 attribution: every emotion's neurons and heads picked by the authors' budget rule
//! (the circuit files, their loading and modulation are `emo-modulate`'s), and the overlap of emotions'
//! circuits.
use emo_attribution::Attribution;
use emo_data::Emotion;
use emo_modulate::circuit::{Circuit, CircuitLayer, CircuitSet, LayerHeads, LayerNeurons, PerKind, Shape};
use emo_run::Result;
use tch::Kind;

use crate::allocate::{allocate, Allocation, Budget};
use crate::importance::Profile;

/// The circuit an allocation picks: the top-k neurons by mean contribution and the top-k heads by mean
/// importance of every layer, from `attribution`.
pub fn pick_circuit(emotion: Emotion, allocation: &Allocation, attribution: &Attribution, budget: &Budget) -> Circuit {
    let layers: Vec<CircuitLayer> = (0..allocation.mlp_k.len())
        .map(|l| {
            let (kn, kh) = (allocation.mlp_k[l], allocation.attn_k[l]);
            CircuitLayer {
                layer: l,
                mlp: LayerNeurons { k: kn, neurons: attribution.neurons.ranking(emotion, l)[..kn].to_vec() },
                attention: LayerHeads { k: kh, heads: attribution.heads.ranking(emotion, l)[..kh].to_vec() },
            }
        })
        .collect();
    let (mlp, attn) = budget.split();
    Circuit {
        emotion,
        k_total: budget.k_total,
        ratio_mode: "fixed".into(),
        ratio_fixed: budget.mlp_share,
        k_alloc: PerKind { mlp, attn },
        min_per_layer: PerKind { mlp: budget.min_neurons, attn: budget.min_heads },
        cap_ratio: budget.cap_ratio,
        summary: serde_json::json!({
            "neurons": allocation.mlp_k.iter().sum::<usize>(),
            "heads": allocation.attn_k.iter().sum::<usize>(),
            "layers": layers.len(),
        }),
        layers,
    }
}

/// Every emotion's circuit from the sublayer importances and a section-6 attribution (rankings and
/// delta_mu), by the authors' rule.
pub fn assemble(profiles: &[Profile], attribution: &Attribution, shape: Shape, budget: &Budget) -> Result<CircuitSet> {
    let circuits = profiles
        .iter()
        .map(|p| {
            let allocation = allocate(&p.attn, &p.mlp, shape, budget)?;
            Ok(pick_circuit(p.emotion, &allocation, attribution, budget))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CircuitSet {
        circuits,
        delta_mu_attn: attribution.delta_mu.attn.to_kind(Kind::Float),
        delta_mu_mlp: attribution.delta_mu.mlp.to_kind(Kind::Float),
        n_heads: shape.n_heads,
    })
}

/// The Jaccard index of two sorted unit lists.
pub fn jaccard(a: &[(usize, usize)], b: &[(usize, usize)]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        0.0
    } else {
        both as f64 / union as f64
    }
}

/// Mean and sample standard deviation over every pair of circuits of the Jaccard index of their neuron sets
/// and of their head sets: ((mean, std) neurons, (mean, std) heads). The paper: 0.056 +- 0.033 and
/// 0.454 +- 0.047.
pub fn overlap(circuits: &[Circuit]) -> ((f64, f64), (f64, f64)) {
    let sets: Vec<_> = circuits.iter().map(|c| (c.neuron_set(), c.head_set())).collect();
    let (mut n, mut h) = (Vec::new(), Vec::new());
    for i in 0..sets.len() {
        for j in i + 1..sets.len() {
            n.push(jaccard(&sets[i].0, &sets[j].0));
            h.push(jaccard(&sets[i].1, &sets[j].1));
        }
    }
    (mean_std(&n), mean_std(&h))
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let m = x.iter().sum::<f64>() / x.len() as f64;
    let var = if x.len() > 1 { x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_counts_shared_units() {
        assert_eq!(jaccard(&[(0, 1), (1, 2)], &[(0, 1), (2, 3)]), 1.0 / 3.0);
        assert_eq!(jaccard(&[], &[]), 0.0);
        assert_eq!(jaccard(&[(0, 0)], &[(0, 0)]), 1.0);
    }
}
