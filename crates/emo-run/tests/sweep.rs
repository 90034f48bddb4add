//! Sweeps on the real default model: the branched table equals the table of full forwards, its baseline
//! column equals a plain forward's projection, and streaming statistics equal statistics of the
//! concatenation.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use emo_model::{Capture, Edit, HookPoint, HookSet, Intervention, LogitsFor, Positions, Sublayer};
use emo_run::{GroupedSums, Metric, PrefixCache, Sweep};
use emo_test_support::max_diff;
use tch::{Kind, Tensor};

fn prompts() -> Vec<Vec<u32>> {
    let m = common::smollm2();
    common::conversations().iter().take(4).map(|c| m.encode_chat(c).unwrap()).collect()
}

fn interventions() -> Vec<Intervention> {
    let d = common::smollm2().transformer.config().d_model as i64;
    tch::manual_seed(7);
    let v = Tensor::randn([d], (Kind::Float, tch::Device::Cpu));
    vec![
        Intervention::none().with(HookPoint::MlpPost(20), Edit::Zero((0..64).collect())),
        Intervention::none(),
        Intervention::none().with(Sublayer::attn(3).output(), Edit::Add(&v * 3.0)),
        Intervention::none().with(HookPoint::AttnZ(12), Edit::Zero(vec![0, 1, 2])),
        Intervention::none().with(Sublayer::mlp(27).output(), Edit::Add(&v * -3.0)),
    ]
}

/// Section 6's score: every layer's resid_post on a unit direction per prompt and layer.
fn directions(n_prompts: usize) -> Tensor {
    let cfg = common::smollm2().transformer.config();
    tch::manual_seed(3);
    let dirs = Tensor::randn([n_prompts as i64, cfg.n_layers as i64, cfg.d_model as i64], (Kind::Float, tch::Device::Cpu));
    &dirs / dirs.norm_scalaropt_dim(2, [-1], true)
}

fn resid_posts() -> Vec<HookPoint> {
    (0..common::smollm2().transformer.config().n_layers).map(HookPoint::ResidPost).collect()
}

#[test]
fn branched_sweep_equals_full_forwards() {
    let m = common::smollm2();
    let prompts = prompts();
    let ivs = interventions();
    let dirs = directions(prompts.len());
    let metric = Metric::projection(resid_posts(), dirs.shallow_clone()).unwrap();
    let mut sweep = Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric);
    sweep.max_rows = 7; // chunks that cut across interventions and prompts
    sweep.prompts_per_prefix = 3;
    assert!(sweep.branches());
    let branched = sweep.run(m).unwrap();
    // The same interventions through full forwards: Range of the last prompt token is not LastPrompt, so the
    // sweep cannot branch, yet it edits the same tokens for prompts of one length; use one length per call.
    let full = Tensor::zeros([prompts.len() as i64, ivs.len() as i64], (Kind::Double, tch::Device::Cpu));
    for (q, p) in prompts.iter().enumerate() {
        let last = p.len() as i64 - 1;
        let one = vec![p.clone()];
        let one_metric = Metric::projection(resid_posts(), dirs.get(q as i64)).unwrap();
        let s = Sweep::new(&one, &ivs, Positions::Range(last, last + 1), &one_metric);
        assert!(!s.branches());
        full.get(q as i64).copy_(&s.run(m).unwrap().get(0));
    }
    let worst = max_diff(&branched, &full);
    let scale = f64::try_from(full.abs().max()).unwrap();
    eprintln!("branched vs full sweep: max |diff| {worst:.2e} on values up to {scale:.1}");
    assert!(worst < 1e-4 * scale.max(1.0), "{worst}");
    // Forced full forwards, rows of different prompt lengths packed together: the same table.
    sweep.full_forwards = true;
    assert!(!sweep.branches());
    let packed = sweep.run(m).unwrap();
    let worst_packed = max_diff(&branched, &packed);
    eprintln!("branched vs packed full forwards: max |diff| {worst_packed:.2e}");
    assert!(worst_packed < 1e-4 * scale.max(1.0), "{worst_packed}");
    // Every intervention moved the score somewhere (else equality proves little).
    for i in [0, 2, 3, 4] {
        assert!(max_diff(&branched.select(1, i), &branched.select(1, 1)) > 1e-3, "intervention {i} changed nothing");
    }

    // The baseline column is the plain forward's projection.
    let points = resid_posts();
    let mut cap = Capture::new(points.iter().copied(), Positions::LastPrompt);
    let _ = m.transformer.forward_rows(&prompts, m.pad_token_id(), &mut HookSet::new().with(&mut cap), LogitsFor::Skip).unwrap();
    let mut plain = Tensor::zeros([prompts.len() as i64], (Kind::Double, tch::Device::Cpu));
    for (l, &p) in points.iter().enumerate() {
        plain += (cap.per_row(p, prompts.len()).unwrap() * dirs.select(1, l as i64)).sum_dim_intlist(-1, false, Kind::Double);
    }
    assert!(max_diff(&branched.select(1, 1), &plain) < 1e-4 * scale.max(1.0));
}

#[test]
fn a_final_state_metric_reads_ln_final() {
    let m = common::smollm2();
    let prompts = prompts();
    let d = m.transformer.config().d_model as i64;
    let v = Tensor::ones([d], (Kind::Float, tch::Device::Cpu)) / (d as f64).sqrt();
    let metric = Metric::final_state(&v).unwrap();
    let ivs = vec![Intervention::none()];
    let got = Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric).run(m).unwrap();
    let mut cap = Capture::new([HookPoint::LnFinal], Positions::LastPrompt);
    let _ = m.transformer.forward_rows(&prompts, m.pad_token_id(), &mut HookSet::new().with(&mut cap), LogitsFor::Skip).unwrap();
    let want = (cap.per_row(HookPoint::LnFinal, prompts.len()).unwrap() * &v).sum_dim_intlist(-1, false, Kind::Double);
    assert!(max_diff(&got.select(1, 0), &want) < 1e-4);
    let e = Metric::projection(vec![HookPoint::MlpPost(3)], Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu)));
    assert!(e.err().unwrap().to_string().contains("blocks.3.mlp.hook_post"));
    let e = Metric::projection(vec![HookPoint::LnFinal], Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu)));
    assert!(e.err().unwrap().to_string().contains("[2, 4]"));
}

#[test]
fn streaming_statistics_equal_statistics_of_the_concatenation() {
    tch::manual_seed(11);
    let values = Tensor::randn([50, 3, 4], (Kind::Float, tch::Device::Cpu));
    let keys: Vec<usize> = (0..50).map(|i| (i * 7) % 5).collect();
    let mut all = GroupedSums::new(5, &[3, 4], true);
    // In batches of 8, each batch's sums committed and merged, as a run would.
    for (b, chunk) in keys.chunks(8).enumerate() {
        let mut part = GroupedSums::new(5, &[3, 4], true);
        part.add(chunk, &values.narrow(0, (b * 8) as i64, chunk.len() as i64)).unwrap();
        let stored = part.to_tensors("mlp_post");
        let back = GroupedSums::from_tensors("mlp_post", |n| stored.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone())).unwrap();
        all.merge(&back).unwrap();
    }
    for k in 0..5 {
        let idx: Vec<i64> = keys.iter().enumerate().filter(|(_, &x)| x == k).map(|(i, _)| i as i64).collect();
        let sel = values.index_select(0, &Tensor::from_slice(&idx)).to_kind(Kind::Double);
        assert_eq!(all.count(k), idx.len() as u64);
        assert!(max_diff(&all.mean(k).unwrap(), &sel.mean_dim(0, false, Kind::Double)) < 1e-12);
        let std = sel.std_dim(0, true, false);
        assert!(max_diff(&all.std(k).unwrap(), &std) < 1e-10);
    }
    assert!(max_diff(&all.means().get(2), &all.mean(2).unwrap()) < 1e-15);
    let e = all.add(&[0, 9], &Tensor::zeros([2, 3, 4], (Kind::Float, tch::Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("key 9"), "{e}");
    let e = all.add(&[0], &Tensor::zeros([1, 4, 3], (Kind::Float, tch::Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("[1, 4, 3]"), "{e}");
    let e = GroupedSums::from_tensors("x", |_| None).unwrap_err().to_string();
    assert!(e.contains("x.sum"), "{e}");
}

#[test]
fn sweeps_sharing_a_prefix_cache_reuse_prefixes_and_give_the_same_tables() {
    let m = common::smollm2();
    let prompts = prompts();
    let ivs = interventions();
    let metric = Metric::projection(resid_posts(), directions(prompts.len())).unwrap();
    let mut alone = Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric);
    alone.prompts_per_prefix = 3;
    let alone = alone.run(m).unwrap();
    let scale = f64::try_from(alone.abs().max()).unwrap().max(1.0);
    let cache = PrefixCache::new(PrefixCache::DEFAULT_BYTES);
    let mut tables = Vec::new();
    for _ in 0..2 {
        let mut sweep = Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric);
        sweep.prompts_per_prefix = 3;
        sweep.prefixes = Some(&cache);
        tables.push(sweep.run(m).unwrap());
    }
    // Two prefixes (3 + 1 prompts) computed by the first sweep, reused by the second (branches do not extend
    // a prefix, so a reused one gives the same rows).
    assert_eq!(cache.counts(), (2, 2));
    assert!(cache.bytes() > 0);
    for t in &tables {
        assert!(max_diff(t, &alone) < 1e-4 * scale, "{} on values up to {scale}", max_diff(t, &alone));
    }
    assert_eq!(max_diff(&tables[0], &tables[1]), 0.0, "a reused prefix is the same prefix");
    // A cache without room keeps nothing and computes every prefix.
    let none = PrefixCache::new(0);
    let mut sweep = Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric);
    sweep.prefixes = Some(&none);
    let _ = sweep.run(m).unwrap();
    let _ = sweep.run(m).unwrap();
    assert_eq!((none.counts(), none.bytes()), ((0, 2), 0));
}
