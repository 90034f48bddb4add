//! Regrouping decode states (a long prompt joining a decoding batch) holds the key-value cache about once,
//! not twice. A test binary of its own: it reads the process's peak resident memory, which other tests
//! running beside it would move.
mod common;

use emo_model::{DecodeState, HookSet, LogitsFor};
use tch::{Kind, Tensor};

/// A field of /proc/self/status, in KiB.
fn status_kb(key: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn regrouping_states_does_not_hold_their_cache_twice() {
    let m = common::smollm2();
    let n_layers = m.transformer.config().n_layers;
    let (tokens, chunk) = (1500i64, 250i64);
    let prefilled = |seed: i64| {
        let mut state = DecodeState::new(&[tokens], n_layers, tch::Device::Cpu, true);
        state.reserve(tokens);
        tch::manual_seed(seed);
        for _ in 0..tokens / chunk {
            let ids = Tensor::randint(1000, [1, chunk], (Kind::Int64, tch::Device::Cpu));
            let valid = Tensor::ones([1, chunk], (Kind::Bool, tch::Device::Cpu));
            let _ = m.transformer.forward_chunk(&ids, &valid, &mut state, &mut HookSet::new(), LogitsFor::Skip).unwrap();
        }
        state
    };
    let (a, b) = (prefilled(1), prefilled(2));
    let cache_kb = (a.bytes() + b.bytes()) / 1024;
    // Resets the peak (VmHWM) to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak resident memory");
    let before = status_kb("VmHWM");
    let started = std::time::Instant::now();
    let merged = DecodeState::regroup(vec![(a, vec![0]), (b, vec![0])], 1).unwrap();
    let took = started.elapsed();
    let added = status_kb("VmHWM").saturating_sub(before);
    assert_eq!(merged.batch(), 2);
    assert!(merged.bytes() / 1024 >= cache_kb, "the merged cache holds both rows");
    // Holding the old states while filling the merged one would add the whole cache (about 140 MB here); a
    // layer at a time adds about one layer's copy.
    println!("cache {cache_kb} KiB, peak added by the regroup {added} KiB, in {took:?}");
    assert!(added < cache_kb / 4, "regrouping {cache_kb} KiB of cache raised the peak by {added} KiB");
}
