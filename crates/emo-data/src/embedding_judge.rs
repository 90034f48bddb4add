//! A judge that classifies a text's emotional style from its sentence embedding (all-MiniLM-L6-v2, run by
//! `emo-model`): multinomial logistic regression over seven classes (the six emotions and `none`), trained on
//! `data/judge_corpus.jsonl`, a corpus written for this project (once: the weights are kept beside the
//! encoder). The text matches the target
//! when the target is the most probable class; the score is the target's probability.
//!
//! The decision rule was fixed before measuring; nothing is fitted or tuned on the paper's labels.
use std::path::Path;

use crate::sentence_encoder::SentenceEncoder;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::judge::{Judge, Verdict};
use crate::{DataError, Emotion};

const CORPUS: &str = include_str!("../data/judge_corpus.jsonl");
/// Class labels: the six emotions in the paper's order, then `none`.
pub const CLASSES: [&str; 7] = ["anger", "sadness", "happiness", "fear", "surprise", "disgust", "none"];
const STEPS: i64 = 400;
const LEARNING_RATE: f64 = 0.05;
const WEIGHT_DECAY: f64 = 1e-3;

/// One training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Index into [`CLASSES`].
    pub class: usize,
    /// The text.
    pub text: String,
}

/// The built-in training corpus.
pub fn builtin_corpus() -> Result<Vec<Example>, DataError> {
    parse_corpus(Path::new("<builtin>/judge_corpus.jsonl"), CORPUS)
}

/// Parses `{"label", "text"}` lines; errors name the line and field.
pub fn parse_corpus(path: &Path, text: &str) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let err = |field: &str, msg: String| DataError::Record { path: path.into(), line: i + 1, field: field.into(), msg };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err("json", e.to_string()))?;
        let label = v.get("label").and_then(|l| l.as_str()).ok_or_else(|| err("label", "missing".into()))?;
        let class = CLASSES.iter().position(|c| *c == label).ok_or_else(|| err("label", format!("unknown label `{label}`")))?;
        let text = v.get("text").and_then(|t| t.as_str()).filter(|t| !t.trim().is_empty());
        let text = text.ok_or_else(|| err("text", "missing or empty".into()))?;
        out.push(Example { class, text: text.to_string() });
    }
    Ok(out)
}

/// What a trained classifier depends on, hashed: the examples, the training constants, the LibTorch version,
/// and the encoder (its configuration, and its weights' size and first MiB).
fn training_key(encoder_dir: &Path, examples: &[Example]) -> Result<String, DataError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    for e in examples {
        h.update(format!("{}\t{}\n", e.class, e.text));
    }
    h.update(format!("{STEPS} {LEARNING_RATE} {WEIGHT_DECAY} {CLASSES:?} {}", emo_model::LIBTORCH_VERSION));
    let io = |e: std::io::Error, f: &Path| DataError::Io { path: f.into(), source: e };
    let config = encoder_dir.join("config.json");
    h.update(std::fs::read(&config).map_err(|e| io(e, &config))?);
    let weights = encoder_dir.join("model.safetensors");
    let file = std::fs::File::open(&weights).map_err(|e| io(e, &weights))?;
    h.update(file.metadata().map_err(|e| io(e, &weights))?.len().to_le_bytes());
    let mut head = Vec::new();
    file.take(1 << 20).read_to_end(&mut head).map_err(|e| io(e, &weights))?;
    h.update(&head);
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The embedding judge.
pub struct EmbeddingJudge {
    encoder: SentenceEncoder,
    _vs: nn::VarStore,
    classifier: nn::Linear,
}

impl EmbeddingJudge {
    /// Loads the encoder from its default folder and trains on the built-in corpus. The training (encoding
    /// the corpus, 400 Adam steps: about ten seconds on two cores) runs once: its weights are kept beside the
    /// encoder, named by a hash of everything the training depends on, and read back by later loads.
    pub fn load_default() -> Result<Self, DataError> {
        let dir = SentenceEncoder::default_dir();
        let encoder = SentenceEncoder::load(&dir, Device::Cpu)?;
        let examples = builtin_corpus()?;
        let cache = dir.join(format!("emo-judge-{}.safetensors", training_key(&dir, &examples)?));
        Self::train_cached(encoder, &examples, &cache)
    }

    /// [`EmbeddingJudge::train`], or the weights a previous training left in `cache` (which must be named
    /// for exactly this encoder and these examples). A cache that cannot be read is trained over; one that
    /// cannot be written (a read-only folder) only costs the next load its training.
    pub fn train_cached(encoder: SentenceEncoder, examples: &[Example], cache: &Path) -> Result<Self, DataError> {
        if cache.is_file() {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let classifier = nn::linear(vs.root(), encoder.dim() as i64, CLASSES.len() as i64, Default::default());
            if vs.load(cache).is_ok() {
                return Ok(EmbeddingJudge { encoder, _vs: vs, classifier });
            }
        }
        let judge = Self::train(encoder, examples)?;
        // Written whole under a temporary name, then renamed: a concurrent load sees the old file or the new.
        let tmp = cache.with_extension(format!("{}.safetensors", std::process::id()));
        if judge._vs.save(&tmp).is_ok() {
            let _ = std::fs::rename(&tmp, cache);
        }
        let _ = std::fs::remove_file(&tmp);
        Ok(judge)
    }

    /// Trains the classifier on `examples` (deterministic: fixed seed, full-batch Adam).
    pub fn train(encoder: SentenceEncoder, examples: &[Example]) -> Result<Self, DataError> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let x = encoder.encode(&texts)?;
        let y = Tensor::from_slice(&examples.iter().map(|e| e.class as i64).collect::<Vec<_>>());
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let classifier = nn::linear(vs.root(), encoder.dim() as i64, CLASSES.len() as i64, Default::default());
        let mut opt = nn::Adam { wd: WEIGHT_DECAY, ..Default::default() }.build(&vs, LEARNING_RATE).map_err(emo_model::ModelError::Torch)?;
        for _ in 0..STEPS {
            let loss = classifier.forward(&x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        }
        Ok(EmbeddingJudge { encoder, _vs: vs, classifier })
    }

    /// Class probabilities of each text, [n, 7] in [`CLASSES`] order.
    pub fn probabilities(&self, texts: &[&str]) -> Result<Tensor, DataError> {
        let x = self.encoder.encode(texts)?;
        Ok(tch::no_grad(|| self.classifier.forward(&x).softmax(-1, Kind::Float)))
    }
}

impl Judge for EmbeddingJudge {
    fn name(&self) -> String {
        "embedding".into()
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<&str> = items.iter().map(|(_, t)| *t).collect();
        let p = self.probabilities(&texts)?;
        let best = Vec::<i64>::try_from(p.argmax(-1, false)).map_err(emo_model::ModelError::Torch)?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, (e, _))| {
                let score = p.double_value(&[i as i64, e.index() as i64]);
                Verdict::decided(best[i] as usize == e.index(), score)
            })
            .collect())
    }
}
