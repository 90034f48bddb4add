//! A judge that classifies a text's emotional style from its sentence embedding (all-MiniLM-L6-v2, run by
//! `emo-model`): multinomial logistic regression over seven classes (the six emotions and `none`), trained at
//! load time on `data/judge_corpus.jsonl`, a corpus written for this project. The text matches the target
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

/// The embedding judge.
pub struct EmbeddingJudge {
    encoder: SentenceEncoder,
    _vs: nn::VarStore,
    classifier: nn::Linear,
}

impl EmbeddingJudge {
    /// Loads the encoder from its default folder and trains on the built-in corpus.
    pub fn load_default() -> Result<Self, DataError> {
        let encoder = SentenceEncoder::load(&SentenceEncoder::default_dir(), Device::Cpu)?;
        Self::train(encoder, &builtin_corpus()?)
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
