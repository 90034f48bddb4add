//! Every model family through the binary, as a user would run it: a tiny checkpoint of each family with random
//! weights and a real tokenizer and chat template (SmolLM2's, written by Hugging Face transformers; see
//! crates/emo-model/tests/support/tiny_family.py) runs `emo paper --limit 1` end to end (every section), and
//! `emo serve` on it answers plain, steered and circuit-modulated requests with the run's own directions and
//! circuits. Random weights say nothing about emotions: this checks that every stage accepts every family.
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{content, scratch, workspace, Server, KEY};
use serde_json::json;

const FAMILIES: [&str; 5] = ["qwen3", "mistral", "phi3", "gemma2", "gemma3"];

/// The five checkpoints, written once per test binary (one Python process).
fn checkpoints() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = scratch("families");
        let python = std::env::var_os("EMO_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python"));
        let tokenizer = emo_model::model::resolve("smollm2-135m").unwrap_or_else(|e| panic!("{e} (run `scripts/setup.sh --test`)"));
        let status = Command::new(&python)
            .arg(workspace().join("crates/emo-model/tests/support/tiny_family.py"))
            .arg("--chat")
            .arg(tokenizer)
            .arg(&root)
            .args(FAMILIES)
            .env("TQDM_DISABLE", "1")
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (run `scripts/setup.sh --test`)", python.display()));
        assert!(status.success(), "writing the tiny checkpoints failed; run `scripts/setup.sh --test`");
        root
    })
}

fn paper_and_serve(family: &str) {
    // One family at a time: each run uses both cores, and five at once only make LibTorch's threads wait.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = checkpoints().join(family);
    let run = checkpoints().join(format!("run-{family}"));
    let (d, r) = (dir.to_str().unwrap(), run.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_emo"))
        .args(["paper", "--model", d, "--out", r, "--limit", "1", "--seeds", "1", "--quiet", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{family}: emo paper failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for part in ["## Section 6", "## Section 7", "Table 2: circuit modulation"] {
        assert!(report.contains(part), "{family}: {part} missing from the report");
    }

    let directions = format!("run={}", run.join("directions.safetensors").display());
    let circuits = format!("run={}", run.join("circuits/all").display());
    let server = Server::start(&["--model", d, "--directions", &directions, "--circuits", &circuits, "--api-key", KEY]);
    let ask = |extra: serde_json::Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "Tell me about your weekend."}], "max_tokens": 12, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, reply) = server.post(Some(KEY), &body.to_string());
        assert_eq!(status, 200, "{family}: {reply}");
        assert_eq!(reply["usage"]["completion_tokens"], 12, "{family}: {reply}");
        content(&reply)
    };
    let plain = ask(json!({}));
    // Random weights decide greedy steps by wide margins: steer every layer so that the reply must move.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let last = config["num_hidden_layers"].as_u64().unwrap() - 1;
    let steered = ask(json!({"steering": {"emotion": "anger", "alpha": 8.0, "directions": "run", "layers": [0, last]}}));
    let modulated = ask(json!({"circuit": {"emotion": "fear", "scale": 10.0, "circuits": "run"}}));
    assert_ne!(steered, plain, "{family}: steering changed nothing");
    assert_ne!(modulated, plain, "{family}: modulation changed nothing");
}

#[test]
fn qwen3_runs_the_paper_and_serves() {
    paper_and_serve("qwen3");
}

#[test]
fn mistral_runs_the_paper_and_serves() {
    paper_and_serve("mistral");
}

#[test]
fn phi3_runs_the_paper_and_serves() {
    paper_and_serve("phi3");
}

#[test]
fn gemma2_runs_the_paper_and_serves() {
    paper_and_serve("gemma2");
}

#[test]
fn gemma3_runs_the_paper_and_serves() {
    paper_and_serve("gemma3");
}
