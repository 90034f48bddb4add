//! Model families no offline model covers, each on a tiny checkpoint with random weights that Hugging Face
//! transformers writes in this run with the family's features switched on (tests/support/tiny_family.py):
//! logits of two prompts of different lengths equal Hugging Face's, alone and in one left-padded batch, and
//! 16 greedy tokens with the KV cache equal Hugging Face's, in a padded batch.
mod common;

use std::process::Command;

use emo_model::generate::generate;
use emo_model::weights::SafetensorsWeights;
use emo_model::{Architecture, GenerationConfig, HookSet, LogitsFor, Transformer, TransformerConfig};
use tch::{Device, Kind, Tensor};

fn check_family(family: &str, arch: Architecture) {
    let dir = common::scratch(&format!("tiny-{family}"));
    let script = common::workspace().join("crates/emo-model/tests/support/tiny_family.py");
    let status = Command::new(common::python()).arg(script).arg(family).arg(&dir).status().unwrap();
    assert!(status.success(), "writing the tiny {family} checkpoint failed; run `scripts/setup.sh --test`");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompts"].clone()).unwrap();

    let cfg = TransformerConfig::from_hf_config(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.arch, arch);
    let vocab = cfg.vocab_size as i64;
    let t = Transformer::load(cfg, &SafetensorsWeights::open(&dir).unwrap(), Device::Cpu, Kind::Float).unwrap();
    let hf_logits = |k: usize| {
        let bytes = std::fs::read(dir.join(format!("logits_{k}.f32"))).unwrap();
        let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Tensor::from_slice(&v).view([-1, vocab])
    };
    let close = |ours: &Tensor, hf: &Tensor, what: &str| {
        let scale = f64::try_from(hf.abs().max()).unwrap();
        let diff = f64::try_from((ours - hf).abs().max()).unwrap();
        assert!(diff <= 1e-4 * scale.max(1.0), "{family} {what}: max |ours - Hugging Face| {diff} (largest logit {scale})");
    };
    let batched = t.forward_rows(&prompts, 0, &mut HookSet::new(), LogitsFor::All).unwrap();
    let width = batched.size()[1];
    for (k, p) in prompts.iter().enumerate() {
        let n = p.len() as i64;
        let alone = t.forward_rows(std::slice::from_ref(p), 0, &mut HookSet::new(), LogitsFor::All).unwrap();
        close(&alone.get(0), &hf_logits(k), &format!("prompt {k} alone"));
        close(&batched.get(k as i64).narrow(0, width - n, n), &hf_logits(k), &format!("prompt {k} in a padded batch"));
    }

    let gen_cfg = GenerationConfig { ignore_eos: true, ..GenerationConfig::greedy(16) };
    let ours = generate(&t, &prompts, &gen_cfg, 0, &mut HookSet::new()).unwrap();
    for (k, g) in ours.iter().enumerate() {
        let hf: Vec<u32> = serde_json::from_value(reference["continuations"][k].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(reference["margins"][k].clone()).unwrap();
        // Compare up to the first step Hugging Face decided by less than 1e-3 (a tie either way is rounding).
        let decided = margins.iter().take_while(|&&m| m > 1e-3).count();
        assert!(decided >= 8, "{family} prompt {k}: only {decided} decided steps; widen the weights in tiny_family.py");
        assert_eq!(g.tokens[..decided], hf[..decided], "{family} prompt {k}: greedy continuation in a padded batch");
    }
}

#[test]
fn qwen3_matches_hugging_face() {
    check_family("qwen3", Architecture::Qwen3);
}
