//! Bad model files and references give typed errors naming the file and the problem, never a panic or a
//! LibTorch abort.
mod common;

use emo_model::gguf::{GgufValue, GgufWriter};
use emo_model::{LoadOptions, Model, ModelError};

fn opts() -> LoadOptions {
    LoadOptions::new(tch::Device::Cpu, tch::Kind::Float)
}

#[test]
fn a_truncated_gguf_model_is_an_error_naming_the_file() {
    let src = std::fs::read(common::model_file("smollm2-135m")).unwrap();
    let dir = common::scratch("truncated-model");
    for cut in [100usize, 2_000_000, src.len() - 1000] {
        let path = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &src[..cut]).unwrap();
        let err = Model::load(path.to_str().unwrap(), opts()).err().expect("truncated file loaded").to_string();
        assert!(err.contains(&format!("cut{cut}.gguf")) && err.contains("truncated"), "{err}");
    }
}

fn tiny_gguf(name: &str, arch: &str, with_tokenizer: bool) -> std::path::PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String(arch.into()));
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", 8),
        ("feed_forward_length", 16),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("context_length", 64),
    ] {
        w.add_metadata(format!("{arch}.{k}"), GgufValue::U32(v));
    }
    if with_tokenizer {
        w.add_metadata("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
        let toks = ["a", "b", "c", "ab"].iter().map(|t| GgufValue::String(t.to_string())).collect();
        w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(toks));
        w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(vec![GgufValue::String("a b".into())]));
    }
    w.add_f32_tensor("token_embd.weight", &[4, 8], &[0.1; 32]).unwrap();
    let path = common::scratch(name).join(format!("{name}.gguf"));
    w.write(&path).unwrap();
    path
}

#[test]
fn an_unknown_architecture_is_an_error_naming_it() {
    let path = tiny_gguf("neox", "gptneox", true);
    match Model::load(path.to_str().unwrap(), opts()) {
        Err(e @ ModelError::UnknownArchitecture { .. }) => {
            let s = e.to_string();
            assert!(s.contains("gptneox") && s.contains("neox.gguf"), "{s}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn a_missing_tokenizer_is_an_error() {
    let path = tiny_gguf("notok", "llama", false);
    let err = Model::load(path.to_str().unwrap(), opts()).err().expect("loaded without tokenizer").to_string();
    assert!(err.contains("notok.gguf") && err.contains("tokenizer"), "{err}");
}

#[test]
fn missing_weights_are_an_error_naming_the_tensor() {
    let path = tiny_gguf("noweights", "llama", true);
    let err = Model::load(path.to_str().unwrap(), opts()).err().expect("loaded without weights").to_string();
    assert!(err.contains("noweights.gguf") && err.contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn unknown_references_and_options_are_errors() {
    let err = Model::load("no-such-model", opts()).err().unwrap().to_string();
    assert!(err.contains("no-such-model") && err.contains("smollm2-135m"), "{err}");
    let err = Model::load("/nonexistent/model.gguf", opts()).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    assert!(emo_model::device::parse_device("tpu").is_err());
    assert!(emo_model::device::parse_kind("f8").is_err());
}

#[test]
fn a_hub_id_without_network_says_how_to_pass_a_local_path() {
    // An empty hf-hub cache and an endpoint nobody listens on: the offline situation of this machine.
    let home = common::scratch("hf-home");
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let err = Model::load("someorg/some-model", opts()).err().expect("loaded without network").to_string();
    assert!(err.contains("someorg/some-model") && err.contains("--model /path/to/folder"), "{err}");
}
