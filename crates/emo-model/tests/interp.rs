//! The researcher's entry points on the real default model: `run_with_cache` and its analyses agree with
//! the model's own computation, every hook point reads without changing the output, the new points are
//! editable, and gradients agree with finite differences. (Values against Hugging Face: tests/hf_hooks.rs.)
mod common;

use emo_model::{ChatMessage, Edit, HookPoint, HookSet, Intervention, Interventions, Positions};
use tch::{Kind, Tensor};

const TEXTS: [&str; 2] = ["The meeting moved to Friday.", "My sister called me this morning with wonderful news about her new job."];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max()).unwrap()
}

/// The largest difference relative to the largest magnitude of `b` (SmolLM2's residual reaches ~4e3).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_diff(a, b) / f64::try_from(b.abs().max()).unwrap().max(1e-12)
}

#[test]
fn text_conversations_and_ids_run_as_their_tokens() {
    let m = common::smollm2();
    let ids = m.to_tokens(TEXTS[0]).unwrap();
    assert_eq!(ids, vec![m.tokenizer.encode(TEXTS[0], true).unwrap()]);
    let conv = vec![ChatMessage::user(TEXTS[0])];
    assert_eq!(m.to_tokens(conv.clone()).unwrap(), vec![m.encode_chat(&conv).unwrap()]);
    let from_text = m.run_with_hooks(TEXTS[0], &mut HookSet::new()).unwrap();
    let from_ids = m.run_with_hooks(ids[0].clone(), &mut HookSet::new()).unwrap();
    assert_eq!(from_text.size(), [1, ids[0].len() as i64, m.transformer.config().vocab_size as i64]);
    assert_eq!(max_diff(&from_text, &from_ids), 0.0);
}

/// Reading every point (which switches attention to the explicit pattern and computes per-head results
/// and norm scales) leaves the logits as they were, and a padded batch gives each row what it gives alone.
#[test]
fn caching_every_point_leaves_logits_alone_and_padding_changes_nothing() {
    let m = common::smollm2();
    let plain = m.run_with_hooks(TEXTS, &mut HookSet::new()).unwrap();
    let (logits, cache) = m.run_with_cache(TEXTS, |_| true).unwrap();
    let n_layers = m.transformer.config().n_layers;
    assert_eq!(cache.len(), HookPoint::all(n_layers).len());
    let mask = cache.mask();
    let real = mask.unsqueeze(-1);
    assert!(max_diff(&(logits.shallow_clone() * &real), &(plain * &real)) < 1e-3);
    // Row 0 is padded on the left; alone it is not.
    let (alone_logits, alone) = m.run_with_cache(TEXTS[0], |_| true).unwrap();
    let n = alone_logits.size()[1];
    let t = logits.size()[1];
    assert!(max_diff(&logits.get(0).narrow(0, t - n, n), &alone_logits.get(0)) < 1e-3);
    for p in [HookPoint::ResidPost(7), HookPoint::AttnRotK(3), HookPoint::MlpPreLinear(9), HookPoint::Ln2Scale(4)] {
        let got = cache.get(p).unwrap().get(0).narrow(0, t - n, n);
        assert!(max_diff(&got, &alone.get(p).unwrap().get(0)) < 1e-3, "{p}");
    }
    let pattern = cache.get(HookPoint::AttnPattern(2)).unwrap().get(0).narrow(1, t - n, n).narrow(2, t - n, n);
    assert!(max_diff(&pattern, &alone.get(HookPoint::AttnPattern(2)).unwrap().get(0)) < 1e-5);
}

#[test]
fn the_cache_is_indexed_as_transformer_lens_indexes_it() {
    let m = common::smollm2();
    let (_, cache) = m.run_with_cache(TEXTS[0], |p| p.layer().is_none_or(|l| l >= 28)).unwrap();
    let last = cache.get(HookPoint::ResidPost(29)).unwrap();
    assert_eq!(max_diff(cache.by_name("blocks.29.hook_resid_post").unwrap(), last), 0.0);
    assert_eq!(max_diff(cache.at("resid_post", -1).unwrap(), last), 0.0);
    assert_eq!(max_diff(cache.at("z", 28).unwrap(), cache.get(HookPoint::AttnZ(28)).unwrap()), 0.0);
    assert_eq!(max_diff(cache.at("ln1.scale", -2).unwrap(), cache.get(HookPoint::Ln1Scale(28)).unwrap()), 0.0);
    let ambiguous = cache.at("scale", -1).unwrap_err().to_string();
    assert!(ambiguous.contains("ln1.scale") && ambiguous.contains("ln2.scale"), "{ambiguous}");
    let missing = cache.at("resid_post", 3).unwrap_err().to_string();
    assert!(missing.contains("blocks.3.hook_resid_post"), "{missing}");
    assert!(cache.at("resid_post", -31).is_err());
    let arr = cache.to_ndarray(HookPoint::ResidPost(29)).unwrap();
    assert_eq!(arr.shape(), &last.size().iter().map(|&d| d as usize).collect::<Vec<_>>()[..]);
    assert_eq!(arr[[0, 2, 5]], f32::try_from(last.get(0).get(2).get(5)).unwrap());
    // A capture converts too: the last token's row of the same point.
    let mut cap = emo_model::Capture::new([HookPoint::ResidPost(29)], Positions::LastPrompt);
    let _ = m.run_with_hooks(TEXTS[0], &mut HookSet::new().with(&mut cap)).unwrap();
    let row = cap.get(HookPoint::ResidPost(29)).unwrap().to_ndarray().unwrap();
    let t = last.size()[1] as usize;
    assert_eq!(row.shape(), &[1, 576]);
    assert_eq!(row[[0, 5]], f32::try_from(cap.get(HookPoint::ResidPost(29)).unwrap().values.get(0).get(5)).unwrap());
    // The cache's forward hooked the pattern of layers 28-29 (explicit attention there): equal to rounding.
    assert!((row[[0, 5]] - arr[[0, t - 1, 5]]).abs() < 1e-3);
}

/// TransformerLens' identities: per-head results sum to the attention output, the residual decomposes into
/// its parts, the pattern's rows sum to one, the final norm scale recomposes the normalized residual, and
/// the logit lens' last component is the model's own logits.
#[test]
fn cache_analyses_recompose_the_forward_pass() {
    let m = common::smollm2();
    let (logits, cache) = m.run_with_cache(TEXTS, |_| true).unwrap();
    let real = cache.mask().unsqueeze(-1);
    let at = |p: HookPoint| cache.get(p).unwrap().shallow_clone();
    let heads = at(HookPoint::AttnResult(6)).sum_dim_intlist(2, false, Kind::Float);
    assert!(max_diff(&heads, &at(HookPoint::AttnOut(6))) < 1e-4);
    let rows = at(HookPoint::AttnPattern(6)).sum_dim_intlist(-1, false, Kind::Float);
    assert!(max_diff(&rows, &rows.ones_like()) < 1e-5);

    let (parts, labels) = cache.decompose_resid(None).unwrap();
    assert_eq!(labels.len(), 1 + 2 * 30);
    assert_eq!(labels[1], "0_attn_out");
    let total = parts.sum_dim_intlist(0, false, Kind::Float);
    assert!(rel_diff(&(total * &real), &(at(HookPoint::ResidPost(29)) * &real)) < 1e-5);

    let (acc, labels) = cache.accumulated_resid(None, true).unwrap();
    assert_eq!(labels.first().map(String::as_str), Some("0_pre"));
    assert_eq!(labels.last().map(String::as_str), Some("final_post"));
    assert_eq!(acc.size()[0], 2 * 30 + 1);
    // Scaled parts sum to the normalized residual (weight not applied, as in TransformerLens).
    let scaled = cache.apply_ln_to_stack(&parts, None).unwrap().sum_dim_intlist(0, false, Kind::Float);
    let normalized = at(HookPoint::LnFinal) / m.transformer.final_norm(&Tensor::ones([576], (Kind::Float, tch::Device::Cpu)));
    assert!(rel_diff(&(scaled * &real), &(normalized * &real)) < 1e-5);

    let (lens, labels) = cache.logit_lens(&m.transformer, -1, false).unwrap();
    assert_eq!(lens.size(), [31, 2, 49152]);
    assert_eq!(labels.len(), 31);
    assert!(max_diff(&lens.get(30), &logits.select(1, -1)) < 1e-3);
}

/// The new points are editable: zeroing a query head, a key head, or one attention pattern row each changes
/// the output, only from the edited position on.
#[test]
fn new_points_are_editable_at_chosen_positions() {
    let m = common::smollm2();
    let ids = m.to_tokens(TEXTS[1]).unwrap();
    let p = 6;
    for point in [HookPoint::AttnQ(3), HookPoint::AttnRotK(3), HookPoint::AttnPattern(3), HookPoint::MlpPre(3), HookPoint::Ln1Scale(3)] {
        // Against a read of the same point: hooking the pattern switches that layer to explicit attention.
        let base = m.run_with_hooks(ids.clone(), &mut HookSet::new().on(point, |_, _| Ok(None))).unwrap();
        let edit = if point == HookPoint::Ln1Scale(3) { Edit::ScaleUnits(vec![0], 2.0) } else { Edit::Zero(vec![0, 1, 2]) };
        let mut hook = Interventions::all_rows(Intervention::none().with(point, edit), Positions::Range(p, p + 1));
        let out = m.run_with_hooks(ids.clone(), &mut HookSet::new().with(&mut hook)).unwrap();
        assert_eq!(max_diff(&out.narrow(1, 0, p), &base.narrow(1, 0, p)), 0.0, "{point} changed earlier positions");
        assert!(max_diff(&out.narrow(1, p, 1), &base.narrow(1, p, 1)) > 1e-3, "{point} changed nothing");
    }
}

/// The gradient of a logit with respect to `blocks.5.hook_resid_post` agrees with a central finite
/// difference along a random direction at one position, and the gradient reaches a steering vector added by
/// an intervention.
#[test]
fn gradients_agree_with_finite_differences() {
    let m = common::smollm2();
    let ids = m.to_tokens(TEXTS[0]).unwrap();
    let n = ids[0].len() as i64;
    let point = HookPoint::ResidPost(5);
    let target = m.tokenizer.encode(" Monday", false).unwrap()[0] as i64;
    let metric_of = |logits: &Tensor| logits.get(0).get(n - 1).get(target);
    let (logits, cache) = m.run_with_cache_grad(ids.clone(), |p| p == point, &mut HookSet::new()).unwrap();
    let grads = cache.gradients(&metric_of(&logits)).unwrap();
    let g = grads.get(point).unwrap();
    assert_eq!(g.size(), cache.get(point).unwrap().size());
    tch::manual_seed(7);
    let pos = 3;
    let u = Tensor::randn([576], (Kind::Float, tch::Device::Cpu));
    let u = &u / u.norm();
    let predicted = f64::try_from((g.get(0).get(pos) * &u).sum(Kind::Float)).unwrap();
    let eps = 0.05;
    let shifted = |sign: f64| {
        let mut add = Interventions::all_rows(Intervention::add(point, &u * (sign * eps)), Positions::Range(pos, pos + 1));
        let out = m.run_with_hooks(ids.clone(), &mut HookSet::new().with(&mut add)).unwrap();
        f64::try_from(metric_of(&out)).unwrap()
    };
    let measured = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
    assert!(predicted.abs() > 1e-3, "a vanishing gradient proves nothing: {predicted}");
    assert!((predicted - measured).abs() <= 0.02 * measured.abs().max(1e-2), "gradient {predicted} vs finite difference {measured}");
    // Earlier positions feed the last one through attention, so they get gradient too.
    assert!(f64::try_from(g.get(0).narrow(0, 0, n - 1).abs().sum(Kind::Float)).unwrap() > 0.0);

    // Through an intervention: d metric / d v for `h += v` at every position equals the summed gradient.
    let v = Tensor::zeros([576], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let mut add = Interventions::all_rows(Intervention::add(point, v.shallow_clone()), Positions::All);
    let (logits, _) = m.run_with_cache_grad(ids, |_| false, &mut HookSet::new().with(&mut add)).unwrap();
    let dv = Tensor::run_backward(&[metric_of(&logits)], &[&v], false, false).remove(0);
    let expected = g.get(0).sum_dim_intlist(0, false, Kind::Float);
    assert!(max_diff(&dv, &expected) < 1e-3 * (1.0 + f64::try_from(expected.abs().max()).unwrap()));
    assert!(cache.gradients(&Tensor::from(1.0f32)).is_err(), "a metric outside the graph is an error");
}
