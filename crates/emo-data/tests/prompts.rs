//! The paper's prompts, rendered through the default model's chat template, give the token ids Hugging
//! Face's tokenizer gives for the same GGUF file (computed in this run).
use std::path::Path;
use std::process::Command;

use emo_data::prompts::{elicitation_prompt, neutral_prompt, NEUTRAL_SYSTEM};
use emo_data::{Dataset, Emotion, PromptItem, PromptSet, Valence};
use emo_model::gguf::GgufFile;
use emo_model::{ChatTemplate, Tokenizer};

#[test]
fn prompts_are_the_papers() {
    let ds = Dataset::builtin();
    let s = &ds.sev[0];
    let p = elicitation_prompt(Emotion::Fear, s, Valence::Negative);
    assert_eq!(p[0].role, "system");
    assert_eq!(p[0].content, "Always reply in fear.\nKeep the reply to at most two sentences.");
    assert_eq!(p[1].role, "user");
    assert_eq!(p[1].content, format!("{}\n{}", s.scenario, s.events.negative));
    let n = neutral_prompt(s, Valence::Positive);
    assert_eq!(n[0].content, NEUTRAL_SYSTEM);
    assert_eq!(n[1].content, format!("{}\n{}", s.scenario, s.events.positive));
    let all = PromptItem::all(&ds.sev);
    assert_eq!(all.len(), 2880);
    assert_eq!(all[0], PromptItem { scenario: 0, valence: Valence::Positive, emotion: Emotion::Anger });
    assert_eq!(all[17], PromptItem { scenario: 0, valence: Valence::Negative, emotion: Emotion::Disgust });
}

#[test]
fn token_ids_match_hugging_face_on_the_default_model() {
    let gguf_path = emo_model::model::resolve("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let gguf = GgufFile::open(&gguf_path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let tpl = ChatTemplate::new(tok.chat_template().unwrap(), tok.bos_token(), tok.eos_token()).unwrap();
    let s = &Dataset::builtin().sev[3];
    let messages = elicitation_prompt(Emotion::Anger, s, Valence::Negative);
    let rendered = tpl.render(&messages, true).unwrap();
    let ours = tok.encode(&rendered, true).unwrap();

    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(python.exists(), "{} is missing: run `scripts/setup.sh --test`", python.display());
    let script = r#"
import json, os, sys
from transformers import AutoTokenizer
path, messages = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
print(json.dumps({"text": text, "ids": tok(text)["input_ids"]}))
"#;
    let out = Command::new(python).args(["-c", script]).arg(&gguf_path).arg(serde_json::to_string(&messages).unwrap()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').rfind(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(rendered, hf["text"].as_str().unwrap());
    let hf_ids: Vec<u32> = serde_json::from_value(hf["ids"].clone()).unwrap();
    assert_eq!(ours, hf_ids);
}

#[test]
fn prompt_sets_by_name_and_from_files() {
    let s = &Dataset::builtin().sev[0];
    let strong = PromptSet::parse("strong").unwrap();
    let p = strong.elicitation_prompt(Emotion::Disgust, s, Valence::Neutral);
    assert_eq!(p[0].content, "You are feeling intense disgust. Reply in a tone full of disgust, in at most two sentences.");
    assert_eq!(p[1].content, format!("{}\n{}", s.scenario, s.events.neutral));
    assert_eq!(strong.neutral_prompt(s, Valence::Neutral), neutral_prompt(s, Valence::Neutral));
    // The paper's set is what the free functions build.
    assert_eq!(PromptSet::paper().elicitation_prompt(Emotion::Fear, s, Valence::Negative), elicitation_prompt(Emotion::Fear, s, Valence::Negative));

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prompt-sets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = file("good.json", r#"{"elicitation_system": "Feel {emotion}; reply as one who does.", "neutral_system": "Reply briefly."}"#);
    let custom = PromptSet::parse(&good).unwrap();
    assert_eq!((custom.name.as_str(), custom.elicitation_system(Emotion::Anger).as_str()), (good.as_str(), "Feel anger; reply as one who does."));
    for (name, text, needle) in [
        ("no-emotion.json", r#"{"elicitation_system": "Be emotional.", "neutral_system": "x"}"#, "elicitation_system: has no `{emotion}`"),
        ("empty.json", r#"{"elicitation_system": "{emotion}", "neutral_system": " "}"#, "neutral_system: is empty"),
        ("extra.json", r#"{"elicitation_system": "{emotion}", "neutral_system": "x", "user": "y"}"#, "unknown field `user`"),
        ("broken.json", "{\n\"elicitation_system\": ", ":2: json:"),
    ] {
        let e = PromptSet::parse(&file(name, text)).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    let e = PromptSet::parse("loud").unwrap_err().to_string();
    assert!(e.contains("unknown prompt set `loud`"), "{e}");
}
