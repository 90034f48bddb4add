//! Loading a Hugging Face model folder (config.json, sharded memory-mapped safetensors, tokenizer.json,
//! tokenizer_config.json) gives the same model as the GGUF it was written from; broken folders give errors
//! that name the file.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use emo_model::{HookSet, LoadOptions, Model, ModelError};

fn opts() -> LoadOptions {
    LoadOptions::new(tch::Device::Cpu, tch::Kind::Float)
}

/// SmolLM2 written by Hugging Face as a sharded safetensors folder, once per test binary.
fn hf_folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch("hf-folder");
        let script = common::workspace().join("crates/emo-model/tests/support/save_hf_folder.py");
        let status = Command::new(common::python()).arg(script).arg(common::model_file("smollm2-135m")).arg(&dir).arg("150MB").status().unwrap();
        assert!(status.success(), "saving the Hugging Face folder failed; run `scripts/setup.sh --test`");
        dir
    })
}

fn last_logits(model: &Model, ids: &[u32]) -> tch::Tensor {
    model.transformer.forward_rows(&[ids.to_vec()], 0, &mut HookSet::new(), emo_model::LogitsFor::Last).unwrap()
}

/// A copy of the folder (symlinked shards) in which `edit` may break one thing.
fn broken_copy(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = hf_folder();
    let dir = common::scratch(name);
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::symlink(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    dir
}

#[test]
fn a_sharded_safetensors_folder_loads_as_the_same_model() {
    let dir = hf_folder();
    let shards = std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors"));
    assert!(shards.count() > 1, "expected a sharded checkpoint");
    assert!(dir.join("model.safetensors.index.json").exists());

    let from_folder = Model::load(dir.to_str().unwrap(), opts()).unwrap();
    let from_gguf = common::smollm2();
    for conv in common::conversations() {
        let ids = from_folder.encode_chat(&conv).unwrap();
        assert_eq!(ids, from_gguf.encode_chat(&conv).unwrap());
        let diff = f64::try_from((last_logits(&from_folder, &ids) - last_logits(from_gguf, &ids)).abs().max()).unwrap();
        assert!(diff < 1e-4, "folder vs GGUF logits differ by {diff}");
    }
    assert!(from_folder.eos_token_ids.iter().any(|e| from_gguf.eos_token_ids.contains(e)));
}

#[test]
fn a_truncated_shard_is_an_error_naming_it() {
    let dir = broken_copy("hf-truncated", |dir| {
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
        let shard = index["weight_map"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
        let path = dir.join(&shard);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    let err = Model::load(dir.to_str().unwrap(), opts()).err().expect("a truncated shard must not load").to_string();
    assert!(err.contains(".safetensors"), "{err}");
}

#[test]
fn an_unknown_architecture_is_an_error_naming_it() {
    let dir = broken_copy("hf-arch", |dir| {
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["model_type"] = "gpt_neox".into();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, cfg.to_string()).unwrap();
    });
    match Model::load(dir.to_str().unwrap(), opts()) {
        Err(e @ ModelError::UnknownArchitecture { .. }) => assert!(e.to_string().contains("gpt_neox"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown architecture loaded"),
    }
}

#[test]
fn a_missing_tokenizer_is_an_error_naming_the_file() {
    let dir = broken_copy("hf-notok", |dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap());
    let err = Model::load(dir.to_str().unwrap(), opts()).err().expect("no tokenizer must not load").to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn a_malformed_config_is_an_error_naming_the_file() {
    let dir = broken_copy("hf-badcfg", |dir| {
        std::fs::remove_file(dir.join("config.json")).unwrap();
        std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", ").unwrap();
    });
    let err = Model::load(dir.to_str().unwrap(), opts()).err().expect("bad JSON must not load").to_string();
    assert!(err.contains("config.json"), "{err}");
}
