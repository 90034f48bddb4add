//! Hooked forward passes of the default model: no hooks vs the capture and edit workloads, at batch 1 and 8
//! by 64 tokens. The goal (docs/performance.md) is hooks within 5% of no hooks.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emo_run::bench::{hooks_for, HookLoad};
use emotion_circuits::model::{DecodeState, HookSet, LoadOptions, LogitsFor, Model};
use tch::{Device, Kind, Tensor};

fn forward(c: &mut Criterion) {
    let opts = LoadOptions::new(Device::cuda_if_available(), Kind::Float);
    let model = Model::load("smollm2-135m", opts).expect("run scripts/setup.sh first");
    let t = &model.transformer;
    let cfg = t.config().clone();
    let mut group = c.benchmark_group("forward_smollm2");
    group.sample_size(10);
    for batch in [1i64, 8] {
        tch::manual_seed(0);
        let ids = Tensor::randint(cfg.vocab_size as i64, [batch, 64], (Kind::Int64, Device::Cpu));
        let valid = Tensor::ones([batch, 64], (Kind::Bool, Device::Cpu));
        let lens = vec![64i64; batch as usize];
        for load in [HookLoad::None, HookLoad::Capture, HookLoad::Edit] {
            let mut hook = hooks_for(load, &cfg);
            let id = BenchmarkId::new(format!("{load:?}").to_lowercase(), format!("{batch}x64"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let mut set = HookSet::new();
                    if let Some(h) = hook.as_deref_mut() {
                        set.push(h);
                    }
                    let mut state = DecodeState::new(&lens, cfg.n_layers, t.device(), false);
                    let out = t.forward_chunk(&ids, &valid, &mut state, &mut set, LogitsFor::Last).unwrap();
                    out.sum(Kind::Float).double_value(&[])
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
