//! examples/interp_basics.rs prints its line, and Hugging Face's module hooks on the same ids give the same
//! values: the cached residual, the ablated logits, the pattern row, the steered continuation.
use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn interp_basics_prints_what_hugging_face_hooks_give() {
    // Cargo builds the examples before the tests: target/<profile>/examples beside this binary's deps/.
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().and_then(|d| d.parent()).unwrap().join("examples/interp_basics");
    assert!(example.exists(), "{} is missing: build it with `cargo build --examples`", example.display());
    let out = Command::new(&example).output().unwrap();
    assert!(out.status.success(), "interp_basics failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let ours: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));

    let gguf = emotion_circuits::model::model::resolve("smollm2-135m").unwrap();
    let python = std::env::var_os("EMO_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(python.exists(), "{} is missing: run `scripts/setup.sh --test`", python.display());
    let hf = Command::new(python)
        .arg(workspace().join("tests/support/hf_interp_basics.py"))
        .arg(&gguf)
        .arg(ours["input_ids"].to_string())
        .env("TQDM_DISABLE", "1")
        .output()
        .unwrap();
    assert!(hf.status.success(), "the Hugging Face reference failed: {}", String::from_utf8_lossy(&hf.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&hf.stdout).unwrap();

    let floats = |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let key = "resid_post_10_last_first8";
    for (a, b) in floats(&ours[key]).iter().zip(floats(&hf[key])) {
        assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{key}: {a} vs {b}");
    }
    let key = "ablate_l5_n123_last_logits_top5";
    let (a, b) = (ours[key].as_array().unwrap(), hf[key].as_array().unwrap());
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x[0], y[0], "{key}: token ids differ: {a:?} vs {b:?}");
        assert!((x[1].as_f64().unwrap() - y[1].as_f64().unwrap()).abs() < 1e-3, "{key}: {x} vs {y}");
    }
    let key = "pattern_l3_h0_last_row_sum";
    assert!((ours[key].as_f64().unwrap() - 1.0).abs() < 1e-5 && (hf[key].as_f64().unwrap() - 1.0).abs() < 1e-5);
    assert_eq!(ours["steered_text"], hf["steered_text"], "the steered continuation differs from Hugging Face's");
    eprintln!("ours: {stdout}");
}
