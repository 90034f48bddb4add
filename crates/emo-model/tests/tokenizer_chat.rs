//! Tokenizer and chat-template parity with Hugging Face transformers, on the real GGUF models.
//!
//! `tests/support/hf_tokenizer_reference.py` runs once per model (in the venv that `scripts/setup.sh --test`
//! makes) and gives transformers' rendered prompts, token ids and decodes; every test compares against it.
//! Missing models or Python fail the tests with the set-up command to run, rather than skipping them.
//!
//! Environment: `EMO_MODELS_DIR` (default `<workspace>/.cache/models`), `EMO_PYTHON` (default
//! `<workspace>/.venv/bin/python`).
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use common::{models_dir, python};
use emo_model::chat::{ChatMessage, ChatTemplate, Date};
use emo_model::gguf::{GgufFile, GgufValue};
use emo_model::tokenizer::Tokenizer;
use emo_model::ModelError;

const SETUP_HINT: &str = "run `scripts/setup.sh --test` from the workspace root";

#[derive(Clone, Copy, Debug)]
struct Model {
    file: &'static str,
    /// The file's `tokenizer.ggml.pre`.
    pre: &'static str,
}

const SMOLLM: Model = Model { file: "SmolLM2-135M-Instruct.Q4_1.gguf", pre: "smollm" };
const QWEN: Model = Model { file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", pre: "qwen2" };

/// The paper's prompt shape: an emotion instruction as the system message, "{scenario}\n{event}" as the user's.
const ANGER_SYSTEM: &str = "Always reply in anger.\nKeep the reply to at most two sentences.";
const SCENARIO: &str = "You are at a restaurant with your friends.\nThe waiter spills soup all over your new jacket.";

fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::system(ANGER_SYSTEM), ChatMessage::user(SCENARIO)],
        // No system message: SmolLM2's and Qwen's templates insert their default one.
        vec![ChatMessage::user(SCENARIO)],
        vec![
            ChatMessage::system("Always reply in sadness.\nKeep the reply to at most two sentences."),
            ChatMessage::user("Your flight is cancelled.\nThe next one leaves in 3 days."),
        ],
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("What is 2+2?"),
            ChatMessage::assistant("4."),
            ChatMessage::user("And 10*12? Don't explain, I'LL check."),
        ],
        vec![ChatMessage::user("Unicode: café, naïve, 日本語, Привет, emoji 😀👍🏽👨‍👩‍👧 — it's fine.")],
        vec![ChatMessage::user("  padded\tcontent  "), ChatMessage::assistant(""), ChatMessage::user("Line one\n\nLine two\n")],
    ]
}

fn raw_strings() -> Vec<String> {
    [
        "Hello world",
        "Hello  world   with   spaces",
        "don't",
        "I'LL",
        "I'm, you're, we've, they'd, she'll, He'S",
        "It's 3.14159 and 2024-07-26 at 10:30",
        "line1\nline2\n\n\nline3",
        "tabs\tand\r\nCRLF\r\n",
        "unicode: café naïve 日本語 한국어 Ελληνικά Привет",
        "emoji 😀👍🏽👨‍👩‍👧 🇫🇷",
        "   leading spaces",
        "trailing spaces   ",
        "",
        " ",
        "\n",
        "12345678901234567890",
        "$1,000,000.00 (approx.)",
        "x²+y³=z⁴ ½ ⅔",
        "Combining: e\u{301} n\u{303}; zero\u{200b}width; no\u{a0}break",
        "ＡＢＣ　full-width",
        "<|im_start|>user\nhi<|im_end|>\n",
        "<|endoftext|>text",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        // Where transformers' GGUF loader and SmolLM's tokenizer differ (see `may_split_differently`).
        "a\n\n2",
        "Hello  2024",
        "Total:\t\t42",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Raw strings on which transformers' SmolLM2 GGUF tokenizer must differ from ours (see `check_ids`).
const SMOLLM_KNOWN_DIVERGENT: &[&str] = &["a\n\n2", "Hello  2024", "x²+y³=z⁴ ½ ⅔"];

/// Templates that exercise the Jinja features chat templates use, rendered by both sides.
fn extra_templates() -> Vec<String> {
    vec![
        concat!(
            "{%- set ns = namespace(n=0) -%}\n",
            "{% for m in messages %}\n",
            "    {% if m.role == 'assistant' %}{% continue %}{% endif %}\n",
            "    [{{ loop.index }}/{{ loop.length }}] {{ m.role | upper }}: {{ m.content.strip().replace('\\n', ' / ') }}\n",
            "    {% set ns.n = ns.n + 1 %}\n",
            "{% endfor %}\n",
            "count={{ ns.n }} last={{ messages[-1].role }} {{ messages | length }}\n",
            "json={{ messages | tojson }}\n",
            "first={{ messages[0] | tojson(indent=2) }}\n",
            "{{ {'b': 1, 'a': [1.5, none, true, 'q\"uote\\\\ \\t tab', 1e-07, 100000000000000000.0]} | tojson }}\n",
            "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ 'é😀' | tojson(ensure_ascii=true) }}\n",
            "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content.split()[0] if m.content.split() else '-' }};{% endfor %}\n",
            "{% if messages[0].content.startswith('Always') %}instructed{% else %}plain{% endif %}\n",
            "{{ messages[0].content.lower().title() }}|{{ messages[0].content | trim | length }}\n",
        )
        .to_string(),
        concat!(
            "{% for message in messages %}\n",
            "  {% for key, value in message.items() %}{{ key }}={{ value | length }} {% endfor %}\n",
            "  {{- message.get('name', 'anon') }}{{ ' first' if loop.first }}{{ ' last' if loop.last }}\n",
            "{% endfor %}\n",
            "{% if add_generation_prompt %}<gen>{% endif %}{{ tools is none }} {{ documents is none }}\n",
        )
        .to_string(),
    ]
}

#[derive(serde::Deserialize, Debug)]
struct HfConversation {
    rendered: String,
    ids: Vec<u32>,
    ids_upstream: Vec<u32>,
    extra: Vec<String>,
}

#[derive(serde::Deserialize, Debug)]
struct HfRaw {
    text: String,
    ids: Vec<u32>,
    ids_plain: Vec<u32>,
    ids_upstream: Vec<u32>,
    ids_upstream_plain: Vec<u32>,
    decoded: String,
    decoded_skip: String,
}

#[derive(serde::Deserialize, Debug)]
struct HfReference {
    pre: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    vocab_len: usize,
    chat_template: Option<String>,
    conversations: Vec<HfConversation>,
    raw: Vec<HfRaw>,
    load_seconds: f64,
    total_seconds: f64,
}

struct Fixture {
    model: Model,
    tok: Tokenizer,
    hf: HfReference,
    /// Where the reference saved transformers' tokenizer in the Hugging Face folder layout.
    hf_dir: PathBuf,
}

fn build_fixture(model: Model) -> Result<Fixture, String> {
    let models = models_dir();
    let path = models.join(model.file);
    if !path.is_file() {
        return Err(format!("model file {} not found: {SETUP_HINT} (or set EMO_MODELS_DIR)", path.display()));
    }
    let py = python();
    if !py.exists() {
        return Err(format!("python {} not found: {SETUP_HINT} (or set EMO_PYTHON)", py.display()));
    }
    let started = Instant::now();
    let gguf = GgufFile::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let tok = Tokenizer::from_gguf(&gguf).map_err(|e| format!("Tokenizer::from_gguf: {e}"))?;
    let ours_seconds = started.elapsed().as_secs_f64();

    let hf_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hf-tokenizer-{}", model.pre));
    let _ = std::fs::remove_dir_all(&hf_dir);
    // Serialized from a struct, not `json!`, so each message's keys keep their order (role, then content),
    // which `tojson` on the Python side shows.
    #[derive(serde::Serialize)]
    struct Request {
        conversations: Vec<Vec<ChatMessage>>,
        raw: Vec<String>,
        templates: Vec<String>,
    }
    let request = Request { conversations: conversations(), raw: raw_strings(), templates: extra_templates() };
    let request = serde_json::to_string(&request).map_err(|e| format!("serializing the request: {e}"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hf_tokenizer_reference.py");
    let mut child = Command::new(&py)
        .arg(&script)
        .arg("--model-dir")
        .arg(&models)
        .arg("--gguf")
        .arg(model.file)
        .arg("--save-dir")
        .arg(&hf_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}; {SETUP_HINT}", py.display()))?;
    child.stdin.take().ok_or("no stdin for the reference script")?.write_all(request.as_bytes()).map_err(|e| format!("writing the request: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("waiting for the reference script: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{} failed ({}); is transformers installed? {SETUP_HINT}\n{stderr}", script.display(), out.status));
    }
    let hf: HfReference = serde_json::from_slice(&out.stdout).map_err(|e| format!("reference output is not the expected JSON: {e}"))?;
    eprintln!(
        "{}: our tokenizer loaded in {ours_seconds:.2}s (GGUF metadata included); transformers' in {:.1}s, script {:.1}s",
        model.file, hf.load_seconds, hf.total_seconds
    );
    Ok(Fixture { model, tok, hf, hf_dir })
}

fn fixture(model: Model) -> &'static Fixture {
    static SMOL: OnceLock<Result<Fixture, String>> = OnceLock::new();
    static QWEN2: OnceLock<Result<Fixture, String>> = OnceLock::new();
    let cell = if model.pre == SMOLLM.pre { &SMOL } else { &QWEN2 };
    match cell.get_or_init(|| build_fixture(model)) {
        Ok(f) => f,
        Err(e) => panic!("{}: {e}", model.file),
    }
}

/// Where transformers' GGUF loader (GPT-2's split alone, so ` ?\p{N}+` is one word) and SmolLM's tokenizer
/// (every numeric character isolated first) can differ: a whitespace run of two or more before a numeral
/// (the run is cut differently), or a space before, or a neighbouring numeral of, a non-ASCII numeral (a
/// merge can join their bytes). SmolLM's vocabulary has no token joining ASCII digits or a space and one.
fn may_split_differently(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let run_before_numeral = chars.windows(3).any(|w| w[0].is_whitespace() && w[1].is_whitespace() && w[2].is_numeric());
    let joined_non_ascii =
        chars.windows(2).any(|w| w[1].is_numeric() && (w[0].is_whitespace() || w[0].is_numeric()) && !(w[0].is_ascii() && w[1].is_ascii()));
    run_before_numeral || joined_non_ascii
}

/// Ours must equal the model's original tokenizer (`upstream`); transformers' GGUF tokenizer may differ only
/// for SmolLM on whitespace runs before digits. Returns whether it differed.
fn check_ids(f: &Fixture, what: &str, text: &str, ours: &[u32], hf: &[u32], upstream: &[u32]) -> bool {
    assert_eq!(ours, upstream, "{}: {what}: ids differ from the reference tokenizer for {text:?}", f.model.file);
    if ours == hf {
        return false;
    }
    assert!(
        f.model.pre == "smollm" && may_split_differently(text),
        "{}: {what}: ids differ from transformers for {text:?}:\n ours {ours:?}\n   hf {hf:?}",
        f.model.file
    );
    true
}

fn template_for(f: &Fixture) -> ChatTemplate {
    let source = f.tok.chat_template().expect("the model has a chat template");
    ChatTemplate::new(source, f.tok.bos_token(), f.tok.eos_token()).expect("chat template compiles")
}

fn special_tokens_match(model: Model) {
    let f = fixture(model);
    assert_eq!(f.hf.pre.as_deref(), Some(model.pre));
    assert_eq!(f.tok.bos_token(), f.hf.bos_token.as_deref());
    assert_eq!(f.tok.eos_token(), f.hf.eos_token.as_deref());
    assert_eq!(f.tok.bos_token_id(), f.hf.bos_token_id);
    assert_eq!(f.tok.eos_token_id(), f.hf.eos_token_id);
    assert_eq!(f.tok.pad_token_id(), f.hf.pad_token_id);
    assert_eq!(f.tok.vocab_size(), f.hf.vocab_len);
    assert_eq!(f.tok.chat_template(), f.hf.chat_template.as_deref());
    for id in [f.tok.bos_token_id(), f.tok.eos_token_id()].into_iter().flatten() {
        let text = f.tok.id_to_token(id).expect("special id has a token");
        assert_eq!(f.tok.token_to_id(&text), Some(id));
    }
}

fn chat_rendering_matches(model: Model) {
    let f = fixture(model);
    let template = template_for(f);
    let extras: Vec<ChatTemplate> =
        extra_templates().iter().map(|t| ChatTemplate::new(t, f.tok.bos_token(), f.tok.eos_token()).expect("extra template compiles")).collect();
    let convs = conversations();
    assert_eq!(convs.len(), f.hf.conversations.len());
    for (messages, hf) in convs.iter().zip(&f.hf.conversations) {
        let rendered = template.render(messages, true).expect("renders");
        assert_eq!(rendered, hf.rendered, "{}: rendered prompt differs for {messages:?}", model.file);
        for (i, (extra, hf_extra)) in extras.iter().zip(&hf.extra).enumerate() {
            let ours = extra.render(messages, true).expect("extra template renders");
            assert_eq!(&ours, hf_extra, "extra template {i} differs for {messages:?}");
        }
    }
    // The paper's prompt, spelled out, so a template change that keeps both sides equal still shows.
    let paper = template.render(&convs[0], true).unwrap();
    assert!(paper.ends_with(&format!("<|im_start|>user\n{SCENARIO}<|im_end|>\n<|im_start|>assistant\n")), "{paper:?}");
    assert!(paper.starts_with(&format!("<|im_start|>system\n{ANGER_SYSTEM}<|im_end|>\n")), "{paper:?}");
}

fn prompt_ids_match(model: Model) {
    let f = fixture(model);
    let template = template_for(f);
    let mut rendered_all = Vec::new();
    for (messages, hf) in conversations().iter().zip(&f.hf.conversations) {
        let rendered = template.render(messages, true).unwrap();
        let ours = f.tok.encode(&rendered, true).unwrap();
        // The prompts avoid whitespace runs before digits, so here both tokenizers must agree exactly.
        assert_eq!(ours, hf.ids, "{}: prompt ids differ from transformers for {rendered:?}", model.file);
        assert_eq!(ours, hf.ids_upstream);
        assert_eq!(f.tok.decode(&ours, false).unwrap(), rendered);
        rendered_all.push(rendered);
    }
    let batch = f.tok.encode_batch(&rendered_all, true).unwrap();
    let single: Vec<Vec<u32>> = rendered_all.iter().map(|r| f.tok.encode(r, true).unwrap()).collect();
    assert_eq!(batch, single);
}

fn raw_ids_and_decode_match(model: Model) {
    let f = fixture(model);
    let mut divergent = Vec::new();
    for hf in &f.hf.raw {
        let text = hf.text.as_str();
        let ours = f.tok.encode(text, true).unwrap();
        let ours_plain = f.tok.encode(text, false).unwrap();
        if check_ids(f, "add_special_tokens=true", text, &ours, &hf.ids, &hf.ids_upstream) {
            divergent.push(text.to_string());
        }
        check_ids(f, "add_special_tokens=false", text, &ours_plain, &hf.ids_plain, &hf.ids_upstream_plain);
        assert_eq!(f.tok.decode(&ours_plain, false).unwrap(), text, "decode(encode(x)) != x");
        assert_eq!(f.tok.decode(&hf.ids, false).unwrap(), hf.decoded, "decode of transformers' ids for {text:?}");
        assert_eq!(f.tok.decode(&hf.ids, true).unwrap(), hf.decoded_skip, "decode(skip_special) for {text:?}");
    }
    if model.pre == "smollm" {
        for known in SMOLLM_KNOWN_DIVERGENT {
            assert!(divergent.iter().any(|d| d == known), "expected transformers to split {known:?} differently; divergent: {divergent:?}");
        }
    } else {
        assert!(divergent.is_empty());
    }
    eprintln!("{}: strings where transformers' GGUF tokenizer differs from the original: {divergent:?}", model.file);
}

fn hf_folder_layout_matches(model: Model) {
    let f = fixture(model);
    let tok = Tokenizer::from_hf_files(&f.hf_dir.join("tokenizer.json"), Some(&f.hf_dir.join("tokenizer_config.json")))
        .expect("loads the saved Hugging Face tokenizer");
    assert_eq!(tok.bos_token(), f.hf.bos_token.as_deref());
    assert_eq!(tok.eos_token(), f.hf.eos_token.as_deref());
    assert_eq!(tok.bos_token_id(), f.hf.bos_token_id);
    assert_eq!(tok.eos_token_id(), f.hf.eos_token_id);
    assert_eq!(tok.pad_token_id(), f.hf.pad_token_id);
    assert_eq!(tok.chat_template(), f.hf.chat_template.as_deref(), "chat template from chat_template.jinja");
    // That folder holds transformers' own conversion, so its ids are transformers', divergences included.
    for hf in &f.hf.raw {
        assert_eq!(tok.encode(&hf.text, true).unwrap(), hf.ids, "{:?}", hf.text);
        assert_eq!(tok.encode(&hf.text, false).unwrap(), hf.ids_plain, "{:?}", hf.text);
    }
    for hf in &f.hf.conversations {
        assert_eq!(tok.encode(&hf.rendered, true).unwrap(), hf.ids);
    }
}

#[test]
fn smollm_special_tokens_match_hf() {
    special_tokens_match(SMOLLM);
}
#[test]
fn qwen_special_tokens_match_hf() {
    special_tokens_match(QWEN);
}
#[test]
fn smollm_chat_rendering_matches_hf() {
    chat_rendering_matches(SMOLLM);
}
#[test]
fn qwen_chat_rendering_matches_hf() {
    chat_rendering_matches(QWEN);
}
#[test]
fn smollm_prompt_ids_match_hf() {
    prompt_ids_match(SMOLLM);
}
#[test]
fn qwen_prompt_ids_match_hf() {
    prompt_ids_match(QWEN);
}
#[test]
fn smollm_raw_ids_and_decode_match_hf() {
    raw_ids_and_decode_match(SMOLLM);
}
#[test]
fn qwen_raw_ids_and_decode_match_hf() {
    raw_ids_and_decode_match(QWEN);
}
#[test]
fn smollm_hf_folder_layout_matches_hf() {
    hf_folder_layout_matches(SMOLLM);
}
#[test]
fn qwen_hf_folder_layout_matches_hf() {
    hf_folder_layout_matches(QWEN);
}

// ---- chat template behaviour that needs no model -------------------------------------------------------

#[test]
fn raise_exception_is_a_template_error_with_the_message() {
    let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}ok";
    let t = ChatTemplate::new(source, None, None).unwrap();
    assert_eq!(t.render(&[ChatMessage::user("hi")], false).unwrap(), "ok");
    match t.render(&[ChatMessage::assistant("hi")], false) {
        Err(ModelError::Template(msg)) => {
            assert_eq!(msg, "Conversation roles must alternate user/assistant/user/assistant/...")
        }
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn strftime_now_uses_the_injected_date() {
    let date = Date::new(2024, 7, 26).unwrap();
    let render = |src: &str| ChatTemplate::new(src, None, None).unwrap().with_date(date).render(&[], false).unwrap();
    assert_eq!(render("{{ strftime_now('%d %b %Y') }}"), "26 Jul 2024");
    assert_eq!(render("Today Date: {{ strftime_now('%d %B %Y') }}"), "Today Date: 26 July 2024");
    assert_eq!(render("{{ strftime_now('%A %a %m/%d/%y %H:%M:%S %-d') }}"), "Friday Fri 07/26/24 00:00:00 26");
    // Without an injected date it still renders, from the clock.
    let now = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap().render(&[], false).unwrap();
    assert!(now.parse::<i32>().is_ok_and(|y| y >= 2024), "{now}");
    assert!(Date::new(2023, 2, 29).is_err());
    let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", None, None).unwrap();
    assert!(matches!(bad.render(&[], false), Err(ModelError::Template(m)) if m.contains("%Q")));
}

#[test]
fn template_errors_are_reported_not_panics() {
    assert!(matches!(ChatTemplate::new("{% for %}", None, None), Err(ModelError::Template(_))));
    let t = ChatTemplate::new("{{ messages[0].content + 1 }}", None, None).unwrap();
    assert!(matches!(t.render(&[ChatMessage::user("x")], false), Err(ModelError::Template(_))));
    // Undefined special tokens render as nothing, as in Jinja.
    let t = ChatTemplate::new("[{{ bos_token }}]", None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "[]");
    let t = ChatTemplate::new("[{{ bos_token }}|{{ eos_token }}]\n", Some("<s>"), Some("</s>")).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "[<s>|</s>]", "final newline dropped like Jinja's default");
}

// ---- tokenizer construction errors and metadata handling ----------------------------------------------

/// GPT-2's byte alphabet, to make a small valid byte-level vocabulary.
fn byte_chars() -> Vec<String> {
    let mut out = Vec::new();
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
        out.push(c.to_string());
    }
    out
}

fn strings(items: &[String]) -> GgufValue {
    GgufValue::Array(items.iter().map(|s| GgufValue::String(s.clone())).collect())
}

/// A tiny Llama-3-style GGUF vocabulary: bytes, a few merges, and two control tokens.
fn tiny_metadata(pre: &str) -> HashMap<String, GgufValue> {
    let mut tokens = byte_chars();
    let mut types = vec![1i32; tokens.len()];
    for (t, ty) in [("he", 1), ("ll", 1), ("hell", 1), ("hello", 1), ("<|begin_of_text|>", 3), ("<|eot_id|>", 3), ("<think>", 4)] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    let merges: Vec<String> = ["h e", "l l", "he ll", "hell o"].iter().map(|s| s.to_string()).collect();
    let bos = tokens.iter().position(|t| t == "<|begin_of_text|>").unwrap() as u32;
    let eos = bos + 1;
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into()));
    m.insert("tokenizer.ggml.pre".into(), GgufValue::String(pre.into()));
    m.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
    m.insert("tokenizer.ggml.token_type".into(), GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()));
    m.insert("tokenizer.ggml.merges".into(), strings(&merges));
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(bos));
    m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(eos));
    m.insert(
        "tokenizer.chat_template".into(),
        GgufValue::String("{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}".into()),
    );
    m
}

fn from_meta(m: &HashMap<String, GgufValue>) -> emo_model::Result<Tokenizer> {
    Tokenizer::from_gguf_metadata(Path::new("tiny.gguf"), |k| m.get(k))
}

#[test]
fn unknown_tokenizer_model_is_a_tokenizer_error_naming_file_and_value() {
    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("llama".into()));
    match from_meta(&m) {
        Err(e @ ModelError::Tokenizer { .. }) => {
            let text = e.to_string();
            // SentencePiece vocabularies are rebuilt for Gemma files only; this one is not.
            assert!(text.contains("tiny.gguf") && text.contains("`llama`") && text.contains("Gemma"), "{text}");
        }
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("rwkv".into()));
    let text = from_meta(&m).unwrap_err().to_string();
    assert!(text.contains("unsupported tokenizer model `rwkv`"), "{text}");
    m.remove("tokenizer.ggml.model");
    assert!(matches!(from_meta(&m), Err(ModelError::Tokenizer { .. })));
}

#[test]
fn malformed_metadata_is_an_error_not_a_panic() {
    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1_000_000));
    let err = from_meta(&m).unwrap_err().to_string();
    assert!(err.contains("bos_token_id") && err.contains("1000000"), "{err}");

    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.merges".into(), strings(&["h e".to_string(), "nospace".to_string()]));
    assert!(from_meta(&m).unwrap_err().to_string().contains("nospace"));

    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.merges".into(), strings(&["x yz".to_string()]));
    assert!(matches!(from_meta(&m), Err(ModelError::Tokenizer { .. })), "merge of tokens outside the vocabulary");

    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.tokens".into(), GgufValue::U32(3));
    assert!(from_meta(&m).unwrap_err().to_string().contains("tokenizer.ggml.tokens"));

    let m = tiny_metadata("llama-bpe");
    let tok = from_meta(&m).unwrap();
    assert!(tok.decode(&[u32::MAX], false).is_err());
}

#[test]
fn llama3_adds_bos_by_default_and_doubles_it_with_its_template() {
    let m = tiny_metadata("llama-bpe");
    let tok = from_meta(&m).unwrap();
    let bos = tok.bos_token_id().unwrap();
    assert_eq!(tok.bos_token(), Some("<|begin_of_text|>"));
    let hello = tok.token_to_id("hello").unwrap();
    assert_eq!(tok.encode("hello", false).unwrap(), vec![hello]);
    assert_eq!(tok.encode("hello", true).unwrap(), vec![bos, hello]);
    let template = ChatTemplate::new(tok.chat_template().unwrap(), tok.bos_token(), tok.eos_token()).unwrap();
    let rendered = template.render(&[ChatMessage::user("hello")], false).unwrap();
    assert_eq!(rendered, "<|begin_of_text|>hello<|eot_id|>");
    let ids = tok.encode(&rendered, true).unwrap();
    assert_eq!(ids, vec![bos, bos, hello, tok.eos_token_id().unwrap()], "HF's double BOS");
    // Special tokens are matched whole and skipped on request; user-defined ones are kept.
    let think = tok.token_to_id("<think>").unwrap();
    assert_eq!(tok.encode("<think>hello", false).unwrap(), vec![think, hello]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
    assert_eq!(tok.decode(&[think, hello], true).unwrap(), "<think>hello");

    // An explicit add_bos_token=false wins over the pre-tokenizer's default.
    let mut m = tiny_metadata("llama-bpe");
    m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(false));
    assert_eq!(from_meta(&m).unwrap().encode("hello", true).unwrap(), vec![hello]);
}

#[test]
fn unknown_pre_type_falls_back_to_gpt2_split_like_transformers() {
    let m = tiny_metadata("some-future-model");
    let tok = from_meta(&m).unwrap();
    let hello = tok.token_to_id("hello").unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![hello], "no BOS: only Llama 3's split defaults to adding it");
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/tokenizer.json");
    match Tokenizer::from_hf_files(&path, None) {
        Err(e @ ModelError::Tokenizer { .. }) => assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
}

#[test]
fn hf_config_template_list_picks_default() {
    let f = fixture(SMOLLM);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hf-template-list");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "pad_token": null,
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT {{ bos_token }}"},
        ],
    });
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let tok = Tokenizer::from_hf_files(&f.hf_dir.join("tokenizer.json"), Some(&config_path)).unwrap();
    assert_eq!(tok.chat_template(), Some("DEFAULT {{ bos_token }}"));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.pad_token_id(), None);

    std::fs::write(&config_path, r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#).unwrap();
    let err = Tokenizer::from_hf_files(&f.hf_dir.join("tokenizer.json"), Some(&config_path)).unwrap_err();
    assert!(err.to_string().contains("default"), "{err}");
    std::fs::write(&config_path, "{not json").unwrap();
    assert!(Tokenizer::from_hf_files(&f.hf_dir.join("tokenizer.json"), Some(&config_path)).is_err());
}
