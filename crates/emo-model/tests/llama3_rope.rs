//! Llama-3 RoPE scaling, untied embeddings and the safetensors path on a tiny random checkpoint written by
//! Hugging Face in this run: our logits at 200 positions (beyond the 64-token original context, where the
//! scaling matters) equal HF's.
mod common;

use std::process::Command;

use emo_model::config::RopeScaling;
use emo_model::weights::SafetensorsWeights;
use emo_model::{DecodeState, HookSet, LogitsFor, Transformer, TransformerConfig};

#[test]
fn llama3_rope_scaling_matches_hugging_face() {
    let dir = common::scratch("tiny-llama3");
    let script = common::workspace().join("crates/emo-model/tests/support/tiny_llama3.py");
    let status = Command::new(common::python()).arg(script).arg(&dir).status().unwrap();
    assert!(status.success(), "writing the tiny checkpoint failed; run `scripts/setup.sh --test`");

    let cfg = TransformerConfig::from_hf_config(&dir.join("config.json")).unwrap();
    assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })), "{:?}", cfg.rope_scaling);
    assert!(!cfg.tie_embeddings);
    let weights = SafetensorsWeights::open(&dir).unwrap();
    let model = Transformer::load(cfg, &weights, tch::Device::Cpu, tch::Kind::Float).unwrap();

    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(reference["ids"].clone()).unwrap();
    let bytes = std::fs::read(dir.join("logits.f32")).unwrap();
    let hf: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();

    let (x, valid, lens) = emo_model::generate::left_pad(&[ids], 0).unwrap();
    let mut state = DecodeState::new(&lens, 2, tch::Device::Cpu, false);
    let ours = model.forward_chunk(&x, &valid, &mut state, &mut HookSet::new(), LogitsFor::All).unwrap();
    let ours = Vec::<f32>::try_from(ours.view(-1)).unwrap();
    assert_eq!(ours.len(), hf.len());
    let diff = ours.iter().zip(&hf).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "max |logit difference| {diff}");
}
