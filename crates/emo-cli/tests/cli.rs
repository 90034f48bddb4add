//! The `emo` binary from the outside, on the real default model.
use std::process::Command;

// `emo paper` whole, resumed, sharded, and on Slurm.
#[path = "cli/shards.rs"]
mod shards;

fn emo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emo")).args(args).output().expect("run emo")
}

#[test]
fn generate_prints_one_json_object_per_prompt() {
    let out = emo(&["generate", "--device", "cpu", "--json", "--max-new-tokens", "8", "Hi", "Name a colour."]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "Hi");
    assert_eq!(lines[1]["prompt"], "Name a colour.");
    for l in &lines {
        let ids = l["token_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 8, "{l}");
        assert!(!l["reply"].as_str().unwrap().is_empty(), "{l}");
    }
}

#[test]
fn generate_prints_only_the_replies() {
    let out = emo(&["generate", "--device", "cpu", "--max-new-tokens", "6", "--system", "Answer briefly.", "Hi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.trim().is_empty());
    assert!(!text.contains("<|im_start|>") && !text.contains("Answer briefly."), "{text}");
}

#[test]
fn bench_prints_one_json_line_with_timings() {
    for hooks in ["none", "capture", "edit"] {
        let out = emo(&["bench", "--device", "cpu", "--batch", "2", "--tokens", "8", "--new-tokens", "4", "--reps", "2", "--hooks", hooks]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["forward_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["generate_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["hooks"], hooks);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = emo(&["generate", "--model", "no-such-model", "Hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model") && err.contains("smollm2-135m"), "{err}");
    let out = emo(&["bench", "--hooks", "sometimes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
    let out = emo(&["generate", "--device", "tpu", "Hi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tpu"));
}

#[test]
fn packed_weights_generate_and_bench_from_the_command_line() {
    let out = emo(&["generate", "--device", "cpu", "--dtype", "bf16", "--weights", "packed", "--json", "--max-new-tokens", "6", "Hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // SmolLM2's file is Q4_1 throughout: every projection packs, and the load line says so.
    assert!(err.contains("packed 210 of 210 projection matrices as int4"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["reply"].as_str().unwrap().is_empty(), "{v}");
    let out = emo(&["bench", "--device", "cpu", "--weights", "packed", "--batch", "1", "--tokens", "8", "--new-tokens", "2", "--reps", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(packed["weights"], "packed");
    let out = emo(&["bench", "--device", "cpu", "--batch", "1", "--tokens", "8", "--new-tokens", "2", "--reps", "1"]);
    let dense: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(packed["weight_mb"].as_f64().unwrap() < dense["weight_mb"].as_f64().unwrap() / 2.0, "{packed} vs {dense}");
    let out = emo(&["generate", "--weights", "int3", "Hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("int3"));
}

#[test]
fn dtype_auto_is_bf16_only_where_the_cpu_multiplies_bf16_natively() {
    // The kernel's own account of the CPU, read independently of the detection the binary uses.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).expect("a flags line in /proc/cpuinfo");
    let native_bf16 = flags.split_whitespace().any(|f| f == "avx512_bf16");
    let out = emo(&["bench", "--device", "cpu", "--dtype", "auto", "--batch", "1", "--tokens", "4", "--new-tokens", "1", "--reps", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dtype"], if native_bf16 { "bf16" } else { "f32" }, "{v}");
    let out = emo(&["bench", "--dtype", "f8"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("f8") && err.contains("auto"), "{err}");
}

#[test]
fn resolve_prints_the_model_file() {
    let out = emo(&["resolve", "qwen2.5-coder-0.5b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).unwrap();
    assert!(path.trim().ends_with("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"), "{path}");
}

#[test]
fn dataset_export_prints_the_split_in_the_papers_schema() {
    let out = emo(&["dataset", "export", "--split", "test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 160);
    for key in ["theme", "scenario", "event", "skeleton_id"] {
        assert!(lines[0].get(key).is_some(), "{key} missing in {}", lines[0]);
    }
    assert!(lines[0]["skeleton_id"].as_str().unwrap().contains("_test_"));
    let out = emo(&["dataset", "export", "--split", "train"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`train`"));
    let out = emo(&["dataset", "export", "--dataset", "/nonexistent.jsonl"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.jsonl"));
}

#[test]
fn judge_eval_prints_the_agreement_as_one_json_line() {
    let labels = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("labels.jsonl");
    let rows = [
        ("anger", "This is an outrage, I will fight this insult!", 1),
        ("happiness", "What a wonderful, joyful celebration.", 1),
        ("fear", "The meeting is at noon.", 0),
        ("sadness", "I weep for the loss of my dear friend.", 1),
    ];
    let text: String =
        rows.iter().map(|(e, t, m)| serde_json::json!({"emotion": e, "gen_text": t, "judge": {"match": m}}).to_string() + "\n").collect();
    std::fs::write(&labels, text).unwrap();
    let out = emo(&["judge-eval", "--labels", labels.to_str().unwrap(), "--judge", "lexicon", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["accuracy", "precision", "recall", "kappa", "texts_per_s"] {
        assert!(v[key].is_number(), "{key} missing in {v}");
    }
    assert_eq!(v["n"], 4);
    assert_eq!(v["cross"]["n"], 6);

    // An ensemble of a judge with itself agrees with it; --verdicts writes one line per label, subset too.
    let verdicts = labels.with_file_name("verdicts.jsonl");
    let args = ["judge-eval", "--labels", labels.to_str().unwrap(), "--json", "--limit", "2", "--verdicts", verdicts.to_str().unwrap()];
    let out = emo(&[&args[..], &["--judge", "lexicon+lexicon"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let both: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(both["judge"], "lexicon+lexicon");
    let pair = std::fs::read_to_string(&verdicts).unwrap();
    let out = emo(&[&args[..], &["--judge", "lexicon"]].concat());
    assert!(out.status.success());
    let single: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((both["n"].clone(), both["kappa"].clone()), (single["n"].clone(), single["kappa"].clone()));
    assert_eq!(pair, std::fs::read_to_string(&verdicts).unwrap());
    let rows: Vec<serde_json::Value> = pair.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["label"].clone(), rows[0]["emotion"].clone(), rows[0]["reference"].clone()), (1.into(), "anger".into(), true.into()));
    assert_eq!((rows[1]["label"].clone(), rows[1]["emotion"].clone()), (3.into(), "fear".into()));
    assert_eq!(rows[1]["matched"], false, "{pair}");
    let out = emo(&["judge-eval", "--labels", labels.to_str().unwrap(), "--judge", "lexicon+nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown judge `nope`"));

    let out = emo(&["judge-eval", "--labels", "/nonexistent/labels.jsonl"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/labels.jsonl"));
}

#[test]
fn section5_commands_run_end_to_end_on_a_small_run() {
    let run = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-section5-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let r = run.to_str().unwrap();
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // One scenario (18 prompts): the commands' plumbing is under test here, not the statistics.
    let text = ok(emo(&["elicit", "--out", r, "--limit", "1", "--max-new-tokens", "4", "--batch", "12", "--quiet", "--device", "cpu"]));
    assert!(text.contains("elicit: 18 prompts") && text.contains("| **all** |"), "{text}");
    // Once more: everything is committed, nothing is recomputed.
    let again = ok(emo(&["elicit", "--out", r, "--limit", "1", "--max-new-tokens", "4", "--batch", "12", "--quiet", "--device", "cpu"]));
    assert!(again.contains("elicit: 18 prompts"), "{again}");
    // The other split goes to its own prompting stage.
    let text = ok(emo(&["elicit", "--out", r, "--split", "test", "--limit", "1", "--max-new-tokens", "4", "--quiet", "--device", "cpu"]));
    assert!(text.contains("prompting-test: 18 prompts"), "{text}");
    let text = ok(emo(&["directions", r, "--all-groups", "--npz"]));
    assert!(text.contains("directions from 3 of 3"), "{text}");
    for f in ["directions.safetensors", "directions.json", "directions.npz", "control_vectors/fear.gguf", "analysis.json", "figures/pca.png"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let text = ok(emo(&["steer", r, "--split", "test", "--limit", "1", "--max-new-tokens", "12", "--layers", "10-20", "--quiet", "--device", "cpu"]));
    assert!(text.contains("steering-test: alpha 8 on layers 10-20 at last-prompt-and-generated, 18 prompts"), "{text}");
    // Section 6 on the same run: all samples (the embedding judge accepts few of SmolLM2's replies).
    let text = ok(emo(&["attribute", r, "--samples", "all", "--batch", "16", "--quiet", "--device", "cpu"]));
    assert!(text.contains("attribution over all samples ([3, 3, 3, 3, 3, 3] per emotion; delta_mu from 3 complete groups)"), "{text}");
    for f in ["neurons/anger.csv", "heads/fear.csv", "neurons.safetensors", "delta_mu.safetensors", "figures/heads.png", "figures/top_neurons.svg"] {
        assert!(run.join("attribution/all").join(f).is_file(), "{f}");
    }
    // Attribution patching beside it, compared with it, and a sweep whose targets it ranks.
    let text = ok(emo(&["attribute", r, "--samples", "all", "--method", "attribution-patching", "--quiet", "--device", "cpu"]));
    assert!(text.contains("attribution patching over all samples ([3, 3, 3, 3, 3, 3] per emotion)"), "{text}");
    assert!(text.contains("against the analytic ranking") && text.contains("neurons Spearman"), "{text}");
    for f in ["scores.safetensors", "summary.json", "agreement.json"] {
        assert!(run.join("attribution/all/patching").join(f).is_file(), "{f}");
    }
    let sweep = ["sweep", r, "--kind", "ablate", "--units", "heads", "--k", "0", "--k", "1", "--seeds", "1", "--limit", "1", "--samples", "all"];
    let text = ok(emo(&[&sweep[..], &["--ranking", "attribution-patching", "--quiet", "--device", "cpu"]].concat()));
    assert!(run.join("sweeps/ablate-heads-last-attribution-patching.csv").is_file(), "{text}");
    let text = ok(emo(&["report", r]));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(text.contains("report.md") && report.contains("Prompting, test split") && report.contains("Steering, test split"));
    assert!(report.contains("## Section 6") && report.contains("Units ranked from **all** elicitation samples"), "{report}");

    // Section 7: importance (one alpha), circuits, the allocation rule on the importance CSV, modulation.
    let text = ok(emo(&["importance", r, "--samples", "all", "--alphas", "0.3", "--quiet", "--device", "cpu"]));
    assert!(text.contains("sublayer importance over [3, 3, 3, 3, 3, 3] prompts per emotion") && text.contains("importance.png"), "{text}");
    let text = ok(emo(&["circuits", "build", r, "--samples", "all"]));
    assert!(text.contains("anger: 420 neurons, 180 heads") && text.contains("overlap between emotions"), "{text}");
    let csv = run.join("importance/all/importance.csv");
    let json = ok(emo(&["circuits", "allocate", "--importance", csv.to_str().unwrap(), "--n-layers", "30", "--n-heads", "9", "--d-mlp", "1536"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let built: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("circuits/all/fear.json")).unwrap()).unwrap();
    let mlp_k: Vec<u64> = built["layers"].as_array().unwrap().iter().map(|l| l["mlp"]["k"].as_u64().unwrap()).collect();
    assert_eq!(v["fear"]["mlp_k"], serde_json::json!(mlp_k), "the command and the built circuit follow one rule");
    assert_eq!(v["fear"]["attn_k"].as_array().unwrap().iter().map(|k| k.as_u64().unwrap()).sum::<u64>(), 180);
    let text = ok(emo(&[
        "modulate",
        r,
        "--samples",
        "all",
        "--limit",
        "1",
        "--emotions",
        "anger,fear",
        "--scales",
        "anger=0.8",
        "--max-new-tokens",
        "12",
        "--quiet",
        "--device",
        "cpu",
    ]));
    assert!(text.contains("modulation-test: circuits") && text.contains("[0.8, 1.0, 1.0, 1.0, 1.0, 1.0]") && text.contains("6 prompts"), "{text}");
    ok(emo(&["report", r]));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Section 7") && report.contains("Table 2: circuit modulation, stage `modulation-test`"), "{report}");

    // Mistakes are named.
    let err = |args: &[&str]| {
        let out = emo(args);
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let e = err(&["elicit", "--out", r, "--limit", "3", "--max-new-tokens", "4", "--quiet", "--device", "cpu"]);
    assert!(e.contains("other settings") && e.contains("dataset"), "{e}");
    let e = err(&["directions", env!("CARGO_TARGET_TMPDIR")]);
    assert!(e.contains("not a run folder"), "{e}");
    let e = err(&["steer", r, "--layers", "20-10", "--limit", "1", "--device", "cpu"]);
    assert!(e.contains("layer range 20..=10"), "{e}");
    let e = err(&["steer", r, "--positions", "middle", "--device", "cpu"]);
    assert!(e.contains("unknown positions `middle`"), "{e}");
    let e = err(&["attribute", r, "--samples", "some", "--device", "cpu"]);
    assert!(e.contains("unknown sample filter `some`"), "{e}");
    let e = err(&["attribute", r, "--method", "vibes", "--device", "cpu"]);
    assert!(e.contains("unknown --method `vibes`"), "{e}");
    let e = err(&["modulate", r, "--samples", "all", "--scales", "anger:0.8", "--device", "cpu"]);
    assert!(e.contains("--scales `anger:0.8`: expected EMOTION=SCALE"), "{e}");
    let e = err(&["modulate", r, "--samples", "all", "--emotions", "joy", "--device", "cpu"]);
    assert!(e.contains("joy"), "{e}");
    // The paper's budget fits a model with fewer heads (one a layer here); an explicit budget too big does not.
    let one_head = ok(emo(&["circuits", "allocate", "--importance", csv.to_str().unwrap(), "--n-layers", "30", "--n-heads", "1", "--d-mlp", "1536"]));
    let v: serde_json::Value = serde_json::from_str(one_head.trim()).unwrap();
    assert_eq!(v["fear"]["attn_k"], serde_json::json!(vec![1; 30]));
    let e = err(&[
        "circuits",
        "allocate",
        "--importance",
        csv.to_str().unwrap(),
        "--n-layers",
        "30",
        "--n-heads",
        "9",
        "--d-mlp",
        "1536",
        "--k-total",
        "2000",
    ]);
    assert!(e.contains("more than the model's 270"), "{e}");
    let e = err(&["elicit", "--out", r, "--judge", "vibes", "--limit", "2", "--device", "cpu"]);
    assert!(e.contains("unknown judge `vibes`"), "{e}");
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn elicit_uses_the_chosen_prompt_set_for_the_whole_run() {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-prompts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let elicit = |run: &std::path::Path, extra: &[&str]| {
        let mut args =
            vec!["elicit", "--out", run.to_str().unwrap(), "--limit", "1", "--max-new-tokens", "2", "--batch", "18", "--quiet", "--device", "cpu"];
        args.extend_from_slice(extra);
        emo(&args)
    };
    let prompts_of = |run: &std::path::Path| -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
        m["prompts"].clone()
    };
    let prompt_tokens = |run: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(run.join("replies.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt_tokens"].as_u64().unwrap())
            .collect()
    };
    let (paper, strong) = (tmp.join("paper"), tmp.join("strong"));
    let out = elicit(&paper, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(prompt set paper)"));
    let out = elicit(&strong, &["--prompt", "strong"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(prompts_of(&paper)["prompt_set"], "paper");
    let p = prompts_of(&strong);
    assert_eq!(p["prompt_set"], "strong");
    assert!(p["elicitation_system"].as_str().unwrap().starts_with("You are feeling intense {emotion}."), "{p}");
    // The prompts the model saw are the strong ones: longer system prompts, row by row.
    let (a, b) = (prompt_tokens(&paper), prompt_tokens(&strong));
    assert_eq!(a.len(), 18);
    assert!(a.iter().zip(&b).all(|(a, b)| b > a), "paper {a:?} vs strong {b:?}");
    // A run keeps its set: resuming without --prompt is fine, another set is refused, naming both.
    let out = elicit(&strong, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = String::from_utf8(elicit(&strong, &["--prompt", "paper"]).stderr).unwrap();
    assert!(e.contains("prompt set `strong`") && e.contains("`paper` differs"), "{e}");
    // A custom set from a file, checked field by field.
    let bad = tmp.join("bad.json");
    std::fs::write(&bad, r#"{"elicitation_system": "Be emotional.", "neutral_system": "Reply briefly."}"#).unwrap();
    let e = String::from_utf8(elicit(&tmp.join("custom"), &["--prompt", bad.to_str().unwrap()]).stderr).unwrap();
    assert!(e.contains("bad.json") && e.contains("elicitation_system") && e.contains("{emotion}"), "{e}");
    let e = String::from_utf8(elicit(&tmp.join("custom"), &["--prompt", "loud"]).stderr).unwrap();
    assert!(e.contains("unknown prompt set `loud`"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}
