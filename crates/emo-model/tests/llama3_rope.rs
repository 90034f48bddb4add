//! Llama-3 RoPE scaling, untied embeddings and the safetensors path on a tiny random checkpoint written by
//! Hugging Face in this run: our logits at 200 positions (beyond the 64-token original context, where the
//! scaling matters) equal HF's.
mod common;

use std::process::Command;

use emo_model::config::RopeScaling;
use emo_model::weights::SafetensorsWeights;
use emo_model::{HookSet, LogitsFor, Transformer, TransformerConfig};

#[test]
fn llama3_rope_scaling_matches_hugging_face() {
    let (dir, cfg, weights) = tiny_llama3("tiny-llama3");
    assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })), "{:?}", cfg.rope_scaling);
    assert!(!cfg.tie_embeddings);
    let model = Transformer::load(cfg, &weights, tch::Device::Cpu, tch::Kind::Float).unwrap();

    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(reference["ids"].clone()).unwrap();
    let bytes = std::fs::read(dir.join("logits.f32")).unwrap();
    let hf: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();

    let ours = model.forward_rows(&[ids], 0, &mut HookSet::new(), LogitsFor::All).unwrap();
    let ours = Vec::<f32>::try_from(ours.view(-1)).unwrap();
    assert_eq!(ours.len(), hf.len());
    let diff = ours.iter().zip(&hf).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "max |logit difference| {diff}");
}

#[test]
fn bf16_and_f16_run_close_to_f32() {
    let (_, cfg, weights) = tiny_llama3("tiny-llama3-dtypes");
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 % 300) as u32).collect();
    let run = |kind: tch::Kind| {
        let model = Transformer::load(cfg.clone(), &weights, tch::Device::Cpu, kind).unwrap();
        assert_eq!(model.kind(), kind);
        let out = model.forward_rows(std::slice::from_ref(&ids), 0, &mut HookSet::new(), LogitsFor::All).unwrap();
        assert_eq!(out.kind(), kind);
        out.to_kind(tch::Kind::Float)
    };
    let reference = run(tch::Kind::Float);
    let scale = f64::try_from(reference.abs().max()).unwrap();
    for kind in [tch::Kind::BFloat16, tch::Kind::Half] {
        let diff = f64::try_from((run(kind) - &reference).abs().max()).unwrap();
        assert!(diff < 0.05 * scale, "{kind:?}: max |difference| {diff} (scale {scale})");
    }
}

#[test]
fn last_position_logits_are_the_last_row_of_all_in_every_dtype() {
    // Generation asks for the last position only (a strided [batch, 1, d_model] slice); its logits must be
    // the same numbers as the full forward's last row, with several rows and in every dtype.
    let (_, cfg, weights) = tiny_llama3("tiny-llama3-last");
    let rows: Vec<Vec<u32>> = (0..3).map(|r| (0..24).map(|i| ((i * 7 + r * 11) % 300) as u32).collect()).collect();
    for kind in [tch::Kind::Float, tch::Kind::BFloat16, tch::Kind::Half] {
        let model = Transformer::load(cfg.clone(), &weights, tch::Device::Cpu, kind).unwrap();
        let all = model.forward_rows(&rows, 0, &mut HookSet::new(), LogitsFor::All).unwrap();
        let last = model.forward_rows(&rows, 0, &mut HookSet::new(), LogitsFor::Last).unwrap();
        assert_eq!(last.size(), [3, 1, cfg.vocab_size as i64]);
        let want = all.narrow(1, 23, 1).to_kind(tch::Kind::Float);
        let scale = f64::try_from(want.abs().max()).unwrap();
        let diff = f64::try_from((last.to_kind(tch::Kind::Float) - &want).abs().max()).unwrap();
        assert!(diff <= 0.01 * scale, "{kind:?}: max |difference| {diff} (scale {scale})");
    }
}

/// The tiny random checkpoint written by Hugging Face into a scratch folder of its own (with its reference
/// logits), loaded.
fn tiny_llama3(scratch: &str) -> (std::path::PathBuf, TransformerConfig, SafetensorsWeights) {
    let dir = common::scratch(scratch);
    let script = common::workspace().join("crates/emo-model/tests/support/tiny_llama3.py");
    let status = Command::new(common::python()).arg(script).arg(&dir).status().unwrap();
    assert!(status.success(), "writing the tiny checkpoint failed; run `scripts/setup.sh --test`");
    let cfg = TransformerConfig::from_hf_config(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    (dir, cfg, weights)
}
