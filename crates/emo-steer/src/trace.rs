//! The per-token emotion readout: which emotion a reply expresses, token by token. Each generated token is
//! scored by the state that chose it (the residual at the token before it): its projection on each emotion's
//! unit `resid_post` direction, the paper's scores, averaged over a layer range (by default the layers of
//! the reference direction, 21-25 of 28 scaled to the model).
//!
//! [`EmotionTracer`] builds the readout ([`emo_model::hooks::Readout`]) that the continuous batch, `generate`
//! and the server apply; [`EmotionTrace`] is a reply's scores with its token texts, mean and top emotion, as
//! `emo serve` returns it.
use std::collections::BTreeMap;

use emo_data::Emotion;
use emo_model::hooks::{ForwardScores, Readout};
use emo_model::{HookPoint, Model, TransformerConfig};
use serde::Serialize;

use crate::directions::EmotionDirections;
use crate::error::{Error, Result};
use crate::paper::{scaled_range, REFERENCE_DIRECTION_LAYERS};

/// The layers a trace averages over by default: those of the paper's reference direction (21-25 of 28),
/// scaled to `cfg`'s depth.
pub fn reference_layers(cfg: &TransformerConfig) -> (usize, usize) {
    scaled_range(REFERENCE_DIRECTION_LAYERS, cfg.n_layers)
}

/// Scores the six emotions at the token being decoded with a set of directions.
#[derive(Clone, Debug)]
pub struct EmotionTracer {
    readout: Readout,
    layers: (usize, usize),
}

impl EmotionTracer {
    /// Scores `hook_resid_post` of the inclusive range `layers` against `directions`' resid_post directions,
    /// averaged over the layers; the directions are put on `device`.
    pub fn new(directions: &EmotionDirections, layers: (usize, usize), device: tch::Device) -> Result<Self> {
        let (n_layers, _) = directions.dims();
        if layers.0 > layers.1 || layers.1 >= n_layers {
            return Err(Error::Invalid(format!("trace layers {}..={} are not within 0..{n_layers}", layers.0, layers.1)));
        }
        // Only the layers read go to the device. [6, d] per layer: row e is emotion e's unit direction.
        let post = directions.resid_post.narrow(1, layers.0 as i64, (layers.1 - layers.0 + 1) as i64).to_device(device);
        let points = (layers.0..=layers.1).map(|l| (HookPoint::ResidPost(l), post.select(1, (l - layers.0) as i64))).collect();
        Ok(EmotionTracer { readout: Readout::new(points)?, layers })
    }

    /// [`EmotionTracer::new`] at the reference layers of `model`, on its device.
    pub fn reference(model: &Model, directions: &EmotionDirections) -> Result<Self> {
        let cfg = model.transformer.config();
        EmotionTracer::new(directions, reference_layers(cfg), model.transformer.device())
    }

    /// The readout to put on a row ([`emo_model::RowControl::readout`]) or in [`emo_model::hooks::Readouts`].
    pub fn readout(&self) -> &Readout {
        &self.readout
    }

    /// The inclusive layer range averaged.
    pub fn layers(&self) -> (usize, usize) {
        self.layers
    }
}

/// Turns a growing token sequence into the text each token adds (empty for a token that ends inside a
/// character; the text appears with the token that completes it), so that the pieces concatenate to the
/// decoded reply.
#[derive(Default, Debug)]
pub struct Pieces {
    text: String,
}

impl Pieces {
    /// The text the last of `tokens` adds to the decoding of the ones before it.
    pub fn next(&mut self, model: &Model, tokens: &[u32]) -> Result<String> {
        let text = model.tokenizer.decode(tokens, true)?;
        Ok(self.push(text))
    }

    /// The text `decoded` (the whole reply so far) adds to the previous one.
    pub fn push(&mut self, decoded: String) -> String {
        // A held-back partial character decodes as U+FFFD until it completes: keep it out of the pieces.
        let stable = decoded.trim_end_matches('\u{FFFD}');
        let piece = match stable.strip_prefix(self.text.as_str()) {
            Some(rest) => rest.to_string(),
            // Decoding is not always prefix-stable (a space merged into the next token): the new text whole.
            None => stable.to_string(),
        };
        self.text = stable.to_string();
        piece
    }
}

/// A reply's per-token emotion readout: what `emo serve` returns in `choices[0].emotion_trace`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EmotionTrace {
    /// The six emotions, in the order of each score row.
    pub emotions: Vec<&'static str>,
    /// The text each generated token added.
    pub tokens: Vec<String>,
    /// Per generated token, one score per emotion.
    pub scores: Vec<Vec<f32>>,
}

impl EmotionTrace {
    /// Adds a token's text and scores.
    pub fn push(&mut self, text: String, scores: Vec<f32>) {
        if self.emotions.is_empty() {
            self.emotions = Emotion::ALL.iter().map(|e| e.name()).collect();
        }
        self.tokens.push(text);
        self.scores.push(scores);
    }

    /// The trace of a reply: its generated `tokens` (decoded by `model`'s tokenizer into the text each adds)
    /// with their `scores`, one row per token, in order.
    pub fn of_reply(model: &Model, tokens: &[u32], scores: &[Vec<f32>]) -> Result<EmotionTrace> {
        let mut trace = EmotionTrace::default();
        let mut pieces = Pieces::default();
        for (i, s) in scores.iter().enumerate().take(tokens.len()) {
            trace.push(pieces.next(model, &tokens[..=i])?, s.clone());
        }
        Ok(trace)
    }

    /// The trace of row `row` of a generation read by [`emo_model::hooks::Readouts`]: its generated `tokens`
    /// with the scores of `forwards` (what `Readouts::take` returned: forward i chose token i).
    pub fn of_row(model: &Model, tokens: &[u32], forwards: &[ForwardScores], row: usize) -> Result<EmotionTrace> {
        let scores = forwards
            .iter()
            .take(tokens.len())
            .map(|f| f.get(row).cloned().flatten().ok_or_else(|| Error::Invalid(format!("row {row} of the generation was not read"))))
            .collect::<Result<Vec<_>>>()?;
        EmotionTrace::of_reply(model, tokens, &scores)
    }

    /// Adds another trace's tokens after these.
    pub fn append(&mut self, other: EmotionTrace) {
        for (text, scores) in other.tokens.into_iter().zip(other.scores) {
            self.push(text, scores);
        }
    }

    /// The mean score of each emotion over the tokens (empty without tokens).
    pub fn mean(&self) -> BTreeMap<&'static str, f32> {
        let n = self.scores.len() as f32;
        Emotion::ALL.iter().enumerate().filter(|_| n > 0.0).map(|(j, e)| (e.name(), self.scores.iter().map(|s| s[j]).sum::<f32>() / n)).collect()
    }

    /// The emotion of the highest mean score.
    pub fn top(&self) -> Option<&'static str> {
        self.mean().into_iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(e, _)| e)
    }

    /// The JSON summary: `{"emotions", "tokens", "scores", "mean", "top"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "emotions": Emotion::ALL.iter().map(|e| e.name()).collect::<Vec<_>>(),
            "tokens": self.tokens,
            "scores": self.scores,
            "mean": self.mean(),
            "top": self.top(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_the_text_and_hold_back_partial_characters() {
        let mut p = Pieces::default();
        let got: Vec<String> = ["Hel", "Hello", "Hello \u{FFFD}", "Hello é", "Hello é!"].iter().map(|s| p.push(s.to_string())).collect();
        assert_eq!(got, ["Hel", "lo", " ", "é", "!"]);
        assert_eq!(got.concat(), "Hello é!");
    }

    #[test]
    fn mean_and_top() {
        let mut t = EmotionTrace::default();
        assert_eq!(t.top(), None);
        t.push("a".into(), vec![1.0, 0.0, 0.0, 0.0, 0.0, 3.0]);
        t.push("b".into(), vec![3.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(t.mean()["anger"], 2.0);
        assert_eq!(t.top(), Some("anger"));
        assert_eq!(t.to_json()["tokens"], serde_json::json!(["a", "b"]));
    }
}
