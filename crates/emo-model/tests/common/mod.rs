//! Shared by the integration tests: where the set-up put the offline models and the reference Python.
//! A missing piece fails the test with what to run, never skips it.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use emo_model::{LoadOptions, Model};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder holding the offline models (`$EMO_MODELS_DIR`, else where `scripts/setup.sh` puts them).
pub fn models_dir() -> PathBuf {
    std::env::var_os("EMO_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join(".cache/models"))
}

/// The offline model file of an alias, or a panic telling how to install it.
pub fn model_file(alias: &str) -> PathBuf {
    emo_model::model::resolve(alias).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh --test` first)"))
}

/// The venv's Python with transformers, or a panic telling how to install it.
pub fn python() -> PathBuf {
    let p = std::env::var_os("EMO_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(p.exists(), "{} is missing: run `scripts/setup.sh --test`", p.display());
    p
}

/// A fresh scratch folder under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SmolLM2 on the CPU in f32, loaded once per test binary.
pub fn smollm2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let opts = LoadOptions::new(tch::Device::Cpu, tch::Kind::Float);
        Model::load("smollm2-135m", opts).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh --test` first)"))
    })
}

/// Conversations in the paper's prompt shapes, plus plain chat.
pub fn conversations() -> Vec<Vec<emo_model::ChatMessage>> {
    use emo_model::ChatMessage as M;
    let scenario = "I booked a table at a new restaurant for my partner's birthday dinner.";
    vec![
        vec![
            M::system("Always reply in anger.\nKeep the reply to at most two sentences."),
            M::user(format!("{scenario}\nWhen we arrived, the host said our booking had been cancelled.")),
        ],
        vec![M::system("Keep the reply to at most two sentences."), M::user(format!("{scenario}\nThe waiter brought us the menus."))],
        vec![
            M::system("Always reply in happiness.\nKeep the reply to at most two sentences."),
            M::user("My team finished the project a week early.\nOur manager gave everyone a day off."),
        ],
        vec![M::user("What is the capital of France?")],
        vec![M::user("Write a haiku about rain on 3 old roofs, 12 lines max!")],
    ]
}

/// Small deterministic PRNG (xorshift64*): the same bytes on every run, no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A uniform value in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}
