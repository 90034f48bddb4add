//! Every hook point against Hugging Face, computed in this run: the activation `run_with_cache` keeps at
//! each TransformerLens point of every layer equals what Hugging Face's modules compute on the same ids
//! (tests/support/hf_hooks.py), on both default models (both with grouped-query attention). Our two prompts
//! run as one left-padded batch, Hugging Face's one at a time, so padding is checked too.
mod common;
#[path = "support/hook_parity.rs"]
mod hook_parity;

use std::collections::HashMap;
use std::process::Command;

use emo_model::{LoadOptions, Model};
use tch::{Kind, Tensor};

const TEXTS: [&str; 2] = ["The meeting moved to Friday.", "My sister called this morning with wonderful news about her new job!"];

fn check_model(alias: &str) {
    let opts = LoadOptions::new(tch::Device::Cpu, Kind::Float);
    let model = Model::load(alias, opts).unwrap();
    let rows = model.to_tokens(TEXTS).unwrap();
    let dir = common::scratch(&format!("hf-hooks-{alias}"));
    let reference = hf_reference(&dir, serde_json::json!({ "gguf": common::model_file(alias), "prompts": rows, "threads": 2 }));
    hook_parity::compare(&model.transformer, &rows, &reference, alias);
}

/// Runs tests/support/hf_hooks.py on `req` (with the prompts) and reads what it recorded.
fn hf_reference(dir: &std::path::Path, req: serde_json::Value) -> HashMap<String, Tensor> {
    let req_path = dir.join("request.json");
    std::fs::write(&req_path, req.to_string()).unwrap();
    let out = dir.join("hooks.safetensors");
    let script = common::workspace().join("crates/emo-model/tests/support/hf_hooks.py");
    let status = Command::new(common::python()).arg(&script).arg(&req_path).arg(&out).env("TQDM_DISABLE", "1").status().unwrap();
    assert!(status.success(), "the Hugging Face reference failed ({status}); run `scripts/setup.sh --test`");
    Tensor::read_safetensors(&out).unwrap().into_iter().collect()
}

#[test]
fn smollm2_hook_points_match_hugging_face() {
    check_model("smollm2-135m");
}

#[test]
fn qwen2_hook_points_match_hugging_face() {
    check_model("qwen2.5-coder-0.5b");
}
