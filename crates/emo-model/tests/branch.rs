//! Per-row interventions and prefix branching on the real default model: a branched evaluation of a
//! last-token intervention equals a full forward with the same intervention, and one batch of mixed
//! per-row edits equals each edit run on its own.
mod common;

use emo_model::{Capture, Edit, HookContext, HookPoint, HookSet, Intervention, Interventions, LogitsFor, ModelError, Positions, Sublayer};
use tch::{Kind, Tensor};

fn prompts() -> Vec<Vec<u32>> {
    let m = common::smollm2();
    // Three prompts of different lengths (the first two differ by many tokens), so the batch is padded.
    common::conversations().iter().take(4).skip(1).map(|c| m.encode_chat(c).unwrap()).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

fn unit(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let v = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
    &v / v.norm()
}

/// One row per intervention kind the sweeps of sections 6 and 7 branch over, plus a row without one.
fn kinds(layer: usize) -> Vec<Intervention> {
    let cfg = common::smollm2().transformer.config();
    let (d, dm, nh, hd) = (cfg.d_model as i64, cfg.d_mlp as i64, cfg.n_heads as i64, cfg.d_head as i64);
    let neurons = vec![3, 17, 400, 1200];
    let mut enhance = Tensor::zeros([dm], (Kind::Float, tch::Device::Cpu));
    let _ = enhance.index_fill_(0, &Tensor::from_slice(&neurons), 0.5);
    let head_add = Tensor::zeros([nh, hd], (Kind::Float, tch::Device::Cpu));
    head_add.get(2).copy_(&(unit(hd, 1) * 2.0));
    head_add.get(7).copy_(&(unit(hd, 2) * 2.0));
    let sigma = 5.0;
    vec![
        Intervention::none(),
        Intervention::none().with(HookPoint::MlpPost(layer), Edit::Zero(neurons.clone())),
        Intervention::none().with(HookPoint::MlpPost(layer), Edit::Add(enhance)),
        Intervention::none().with(HookPoint::AttnZ(layer), Edit::Add(head_add)),
        Intervention::none().with(Sublayer::attn(layer).output(), Edit::Add(unit(d, 3) * sigma)),
        Intervention::none().with(Sublayer::mlp(layer + 1).output(), Edit::Add(unit(d, 4) * sigma)),
        Intervention::none().with(HookPoint::ResidPost(layer), Edit::AddRms(unit(d, 5), 4.0)),
    ]
}

fn read_points(n_layers: usize, from: usize) -> Vec<HookPoint> {
    (from..n_layers).flat_map(|l| [HookPoint::ResidMid(l), HookPoint::ResidPost(l)]).chain([HookPoint::LnFinal]).collect()
}

/// Branched and full results of the same interventions; `read_from` is the first layer read. Returns the
/// worst difference as a fraction of the tolerance.
fn branched_vs_full(layer: usize, read_from: usize) -> f64 {
    let m = common::smollm2();
    let t = &m.transformer;
    let n = t.config().n_layers;
    let prompts = prompts();
    let per_prompt = kinds(layer);
    // Rows: every kind for every prompt, interleaved across prompts.
    let mut rows = Vec::new();
    let mut which = Vec::new();
    for (k, iv) in per_prompt.iter().enumerate() {
        for p in 0..prompts.len() {
            rows.push(iv.clone());
            which.push((p + k) % prompts.len());
        }
    }
    let points = read_points(n, read_from);

    let mut prefix = t.prefill_prefix(&prompts, m.pad_token_id()).unwrap();
    let mut edits = Interventions::new(rows.clone(), Positions::LastPrompt);
    let mut cap_b = Capture::new(points.iter().copied(), Positions::LastPrompt);
    let logits_b = t.forward_branches(&mut prefix, &which, &mut HookSet::new().with(&mut edits).with(&mut cap_b), LogitsFor::Last).unwrap();

    let full_rows: Vec<Vec<u32>> = which.iter().map(|&p| prompts[p].clone()).collect();
    let mut edits = Interventions::new(rows, Positions::LastPrompt);
    let mut cap_f = Capture::new(points.iter().copied(), Positions::LastPrompt);
    let logits_f = t.forward_rows(&full_rows, m.pad_token_id(), &mut HookSet::new().with(&mut edits).with(&mut cap_f), LogitsFor::Last).unwrap();

    let r = which.len();
    // f32 rounding grows with the magnitude of what is compared (late SmolLM2 residuals reach ~550, where one
    // ulp is 6e-5): 1e-4 absolute, or 2e-6 of the largest value at that point where that is larger.
    let mut worst: f64 = 0.0;
    let mut check = |what: String, b: &Tensor, f: &Tensor| {
        let (d, scale) = (max_diff(b, f), f64::try_from(f.abs().max()).unwrap());
        if std::env::var("BRANCH_DEBUG").is_ok() {
            eprintln!("{what}: {d:.2e} (max |x| {scale:.1})");
        }
        assert!(d <= 1e-4f64.max(2e-6 * scale), "{what}: max abs diff {d} on values up to {scale}");
        worst = worst.max(d / 1e-4f64.max(2e-6 * scale));
    };
    check("logits".into(), &logits_b, &logits_f.squeeze_dim(1));
    for p in points {
        check(p.to_string(), &cap_b.per_row(p, r).unwrap(), &cap_f.per_row(p, r).unwrap());
    }
    let ln_final = max_diff(&cap_b.per_row(HookPoint::LnFinal, r).unwrap(), &cap_f.per_row(HookPoint::LnFinal, r).unwrap());
    assert!(ln_final < 1e-4, "final normed state: {ln_final}");
    // The interventions must have done something, or the comparison proves nothing.
    let last = cap_f.per_row(HookPoint::LnFinal, r).unwrap();
    let kinds_n = per_prompt.len() as i64;
    let plain = last.narrow(0, 0, prompts.len() as i64);
    for k in 1..kinds_n {
        let edited = last.narrow(0, k * prompts.len() as i64, prompts.len() as i64);
        // Same prompts in a rotated order; row i of kind 0 is prompt i un-edited.
        for i in 0..prompts.len() {
            let p = which[(k as usize) * prompts.len() + i];
            let base = plain.get(p as i64);
            assert!(max_diff(&edited.get(i as i64), &base) > 1e-3, "kind {k} changed nothing on prompt {p}");
        }
    }
    worst
}

#[test]
fn branched_interventions_equal_full_forwards() {
    let worst = branched_vs_full(6, 0);
    eprintln!("branched vs full forward, every layer read: worst diff {worst:.2} of the tolerance");
}

#[test]
fn branches_start_at_the_first_hooked_layer_exactly() {
    // Interventions at layer 12 and reads from layer 12 on: the branch chunk skips blocks 0..12 and starts
    // from the clean residual the prefix kept.
    let worst = branched_vs_full(12, 12);
    eprintln!("branched from layer 12 vs full forward: worst diff {worst:.2} of the tolerance");
}

#[test]
fn the_prefix_keeps_the_clean_last_token() {
    let m = common::smollm2();
    let t = &m.transformer;
    let prompts = prompts();
    let prefix = t.prefill_prefix(&prompts, m.pad_token_id()).unwrap();
    let mut cap = Capture::new([HookPoint::ResidMid(4), HookPoint::LnFinal], Positions::LastPrompt);
    let _ = t.forward_rows(&prompts, m.pad_token_id(), &mut HookSet::new().with(&mut cap), LogitsFor::Skip).unwrap();
    for p in [HookPoint::ResidMid(4), HookPoint::LnFinal] {
        let d = max_diff(prefix.clean(p).unwrap(), &cap.per_row(p, prompts.len()).unwrap());
        assert!(d < 1e-4, "{p}: {d}");
    }
    assert!(prefix.clean(HookPoint::MlpPost(4)).is_none());
}

#[test]
fn mixed_per_row_edits_equal_each_edit_alone() {
    let m = common::smollm2();
    let t = &m.transformer;
    let d = t.config().d_model as i64;
    let prompt = prompts().remove(0);
    let v = unit(d, 9);
    let layers = 8..12;
    let steer =
        |alpha: f64| layers.clone().fold(Intervention::none(), |iv, l| iv.with(HookPoint::ResidPost(l), Edit::AddRms(v.shallow_clone(), alpha)));
    let rows = vec![
        steer(8.0),
        Intervention::none(),
        Intervention::none().with(HookPoint::MlpPost(5), Edit::Zero(vec![1, 2, 3])).with(HookPoint::AttnZ(5), Edit::Zero(vec![4])),
        steer(-2.0),
    ];
    let batch = vec![prompt.clone(); rows.len()];
    let mut mixed = Interventions::new(rows, Positions::LastPrompt);
    let got = t.forward_rows(&batch, m.pad_token_id(), &mut HookSet::new().with(&mut mixed), LogitsFor::Last).unwrap();

    let alone = |hooks: &mut HookSet| t.forward_rows(std::slice::from_ref(&prompt), m.pad_token_id(), hooks, LogitsFor::Last).unwrap();
    // The references are closures written here, independent of `Interventions`.
    let add = |alpha: f64| {
        let mut set = HookSet::new();
        for l in layers.clone() {
            let v = v.shallow_clone();
            set = set.on(HookPoint::ResidPost(l), move |act: &Tensor, ctx: &HookContext| {
                let at = ctx.mask(&Positions::LastPrompt).unsqueeze(-1).to_kind(act.kind());
                let rms = (act.square().mean_dim(-1, true, act.kind()) + 1e-12).sqrt();
                Ok(Some(act + at * rms * &v * alpha))
            });
        }
        set
    };
    let zero = |point: HookPoint, units: &'static [i64]| {
        move |act: &Tensor, ctx: &HookContext| {
            let at = ctx.mask(&Positions::LastPrompt).to_kind(act.kind());
            let mut keep = Tensor::ones([act.size()[2]], (act.kind(), act.device()));
            let _ = keep.index_fill_(0, &Tensor::from_slice(units), 0.0);
            let mut factor = at.unsqueeze(-1) * (keep - 1.0) + 1.0;
            if point == HookPoint::AttnZ(5) {
                factor = factor.unsqueeze(-1);
            }
            Ok(Some(act * factor))
        }
    };
    let mut a = add(8.0);
    let mut abl =
        HookSet::new().on(HookPoint::MlpPost(5), zero(HookPoint::MlpPost(5), &[1, 2, 3])).on(HookPoint::AttnZ(5), zero(HookPoint::AttnZ(5), &[4]));
    let mut b = add(-2.0);
    let expected = [alone(&mut a), alone(&mut HookSet::new()), alone(&mut abl), alone(&mut b)];
    for (r, e) in expected.iter().enumerate() {
        let diff = max_diff(&got.get(r as i64), &e.get(0));
        assert!(diff < 1e-4, "row {r}: {diff}");
    }
    assert!(max_diff(&expected[0], &expected[1]) > 1e-2, "steering changed nothing");
    assert!(max_diff(&expected[2], &expected[1]) > 1e-4, "ablation changed nothing");
}

#[test]
fn bad_interventions_are_errors_naming_the_hook_point() {
    let m = common::smollm2();
    let t = &m.transformer;
    let prompt = prompts().remove(0);
    let run = |rows: Vec<Intervention>, batch: usize| -> ModelError {
        let mut iv = Interventions::new(rows, Positions::LastPrompt);
        let mut hooks = HookSet::new().with(&mut iv);
        t.forward_rows(&vec![prompt.clone(); batch], m.pad_token_id(), &mut hooks, LogitsFor::Last).unwrap_err()
    };
    let wrong_shape = Intervention::none().with(HookPoint::ResidMid(3), Edit::Add(Tensor::ones([7], (Kind::Float, tch::Device::Cpu))));
    let e = run(vec![wrong_shape], 1).to_string();
    assert!(e.contains("blocks.3.hook_resid_mid") && e.contains("[7]"), "{e}");
    let out_of_range = Intervention::none().with(HookPoint::AttnZ(2), Edit::Zero(vec![99]));
    let e = run(vec![out_of_range], 1).to_string();
    assert!(e.contains("blocks.2.attn.hook_z") && e.contains("99"), "{e}");
    let one = Intervention::none().with(HookPoint::MlpPost(1), Edit::Zero(vec![0]));
    let e = run(vec![one], 3).to_string();
    assert!(e.contains("blocks.1.mlp.hook_post") && e.contains("1 interventions"), "{e}");
    // A branch row naming a prompt the prefix does not have.
    let mut prefix = t.prefill_prefix(std::slice::from_ref(&prompt), m.pad_token_id()).unwrap();
    let e = t.forward_branches(&mut prefix, &[0, 1], &mut HookSet::new(), LogitsFor::Last).unwrap_err().to_string();
    assert!(e.contains("prompt 1"), "{e}");
    let e = t.prefill_prefix(&[vec![5]], m.pad_token_id()).err().expect("a one-token prompt has no prefix").to_string();
    assert!(e.contains("prompt 0"), "{e}");
}

#[test]
fn positions_and_sublayers_parse_what_they_print() {
    for p in
        [Positions::All, Positions::Prompt, Positions::LastPrompt, Positions::Generated, Positions::LastPromptAndGenerated, Positions::Range(3, 17)]
    {
        assert_eq!(p.to_string().parse::<Positions>().unwrap(), p);
    }
    assert_eq!(Positions::Range(0, 4).to_string(), "0..4");
    for bad in ["last", "5..2", "a..b", "-1..3"] {
        let e = bad.parse::<Positions>().unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
    let cfg = common::smollm2().transformer.config();
    let all = Sublayer::all(cfg.n_layers);
    assert_eq!(all.len(), 2 * cfg.n_layers);
    for s in &all {
        assert_eq!(s.to_string().parse::<Sublayer>().unwrap(), *s);
    }
    let s = Sublayer::attn(4);
    assert_eq!(
        (s.resid_site(), s.output(), s.units(), s.n_units(cfg)),
        (HookPoint::ResidMid(4), HookPoint::AttnOut(4), HookPoint::AttnZ(4), cfg.n_heads)
    );
    let s = Sublayer::mlp(4);
    assert_eq!(
        (s.resid_site(), s.output(), s.units(), s.n_units(cfg)),
        (HookPoint::ResidPost(4), HookPoint::MlpOut(4), HookPoint::MlpPost(4), cfg.d_mlp)
    );
    assert!("blocks.4.ffn".parse::<Sublayer>().unwrap_err().to_string().contains("blocks.4.ffn"));
}
