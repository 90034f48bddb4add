//! SEV scenario-event data in the paper's JSONL schema:
//! `{"theme", "scenario", "event": {"positive", "neutral", "negative"}, "skeleton_id"}`, one scenario a line.
//!
//! The project ships its own SEV-style data, written for it (`data/sev.jsonl`, `data/test.jsonl`), as the
//! default of every command; the paper's files (GPL-3.0) are loaded from wherever the user keeps them.
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::{DataError, Valence};

/// The three outcome events of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Events {
    /// A good outcome.
    pub positive: String,
    /// A procedural outcome.
    pub neutral: String,
    /// A bad outcome.
    pub negative: String,
}

impl Events {
    /// The event of one valence.
    pub fn get(&self, v: Valence) -> &str {
        match v {
            Valence::Positive => &self.positive,
            Valence::Neutral => &self.neutral,
            Valence::Negative => &self.negative,
        }
    }
}

/// One scenario with its three events (a "skeleton" in the authors' code).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scenario {
    /// Theme as spelled in the paper (`Work/Job`, ...).
    pub theme: String,
    /// The neutral first-person scenario.
    pub scenario: String,
    /// Its outcome events.
    #[serde(rename = "event")]
    pub events: Events,
    /// Unique id (`work_00`, `work_test_00`, ...).
    pub skeleton_id: String,
}

/// Which split of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The discovery split (SEV).
    Sev,
    /// The held-out test split, disjoint scenarios.
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Sev => "sev",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "sev" => Ok(Split::Sev),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownSplit(s.to_string())),
        }
    }
}

/// Both splits.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The discovery split.
    pub sev: Vec<Scenario>,
    /// The test split.
    pub test: Vec<Scenario>,
}

const BUILTIN_SEV: &str = include_str!("../data/sev.jsonl");
const BUILTIN_TEST: &str = include_str!("../data/test.jsonl");

impl Dataset {
    /// The project's own SEV-style data, the default of every command.
    pub fn builtin() -> Dataset {
        // Checked by this crate's tests; a failure here is a bug in the shipped files.
        let sev = parse_jsonl(Path::new("<builtin>/sev.jsonl"), BUILTIN_SEV).expect("built-in sev.jsonl is valid");
        let test = parse_jsonl(Path::new("<builtin>/test.jsonl"), BUILTIN_TEST).expect("built-in test.jsonl is valid");
        Dataset { sev, test }
    }

    /// Loads a dataset folder holding `sev.jsonl` and `test_set.jsonl` (the paper's names) or `test.jsonl`.
    pub fn load_dir(dir: &Path) -> Result<Dataset, DataError> {
        let sev = load_jsonl(&dir.join("sev.jsonl"))?;
        let test_path =
            [dir.join("test_set.jsonl"), dir.join("test.jsonl")].into_iter().find(|p| p.exists()).unwrap_or_else(|| dir.join("test_set.jsonl"));
        let test = load_jsonl(&test_path)?;
        Ok(Dataset { sev, test })
    }

    /// One split.
    pub fn split(&self, split: Split) -> &[Scenario] {
        match split {
            Split::Sev => &self.sev,
            Split::Test => &self.test,
        }
    }
}

/// Loads a split: `source` is a JSONL file (taken as the split asked for) or a dataset folder
/// ([`Dataset::load_dir`]); `None` is the built-in data.
pub fn load_split(source: Option<&Path>, split: Split) -> Result<Vec<Scenario>, DataError> {
    match source {
        None => Ok(Dataset::builtin().split(split).to_vec()),
        Some(p) if p.is_dir() => Ok(Dataset::load_dir(p)?.split(split).to_vec()),
        Some(p) => load_jsonl(p),
    }
}

/// `n` scenarios spread evenly over `scenarios` (every theme of a split is kept when `n` >= the number of
/// themes), in order; all of them when `n` is at least their number.
pub fn spread(scenarios: &[Scenario], n: usize) -> Vec<Scenario> {
    if n >= scenarios.len() {
        return scenarios.to_vec();
    }
    (0..n).map(|i| scenarios[i * scenarios.len() / n].clone()).collect()
}

/// Reads a JSONL file of scenarios in the paper's schema.
pub fn load_jsonl(path: &Path) -> Result<Vec<Scenario>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse_jsonl(path, &text)
}

/// Parses JSONL text; `path` names the source in errors. Blank lines are allowed; anything else that is not
/// a complete record (bad JSON, a missing or empty field or valence, a duplicate id) is an error naming the
/// line and field.
pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Scenario>, DataError> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |field: &str, msg: String| DataError::Record { path: PathBuf::from(path), line: line_no, field: field.to_string(), msg };
        let v: Value = serde_json::from_str(line).map_err(|e| err("json", format!("not valid JSON: {e}")))?;
        let text_field = |obj: &Value, field: &str, name: &str| -> Result<String, DataError> {
            match obj.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(Value::String(_)) => Err(err(name, "is empty".into())),
                Some(other) => Err(err(name, format!("must be a string, got {other}"))),
                None => Err(err(name, "is missing".into())),
            }
        };
        let theme = text_field(&v, "theme", "theme")?;
        let scenario = text_field(&v, "scenario", "scenario")?;
        let skeleton_id = text_field(&v, "skeleton_id", "skeleton_id")?;
        let event = v.get("event").ok_or_else(|| err("event", "is missing".into()))?;
        if !event.is_object() {
            return Err(err("event", format!("must be an object with positive, neutral, negative, got {event}")));
        }
        let events = Events {
            positive: text_field(event, "positive", "event.positive")?,
            neutral: text_field(event, "neutral", "event.neutral")?,
            negative: text_field(event, "negative", "event.negative")?,
        };
        if !ids.insert(skeleton_id.clone()) {
            return Err(err("skeleton_id", format!("duplicate id `{skeleton_id}`")));
        }
        out.push(Scenario { theme, scenario, events, skeleton_id });
    }
    Ok(out)
}

/// Writes scenarios as JSONL in the paper's schema (keys in its order).
pub fn to_jsonl(scenarios: &[Scenario]) -> String {
    let mut s = String::new();
    for sc in scenarios {
        // serde_json keeps struct field order: theme, scenario, event, skeleton_id.
        s.push_str(&serde_json::to_string(sc).expect("scenarios serialize"));
        s.push('\n');
    }
    s
}
