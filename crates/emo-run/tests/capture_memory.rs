//! A process that captures pass after pass does not grow beyond what it keeps (its own test binary, so
//! that no other test shares the process's memory).
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use emo_model::{HookSet, LogitsFor};
use emo_run::bench::{current_rss_mb, hooks_for, HookLoad};
use tch::Tensor;

#[test]
fn rss_stays_flat_over_many_capture_passes() {
    let m = common::smollm2();
    let t = &m.transformer;
    let cfg = t.config();
    tch::manual_seed(0);
    let ids = Tensor::randint(cfg.vocab_size as i64, [8, 64], (tch::Kind::Int64, tch::Device::Cpu));
    let rows: Vec<Vec<u32>> = Vec::<i64>::try_from(ids.view(-1)).unwrap().chunks(64).map(|c| c.iter().map(|&x| x as u32).collect()).collect();
    // The elicitation workload (4 sites x every layer at the last token), never cleared, as `emo bench` runs it.
    let mut capture = hooks_for(HookLoad::Capture, cfg).unwrap();
    let pass = |capture: &mut Box<dyn emo_model::Hook>| {
        let mut set = HookSet::new();
        set.push(capture.as_mut());
        let _ = t.forward_rows(&rows, m.pad_token_id(), &mut set, LogitsFor::Last).unwrap();
    };
    for _ in 0..3 {
        pass(&mut capture);
    }
    let before = current_rss_mb().expect("Linux /proc/self/status");
    let passes = 20;
    for _ in 0..passes {
        pass(&mut capture);
    }
    let after = current_rss_mb().unwrap();
    // What the capture itself keeps: 8 rows x (3 x d_model + d_mlp) x 30 layers of f32 per pass.
    let kept_mb = (passes * 8 * (3 * cfg.d_model + cfg.d_mlp) * cfg.n_layers * 4) as f64 / 1e6;
    eprintln!("RSS {before:.0} MB after 3 passes, {after:.0} MB after {} (captures kept: {kept_mb:.0} MB)", passes + 3);
    assert!(after - before < kept_mb + 64.0, "RSS grew by {:.0} MB over {passes} passes, keeping {kept_mb:.0} MB", after - before);
}
