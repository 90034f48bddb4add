//! Model families no offline model covers, each on a tiny checkpoint with random weights that Hugging Face
//! transformers writes in this run with the family's features switched on (tests/support/tiny_family.py):
//! logits of two prompts of different lengths equal Hugging Face's, alone and in one left-padded batch, every
//! hook point equals the value Hugging Face's modules compute (Gemma's output norms and q/k norms included), and
//! 32 greedy tokens with the KV cache equal Hugging Face's, alone and in a padded batch; a branched last token over a
//! shared prefix (as sweeps run) equals them too; the same weights written as GGUF
//! with llama.cpp's names, metadata and (for Gemma) norm convention load through the GGUF path to the same config
//! and logits.
mod common;
#[path = "support/hook_parity.rs"]
mod hook_parity;

use std::process::Command;

use emo_model::config::RopeScaling;
use emo_model::generate::generate;
use emo_model::gguf::{GgufFile, GgufValue, GgufWriter};
use emo_model::weights::{GgufWeights, SafetensorsWeights, WeightSource};
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

    // A branched evaluation of each prompt's last token over its shared prefix (how sweeps run) agrees too.
    let mut prefix = t.prefill_prefix(&prompts, 0).unwrap();
    let branched = t.forward_branches(&mut prefix, &[1, 0], &mut HookSet::new(), LogitsFor::Last).unwrap().view([2, vocab]);
    close(&branched.get(0), &hf_logits(1).get(-1), "prompt 1's last token, branched");
    close(&branched.get(1), &hf_logits(0).get(-1), "prompt 0's last token, branched");

    // Every hook point equals Hugging Face's (its module hooks, recorded by the same script).
    let hooks: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("hooks.safetensors")).unwrap().into_iter().collect();
    hook_parity::compare(&t, &prompts, &hooks, family);

    // The same weights written as a GGUF file with llama.cpp's names and metadata load to the same logits.
    if let Some(gguf_logits) = through_gguf(family, &dir, &prompts) {
        close(&gguf_logits, &batched, "through GGUF");
    }

    let gen_cfg = GenerationConfig { ignore_eos: true, ..GenerationConfig::greedy(32) };
    let ours = generate(&t, &prompts, &gen_cfg, 0, &mut HookSet::new()).unwrap();
    for (k, g) in ours.iter().enumerate() {
        let hf: Vec<u32> = serde_json::from_value(reference["continuations"][k].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(reference["margins"][k].clone()).unwrap();
        // Compare up to the first step Hugging Face decided by less than 1e-3 (a tie either way is rounding).
        let decided = margins.iter().take_while(|&&m| m > 1e-3).count();
        assert!(decided >= 8, "{family} prompt {k}: only {decided} decided steps; widen the weights in tiny_family.py");
        // Under LongRoPE, Hugging Face's generate recomputes the whole cache with the long factors at the step a
        // sequence first reaches past the pre-training context; ours keeps the keys cached before it (as vLLM
        // does), so the continuations are compared up to that step (every token of a prompt already past it).
        let decided = match &t.config().rope_scaling {
            Some(RopeScaling::LongRope { original_max_position, .. }) if prompts[k].len() <= *original_max_position => {
                decided.min(original_max_position - prompts[k].len() + 1)
            }
            _ => decided,
        };
        assert_eq!(g.tokens[..decided], hf[..decided], "{family} prompt {k}: greedy continuation in a padded batch");
        let alone = generate(&t, std::slice::from_ref(&prompts[k]), &gen_cfg, 0, &mut HookSet::new()).unwrap();
        assert_eq!(alone[0].tokens[..decided], hf[..decided], "{family} prompt {k}: greedy continuation alone");
    }
}

#[test]
fn qwen3_matches_hugging_face() {
    check_family("qwen3", Architecture::Qwen3);
}

/// The tiny checkpoint rewritten as GGUF under llama.cpp's tensor names and `{arch}.*` metadata (f32, Gemma's norm
/// weights with llama.cpp's +1), loaded through the GGUF path: the batch's logits, or `None` for Llama, whose q/k
/// rows llama.cpp permutes (the offline SmolLM2 file covers that).
fn through_gguf(family: &str, dir: &std::path::Path, prompts: &[Vec<u32>]) -> Option<Tensor> {
    let cfg = TransformerConfig::from_hf_config(&dir.join("config.json")).unwrap();
    if cfg.arch == Architecture::Llama {
        return None;
    }
    let arch = cfg.arch.gguf_name();
    let src = SafetensorsWeights::open(dir).unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String(arch.into()));
    let u = |x: usize| GgufValue::U32(x as u32);
    for (key, value) in [
        ("block_count", u(cfg.n_layers)),
        ("embedding_length", u(cfg.d_model)),
        ("feed_forward_length", u(cfg.d_mlp)),
        ("attention.head_count", u(cfg.n_heads)),
        ("attention.head_count_kv", u(cfg.n_kv_heads)),
        ("attention.key_length", u(cfg.d_head)),
        ("context_length", u(cfg.max_position)),
        ("vocab_size", u(cfg.vocab_size)),
        ("attention.layer_norm_rms_epsilon", GgufValue::F32(cfg.rms_norm_eps as f32)),
        ("rope.freq_base", GgufValue::F32(cfg.rope_theta as f32)),
        ("rope.dimension_count", u(cfg.rotary_dim)),
    ] {
        w.add_metadata(format!("{arch}.{key}"), value);
    }
    if let Some(window) = cfg.sliding_window {
        w.add_metadata(format!("{arch}.attention.sliding_window"), u(window));
    }
    if let Some(RopeScaling::LongRope { short_factor, long_factor, original_max_position, attention_factor }) = &cfg.rope_scaling {
        // llama.cpp stores LongRoPE's factors as tensors (the factor is F32 there; F64 keeps this comparison exact).
        w.add_f32_tensor("rope_factors_short.weight", &[short_factor.len()], short_factor).unwrap();
        w.add_f32_tensor("rope_factors_long.weight", &[long_factor.len()], long_factor).unwrap();
        w.add_metadata(format!("{arch}.rope.scaling.original_context_length"), u(*original_max_position));
        w.add_metadata(format!("{arch}.rope.scaling.attn_factor"), GgufValue::F64(*attention_factor));
    }
    for (key, cap) in [("attn_logit_softcapping", cfg.attn_softcap), ("final_logit_softcapping", cfg.final_softcap)] {
        if let Some(cap) = cap {
            w.add_metadata(format!("{arch}.{key}"), GgufValue::F32(cap as f32));
        }
    }
    let mut names = vec![("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string())];
    names.push(("model.norm.weight".into(), "output_norm.weight".into()));
    if src.contains("lm_head.weight") {
        names.push(("lm_head.weight".into(), "output.weight".into()));
    }
    let mlp_in_norm = if cfg.gemma { "pre_feedforward_layernorm.weight" } else { "post_attention_layernorm.weight" };
    let fields = [
        ("input_layernorm.weight", "attn_norm.weight"),
        (mlp_in_norm, "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
        ("mlp.gate_up_proj.weight", "ffn_up.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    let gemma_fields =
        [("post_attention_layernorm.weight", "post_attention_norm.weight"), ("post_feedforward_layernorm.weight", "post_ffw_norm.weight")];
    for l in 0..cfg.n_layers {
        for (hf, gg) in fields.iter().chain(if cfg.gemma { &gemma_fields[..] } else { &[] }) {
            names.push((format!("model.layers.{l}.{hf}"), format!("blk.{l}.{gg}")));
        }
    }
    for (hf, gg) in names.iter().filter(|(hf, _)| src.contains(hf)) {
        let mut t = src.tensor_as(hf, Kind::Float).unwrap();
        // llama.cpp's converter stores Gemma's (1 + w) norm weights as w + 1.
        if cfg.gemma && hf.ends_with("norm.weight") {
            t += 1.0;
        }
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        w.add_f32_tensor(gg.clone(), &shape, &Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()).unwrap();
    }
    let path = dir.join(format!("{family}.gguf"));
    w.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let gcfg = TransformerConfig::from_gguf(&file).unwrap();
    // GGUF stores no query_pre_attn_scalar: llama.cpp's 1/sqrt(d_head) replaces the tiny config's deliberately
    // different one, and everything else read from the metadata equals the Hugging Face config.
    // (The epsilon went through an f32.)
    assert_eq!(
        TransformerConfig { query_scale: cfg.query_scale, rms_norm_eps: cfg.rms_norm_eps, ..gcfg.clone() },
        cfg,
        "{family}: the config read from GGUF"
    );
    assert!((gcfg.rms_norm_eps - cfg.rms_norm_eps).abs() < 1e-12);
    if cfg.gemma {
        assert_eq!(gcfg.query_scale, (cfg.d_head as f64).powf(-0.5));
    }
    let t = Transformer::load(cfg.clone(), &GgufWeights::new(&file, gcfg), Device::Cpu, Kind::Float).unwrap();
    Some(t.forward_rows(prompts, 0, &mut HookSet::new(), LogitsFor::All).unwrap())
}

#[test]
fn mistral_sliding_window_matches_hugging_face() {
    check_family("mistral", Architecture::Llama);
}

#[test]
fn phi3_fused_projections_and_window_match_hugging_face() {
    check_family("phi3", Architecture::Phi3);
}

#[test]
fn phi3_longrope_matches_hugging_face() {
    check_family("phi3_longrope", Architecture::Phi3);
}

#[test]
fn phi4_partial_rotary_matches_hugging_face() {
    check_family("phi4", Architecture::Phi3);
}

#[test]
fn gemma2_matches_hugging_face() {
    check_family("gemma2", Architecture::Gemma2);
}

#[test]
fn gemma3_matches_hugging_face() {
    check_family("gemma3", Architecture::Gemma3);
}
