//! The authors' circuit budget rule (spec section 8), as a pure function of the per-sublayer importances and
//! the model's shape, so that it can be checked on its own against their published circuits.
//!
//! Per kind (MLP neurons, attention heads): K_kind of K_total (0.7 / 0.3), a minimum per layer, weights
//! w = clip(I, 0) normalised to sum 1, K_rem = K_kind - L * min handed out as floor(w * K_rem) capped at
//! floor(cap_ratio * K_kind), the remainder one unit at a time in descending order of the fractional parts
//! (ties by layer index), skipping layers at the cap; then min is added back and layers with fewer units
//! than their k give the excess to the others (backfill). Everything is computed in f64 in a fixed order:
//! a 1e-4 relative change in one importance can move a unit.
use emo_modulate::Shape;
use emo_run::{Result, RunError};
use serde::{Deserialize, Serialize};

/// The budget settings (the paper's by [`Budget::paper`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Units in the whole circuit (the paper: 10 per sublayer).
    pub k_total: usize,
    /// Share of neurons (the paper: 0.7; heads get the rest).
    pub mlp_share: f64,
    /// Neurons every layer gets at least (the paper: 4).
    pub min_neurons: usize,
    /// Heads every layer gets at least (the paper: 2).
    pub min_heads: usize,
    /// Cap on what one layer gets above its minimum, as a share of its kind's budget (the paper: 0.4).
    pub cap_ratio: f64,
}

impl Budget {
    /// The paper's settings for a model of `n_layers` layers: K_total = 10 x 2 x n_layers.
    pub fn paper(n_layers: usize) -> Budget {
        Budget { k_total: 10 * 2 * n_layers, mlp_share: 0.7, min_neurons: 4, min_heads: 2, cap_ratio: 0.4 }
    }

    /// The paper's settings fitted to `shape`: where a layer has fewer units of a kind than the paper's
    /// share of the budget gives it (a model with fewer than 6 heads a layer, such as Gemma 3 270M's 4), that
    /// kind gets every unit the model has and the minimum per layer shrinks to what a layer holds; the other
    /// kind keeps its paper budget. Unchanged for every model the paper's rule fits.
    pub fn paper_for(shape: Shape) -> Budget {
        let paper = Budget::paper(shape.n_layers);
        let (k_mlp, k_attn) = paper.split();
        let k_mlp = k_mlp.min(shape.d_mlp * shape.n_layers);
        let k_attn = k_attn.min(shape.n_heads * shape.n_layers);
        if (k_mlp, k_attn) == paper.split() {
            return paper;
        }
        let k_total = k_mlp + k_attn;
        Budget {
            k_total,
            mlp_share: if k_total == 0 { paper.mlp_share } else { k_mlp as f64 / k_total as f64 },
            min_neurons: paper.min_neurons.min(shape.d_mlp),
            min_heads: paper.min_heads.min(shape.n_heads),
            ..paper
        }
    }

    /// (K_mlp, K_attn): K_mlp = round(share x K_total), heads the rest.
    pub fn split(&self) -> (usize, usize) {
        let mlp = (self.mlp_share * self.k_total as f64).round() as usize;
        (mlp.min(self.k_total), self.k_total - mlp.min(self.k_total))
    }
}

/// Units per layer of one emotion's circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Neurons per layer.
    pub mlp_k: Vec<usize>,
    /// Heads per layer.
    pub attn_k: Vec<usize>,
}

/// The allocation for one emotion from its per-layer importances (the alpha-mean I, before any
/// normalisation) of the attention and MLP sublayers.
pub fn allocate(attn_importance: &[f64], mlp_importance: &[f64], shape: Shape, budget: &Budget) -> Result<Allocation> {
    let l = shape.n_layers;
    if attn_importance.len() != l || mlp_importance.len() != l {
        return Err(RunError::Invalid(format!(
            "importances for {} attention and {} MLP sublayers, the model has {l} layers",
            attn_importance.len(),
            mlp_importance.len()
        )));
    }
    if let Some(x) = attn_importance.iter().chain(mlp_importance).find(|x| !x.is_finite()) {
        return Err(RunError::Invalid(format!("importance {x} is not a finite number")));
    }
    if !(0.0..=1.0).contains(&budget.mlp_share) || !(0.0..=1.0).contains(&budget.cap_ratio) {
        return Err(RunError::Invalid(format!("mlp share {} and cap ratio {} must lie in [0, 1]", budget.mlp_share, budget.cap_ratio)));
    }
    let (k_mlp, k_attn) = budget.split();
    Ok(Allocation {
        mlp_k: allocate_kind("neurons", mlp_importance, k_mlp, budget.min_neurons, budget.cap_ratio, shape.d_mlp)?,
        attn_k: allocate_kind("heads", attn_importance, k_attn, budget.min_heads, budget.cap_ratio, shape.n_heads)?,
    })
}

/// One kind's k per layer: `total` units over the layers of `importance`, at least `min` and at most
/// `capacity` per layer.
pub fn allocate_kind(what: &str, importance: &[f64], total: usize, min: usize, cap_ratio: f64, capacity: usize) -> Result<Vec<usize>> {
    let l = importance.len();
    if l == 0 {
        return Err(RunError::Invalid(format!("no layers to allocate {what} to")));
    }
    if min * l > total {
        return Err(RunError::Invalid(format!("a budget of {total} {what} cannot give {min} to each of {l} layers")));
    }
    if total > capacity * l {
        return Err(RunError::Invalid(format!("a budget of {total} {what} is more than the model's {} ({capacity} per layer)", capacity * l)));
    }
    let clipped: Vec<f64> = importance.iter().map(|&x| x.max(0.0)).collect();
    // Summed in layer order, so the result does not depend on anything but the values.
    let sum: f64 = clipped.iter().sum();
    // With no positive importance the weights are uniform (the authors' code would divide by zero).
    let w: Vec<f64> = if sum > 0.0 { clipped.iter().map(|x| x / sum).collect() } else { vec![1.0 / l as f64; l] };
    let rem = total - min * l;
    let cap = (cap_ratio * total as f64).floor() as usize;
    let raw: Vec<f64> = w.iter().map(|w| w * rem as f64).collect();
    let mut extra: Vec<usize> = raw.iter().map(|r| (r.floor() as usize).min(cap)).collect();
    // Descending fractional part; `sort_by` is stable, so ties keep layer order.
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &b| (raw[b] - raw[b].floor()).total_cmp(&(raw[a] - raw[a].floor())));
    let floors: usize = extra.iter().sum();
    let left = hand_out(&mut extra, &order, rem - floors, cap);
    let mut k: Vec<usize> = extra.iter().map(|e| e + min).collect();
    // Backfill: units a layer cannot hold (and any remainder the cap left) go to layers with room, largest
    // weight first (ties by layer index), one at a time.
    let spill: usize = left + k.iter().map(|&k| k.saturating_sub(capacity)).sum::<usize>();
    for k in &mut k {
        *k = (*k).min(capacity);
    }
    let mut by_weight: Vec<usize> = (0..l).collect();
    by_weight.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    hand_out(&mut k, &by_weight, spill, capacity);
    debug_assert_eq!(k.iter().sum::<usize>(), total);
    Ok(k)
}

/// Gives `left` units one at a time to the layers in `order`, round after round, skipping layers at
/// `limit`; returns what no layer could take.
fn hand_out(k: &mut [usize], order: &[usize], mut left: usize, limit: usize) -> usize {
    while left > 0 {
        let before = left;
        for &i in order {
            if left == 0 {
                break;
            }
            if k[i] < limit {
                k[i] += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_budget_fits_a_model_with_few_heads() {
        // 28 layers of 14 heads: the paper's own budget, untouched.
        let big = Shape { n_layers: 28, n_heads: 14, d_mlp: 4864 };
        assert_eq!(Budget::paper_for(big), Budget::paper(28));
        // Gemma 3 270M: 18 layers of 4 heads hold 72 heads, fewer than the paper's 6 x 18 = 108.
        let small = Shape { n_layers: 18, n_heads: 4, d_mlp: 2048 };
        let b = Budget::paper_for(small);
        assert_eq!(b.split(), (252, 72));
        let a = allocate(&[1.0; 18], &[1.0; 18], small, &b).unwrap();
        assert!(a.attn_k.iter().all(|&k| k == 4), "{:?}", a.attn_k);
        assert_eq!(a.mlp_k.iter().sum::<usize>(), 252);
        // One head a layer: the minimum shrinks with it.
        let one = Budget::paper_for(Shape { n_layers: 3, n_heads: 1, d_mlp: 64 });
        assert_eq!((one.min_heads, one.split()), (1, (42, 3)));
    }

    #[test]
    fn paper_budget_splits_560_into_392_and_168() {
        let b = Budget::paper(28);
        assert_eq!(b.k_total, 560);
        assert_eq!(b.split(), (392, 168));
    }

    #[test]
    fn floors_then_largest_remainders_with_ties_by_layer() {
        // 3 layers, min 1, 10 units: K_rem = 7; w = (0.5, 0.25, 0.25): raw 3.5, 1.75, 1.75 -> floors 3, 1, 1,
        // two left: fractions .5, .75, .75 -> layers 1 and 2 (tie kept in layer order) get one each.
        let k = allocate_kind("neurons", &[2.0, 1.0, 1.0], 10, 1, 1.0, 100).unwrap();
        assert_eq!(k, vec![4, 3, 3]);
        // Negative importance counts as zero.
        let k = allocate_kind("neurons", &[-5.0, 1.0, 1.0], 9, 1, 1.0, 100).unwrap();
        assert_eq!(k, vec![1, 4, 4]);
        // A tie in the fractions goes to the earlier layer.
        let k = allocate_kind("neurons", &[1.0, 1.0], 5, 0, 1.0, 100).unwrap();
        assert_eq!(k, vec![3, 2]);
    }

    #[test]
    fn cap_limits_the_part_above_the_minimum() {
        // 4 layers, min 2, total 20: K_rem = 12, cap = floor(0.4 * 20) = 8. All weight on layer 0: raw 12 ->
        // 8 (cap); the 4 left go out by fractional part (all 0, so layer order), skipping layer 0 at the cap.
        let k = allocate_kind("heads", &[1.0, 0.0, 0.0, 0.0], 20, 2, 0.4, 100).unwrap();
        assert_eq!(k, vec![10, 4, 3, 3]);
    }

    #[test]
    fn backfills_layers_with_too_few_units() {
        // Capacity 5 heads per layer: layer 0 would get 2 + 8 = 10; 5 spill to the others by weight.
        let k = allocate_kind("heads", &[1.0, 0.5, 0.0, 0.0], 20, 2, 0.4, 5).unwrap();
        assert_eq!(k.iter().sum::<usize>(), 20);
        assert!(k.iter().all(|&k| k <= 5), "{k:?}");
        assert_eq!(k[0], 5);
    }

    #[test]
    fn uniform_without_positive_importance_and_errors_name_the_problem() {
        assert_eq!(allocate_kind("neurons", &[-1.0, -2.0], 4, 0, 1.0, 10).unwrap(), vec![2, 2]);
        let e = allocate_kind("heads", &[1.0; 4], 6, 2, 0.4, 10).unwrap_err().to_string();
        assert!(e.contains("cannot give 2 to each of 4 layers"), "{e}");
        let e = allocate_kind("heads", &[1.0; 2], 30, 2, 0.4, 9).unwrap_err().to_string();
        assert!(e.contains("more than the model's 18"), "{e}");
        let shape = Shape { n_layers: 2, n_heads: 4, d_mlp: 64 };
        let e = allocate(&[1.0], &[1.0, 2.0], shape, &Budget::paper(2)).unwrap_err().to_string();
        assert!(e.contains("1 attention and 2 MLP sublayers"), "{e}");
        let e = allocate(&[1.0, f64::NAN], &[1.0, 2.0], shape, &Budget::paper(2)).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
    }

    #[test]
    fn paper_shape_allocation_sums_to_the_budget_with_minimums() {
        // Llama-3.2-3B's shape with a smooth importance profile.
        let shape = Shape { n_layers: 28, n_heads: 24, d_mlp: 8192 };
        let attn: Vec<f64> = (0..28).map(|l| (l as f64 / 5.0).sin().abs() + 0.01 * l as f64).collect();
        let mlp: Vec<f64> = (0..28).map(|l| if l % 7 == 0 { -0.2 } else { 1.0 / (1.0 + l as f64) }).collect();
        let a = allocate(&attn, &mlp, shape, &Budget::paper(28)).unwrap();
        assert_eq!(a.mlp_k.iter().sum::<usize>(), 392);
        assert_eq!(a.attn_k.iter().sum::<usize>(), 168);
        assert!(a.mlp_k.iter().all(|&k| k >= 4) && a.attn_k.iter().all(|&k| (2..=24).contains(&k)));
        // Layers with negative importance keep exactly the minimum.
        for l in (0..28).step_by(7) {
            assert_eq!(a.mlp_k[l], 4);
        }
    }
}
