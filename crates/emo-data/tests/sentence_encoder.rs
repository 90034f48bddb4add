//! The sentence encoder against Hugging Face transformers, computed in this run: embeddings within 1e-4,
//! batching that does not change the result (1e-5), unit rows, and errors that name the file at fault.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use emo_data::SentenceEncoder;
use tch::{Device, Kind, Tensor};

/// Varied inputs: short, empty, whitespace only, punctuation, accents and other scripts, emoji, numbers,
/// one longer than the 256-token limit (so truncation is compared too).
fn texts() -> Vec<String> {
    let long = (0..120).map(|i| format!("word{i} and")).collect::<Vec<_>>().join(" ");
    vec![
        "Hi".into(),
        String::new(),
        "   ".into(),
        "The train was late again, and I was FURIOUS!!! Why does this always happen?!".into(),
        "Crème brûlée, naïve café — déjà vu; Straße über Köln.".into(),
        "我今天很高兴。 Сегодня я очень рад. 今日はとても嬉しい 😀🎉".into(),
        "My team finished the project a week early; our manager gave everyone a day off (3 days, 2024-05-01).".into(),
        "I booked a table at a new restaurant for my partner's birthday dinner. When we arrived, the host said \
         our booking had been cancelled, so we waited for an hour at the bar while the staff argued about it."
            .into(),
        long,
    ]
}

fn model_dir() -> PathBuf {
    let dir = SentenceEncoder::default_dir();
    assert!(dir.join("config.json").is_file(), "{} is missing: run `scripts/setup.sh` to install all-MiniLM-L6-v2", dir.display());
    dir
}

fn encoder() -> &'static SentenceEncoder {
    static E: OnceLock<SentenceEncoder> = OnceLock::new();
    E.get_or_init(|| SentenceEncoder::load(&model_dir(), Device::Cpu).unwrap_or_else(|e| panic!("{e}")))
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let (n, d) = t.size2().unwrap();
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).unwrap();
    assert_eq!(flat.len() as i64, n * d);
    flat.chunks(d as usize).map(<[f32]>::to_vec).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

#[test]
fn matches_hugging_face() {
    let dir = model_dir();
    let texts = texts();
    let scratch = common::scratch("bert-hf");
    let texts_path = scratch.join("texts.json");
    std::fs::write(&texts_path, serde_json::to_string(&texts).unwrap()).unwrap();
    let script = common::workspace().join("crates/emo-data/tests/support/hf_sentence_embeddings.py");
    let out = Command::new(common::python()).arg(&script).arg(&dir).arg(&texts_path).output().unwrap();
    assert!(
        out.status.success(),
        "the Hugging Face reference failed ({}): {}\n(run `scripts/setup.sh --test`)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hf: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let hf_ids: Vec<Vec<u32>> = serde_json::from_value(reference["ids"].clone()).unwrap();
    assert_eq!(hf.len(), texts.len());
    // The long text really is cut at the limit, so the comparison covers truncation.
    assert_eq!(hf_ids.last().unwrap().len(), 256);

    let enc = encoder();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = enc.encode(&refs).unwrap();
    assert_eq!(ours.size(), [texts.len() as i64, enc.dim() as i64]);
    assert_eq!((ours.kind(), ours.device()), (Kind::Float, Device::Cpu));
    let mut worst = 0f64;
    for (k, (o, h)) in rows(&ours).iter().zip(&hf).enumerate() {
        let diff = max_abs_diff(o, h);
        worst = worst.max(diff);
        assert!(diff <= 1e-4, "text {k} ({:?}): max |difference| {diff}", texts[k]);
    }
    eprintln!("all-MiniLM-L6-v2: worst |embedding difference| vs Hugging Face = {worst:.2e}");
}

#[test]
fn batching_does_not_change_embeddings() {
    let enc = encoder();
    // More than one internal batch of 32, lengths mixed, so sorting, padding and regrouping are exercised.
    let base = texts();
    let many: Vec<String> = (0..45).map(|i| format!("{} {}", base[i % base.len()], "again ".repeat(i % 7))).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let batched = rows(&enc.encode(&refs).unwrap());
    let mut worst = 0f64;
    for (k, text) in refs.iter().enumerate() {
        let alone = rows(&enc.encode(&[text]).unwrap());
        let diff = max_abs_diff(&batched[k], &alone[0]);
        worst = worst.max(diff);
        assert!(diff <= 1e-5, "text {k}: batched vs alone differ by {diff}");
        let norm: f32 = alone[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "text {k}: norm {norm}");
    }
    eprintln!("all-MiniLM-L6-v2: worst |batched - one by one| = {worst:.2e}");
    assert_eq!(enc.encode(&[]).unwrap().size(), [0, enc.dim() as i64]);
}

#[test]
fn throughput_200_sentences() {
    let enc = encoder();
    let words = ["the", "train", "was", "late", "again", "and", "everyone", "on", "platform", "grew", "angry"];
    let texts: Vec<String> = (0..200).map(|i| (0..25).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" ") + ".").collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let _ = enc.encode(&refs[..8]).unwrap(); // warm-up: LibTorch's first calls allocate and pick kernels
    let start = Instant::now();
    let e = enc.encode(&refs).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(e.size(), [200, enc.dim() as i64]);
    let profile = if cfg!(debug_assertions) { "test (dev)" } else { "release" };
    eprintln!(
        "encode: 200 texts of 25 words in {secs:.3} s = {:.0} texts/s ({profile} profile, {} torch threads)",
        200.0 / secs,
        tch::get_num_threads()
    );
}

#[test]
fn bad_folders_name_the_file() {
    let missing = common::scratch("bert-missing").join("no-such-model");
    let err = SentenceEncoder::load(&missing, Device::Cpu).err().expect("a missing folder must fail").to_string();
    assert!(err.contains(&missing.display().to_string()) && err.contains("scripts/setup.sh"), "{err}");

    let src = model_dir();
    let dir = common::scratch("bert-corrupt");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 384,").unwrap();
    let err = SentenceEncoder::load(&dir, Device::Cpu).err().expect("corrupt config.json must fail").to_string();
    assert!(err.contains(&dir.join("config.json").display().to_string()) && err.contains("JSON"), "{err}");

    // A config for another activation is refused, not encoded wrongly.
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("\"gelu\"", "\"relu\"")).unwrap();
    let err = SentenceEncoder::load(&dir, Device::Cpu).err().expect("relu must fail").to_string();
    assert!(err.contains("config.json") && err.contains("hidden_act"), "{err}");

    // A valid config without tokenizer.json or weights: the missing file is named.
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    let err = SentenceEncoder::load(&dir, Device::Cpu).err().expect("no tokenizer must fail").to_string();
    assert!(err.contains(&dir.join("tokenizer.json").display().to_string()), "{err}");
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let err = SentenceEncoder::load(&dir, Device::Cpu).err().expect("no weights must fail").to_string();
    assert!(err.contains(&dir.display().to_string()) && err.contains("safetensors"), "{err}");

    // Truncated weights: the safetensors file is named.
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let err = SentenceEncoder::load(&dir, Device::Cpu).err().expect("truncated weights must fail").to_string();
    assert!(err.contains(&dir.join("model.safetensors").display().to_string()), "{err}");
}
