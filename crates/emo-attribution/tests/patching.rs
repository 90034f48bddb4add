//! Attribution patching on the real default model (SmolLM2-135M, f32, CPU): its per-unit estimates of the
//! sweep metric's drop under zero-ablation at the last prompt token agree with the drops measured by running
//! each ablation, for neurons and heads, and its top units are the ones whose ablation matters.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use emo_attribution::patching::{agreement, scores};
use emo_data::Emotion;
use emo_model::{Edit, HookPoint, HookSet, Input, Intervention, Interventions, Positions};
use tch::{Kind, Tensor};

/// Unit directions per layer, [L, d], from a fixed seed.
fn directions(layers: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let v = Tensor::randn([layers, d], (Kind::Float, tch::Device::Cpu));
    &v / v.norm_scalaropt_dim(2, [-1], true)
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let (sx, sy) = (x.iter().map(|a| (a - mx).powi(2)).sum::<f64>().sqrt(), y.iter().map(|b| (b - my).powi(2)).sum::<f64>().sqrt());
    cov / (sx * sy)
}

#[test]
fn attribution_patching_estimates_the_measured_ablation_drops() {
    let m = common::smollm2();
    let cfg = m.transformer.config();
    let (l, d) = (cfg.n_layers as i64, cfg.d_model as i64);
    let prompt = m.encode_chat(&common::conversations()[0]).unwrap();
    let v = directions(l, d, 11);
    let (neurons, heads) = scores(m, std::slice::from_ref(&prompt), &v.unsqueeze(0), &v.unsqueeze(0)).unwrap();
    assert_eq!(neurons.size(), [1, l, cfg.d_mlp as i64]);
    assert_eq!(heads.size(), [1, l, cfg.n_heads as i64]);

    // Measured: each single-unit ablation at the last prompt token, one batch row per unit, as a sweep runs it.
    let measure = |units: &[(HookPoint, i64)], site: fn(usize) -> HookPoint| -> Vec<f64> {
        let base = metric(std::slice::from_ref(&prompt), site, &v, &mut Interventions::new(vec![Intervention::none()], Positions::LastPrompt))[0];
        let rows: Vec<Intervention> = units.iter().map(|&(p, u)| Intervention::none().with(p, Edit::Zero(vec![u]))).collect();
        let mut edits = Interventions::new(rows, Positions::LastPrompt);
        let batch = vec![prompt.clone(); units.len()];
        let s = metric(&batch, site, &v, &mut edits);
        s.into_iter().map(|x| x - base).collect()
    };

    // Neurons of layer 12: the 12 with the largest estimated effect and 12 others.
    let layer = 12usize;
    let est = neurons.get(0).get(layer as i64);
    let order = emo_attribution::neurons::rank_desc(&est.abs());
    let chosen: Vec<i64> = order[..12].iter().chain(order[500..512].iter()).map(|&u| u as i64).collect();
    let measured = measure(&chosen.iter().map(|&u| (HookPoint::MlpPost(layer), u)).collect::<Vec<_>>(), HookPoint::ResidPost);
    // The estimate of the drop is -score (zeroing removes what the unit carries).
    let predicted: Vec<f64> = chosen.iter().map(|&u| -f64::try_from(est.get(u)).unwrap()).collect();
    let r = pearson(&predicted, &measured);
    eprintln!("neurons of layer {layer}: Pearson r(estimate, measured) = {r:.4}");
    assert!(r > 0.95, "estimated {predicted:?}\nmeasured {measured:?}");
    let top: f64 = measured[..12].iter().map(|x| x.abs()).sum::<f64>();
    let rest: f64 = measured[12..].iter().map(|x| x.abs()).sum::<f64>();
    assert!(top > 5.0 * rest, "the top units' measured effects ({top}) should dwarf the others' ({rest})");

    // Every head of three layers.
    let mut units = Vec::new();
    for layer in [3usize, 12, 20] {
        units.extend((0..cfg.n_heads as i64).map(|h| (HookPoint::AttnZ(layer), h)));
    }
    let measured = measure(&units, HookPoint::ResidMid);
    let predicted: Vec<f64> = units.iter().map(|&(p, h)| -f64::try_from(heads.get(0).get(p.layer().unwrap() as i64).get(h)).unwrap()).collect();
    let r = pearson(&predicted, &measured);
    eprintln!("heads of layers 3, 12, 20: Pearson r(estimate, measured) = {r:.4}");
    assert!(r > 0.9, "estimated {predicted:?}\nmeasured {measured:?}");
}

/// The sweeps' metric for each row of `batch` under `edits`: the sum over layers of the last-token residual at
/// `site(l)` projected on v[l].
fn metric(batch: &[Vec<u32>], site: fn(usize) -> HookPoint, v: &Tensor, edits: &mut Interventions) -> Vec<f64> {
    let m = common::smollm2();
    let n_layers = m.transformer.config().n_layers;
    let keep = |p: HookPoint| (0..n_layers).any(|l| p == site(l));
    let (_, cache) = m.run_with_cache_and_hooks(Input::Ids(batch.to_vec()), keep, &mut HookSet::new().with(edits)).unwrap();
    let h: Vec<Tensor> = (0..n_layers).map(|l| cache.get(site(l)).unwrap().select(1, -1)).collect();
    let s = (Tensor::stack(&h, 1) * v.unsqueeze(0)).sum_dim_intlist([1, 2].as_slice(), false, Kind::Double);
    Vec::<f64>::try_from(s).unwrap()
}

#[test]
fn agreement_of_a_ranking_with_itself_is_perfect_and_with_its_reverse_is_not() {
    let a = Tensor::randn([6, 2, 50], (Kind::Float, tch::Device::Cpu));
    let same = agreement(&a, &a, 5, &Emotion::ALL);
    assert!((same.spearman - 1.0).abs() < 1e-12 && (same.top_k_overlap - 1.0).abs() < 1e-12);
    let reversed = agreement(&a, &(-&a), 5, &Emotion::ALL);
    assert!((reversed.spearman + 1.0).abs() < 1e-12 && reversed.top_k_overlap == 0.0);
}
