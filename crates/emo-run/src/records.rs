//! Reply records in the paper's schema (`key`, `skeleton_id`, `theme`, `valence`, `emotion`, `gen_text`,
//! `judge`), one JSON object per line, as every generating stage writes them.
use std::fs;
use std::path::Path;

use emo_data::{Emotion, Scenario, Valence};
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, RunError};

/// The judge's verdict in a reply record: the paper's `{match, reason}` plus our score and failure flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// 1 when the reply expresses the target emotion (0 also when the judge failed, as upstream counted it).
    #[serde(rename = "match")]
    pub matched: u8,
    /// Why (the judge's name and score for local judges).
    pub reason: String,
    /// The judge's confidence in a match, 0..=1.
    pub score: f64,
    /// Whether the judge failed to decide (then `match` is 0).
    pub failed: bool,
}

/// One reply in the paper's record schema (`key`, `skeleton_id`, `theme`, `valence`, `emotion`, `gen_text`,
/// `judge`), plus where it sits in the run and how generation stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyRecord {
    /// `{skeleton_id}__{valence}__{emotion}`.
    pub key: String,
    /// The scenario's id.
    pub skeleton_id: String,
    /// The scenario's theme.
    pub theme: String,
    /// `positive`, `neutral` or `negative`.
    pub valence: String,
    /// The target emotion.
    pub emotion: String,
    /// The reply.
    pub gen_text: String,
    /// The verdict.
    pub judge: JudgeRecord,
    /// Index of the prompt in the stage's order.
    pub index: usize,
    /// Index of the scenario in the split.
    pub scenario: usize,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Reply length in tokens.
    pub new_tokens: usize,
    /// `eos` or `length`.
    pub stop: String,
}

impl ReplyRecord {
    /// The target emotion, parsed.
    pub fn emotion(&self) -> Result<Emotion> {
        Ok(self.emotion.parse()?)
    }

    /// The valence, parsed.
    pub fn valence(&self) -> Result<Valence> {
        Ok(self.valence.parse()?)
    }

    /// Whether the judge said it matches.
    pub fn matched(&self) -> bool {
        self.judge.matched == 1
    }
}

/// Reads reply records, naming the file and line of a bad one.
pub fn read_records(path: &Path) -> Result<Vec<ReplyRecord>> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| RunError::Format { path: path.into(), msg: format!("line {}: {e}", i + 1) }))
        .collect()
}

/// Reply records as JSONL, one object per line.
pub fn records_jsonl(records: &[ReplyRecord]) -> String {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r).expect("records serialise"));
        s.push('\n');
    }
    s
}

/// The key of a prompt in the paper's schema.
pub fn record_key(s: &Scenario, v: Valence, e: Emotion) -> String {
    format!("{}__{}__{}", s.skeleton_id, v.name(), e.name())
}
