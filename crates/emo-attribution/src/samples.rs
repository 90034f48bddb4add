//! Which elicitation samples section 6 reads: those whose reply the judge accepted (the paper's choice), or
//! all of them (for models whose replies rarely pass the judge; the report says which).
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use emo_data::{Emotion, Valence};
use emo_run::{ReplyRecord, Result, RunError};
use serde::{Deserialize, Serialize};

/// Which samples are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleFilter {
    /// Replies the judge said express their emotion (the paper).
    Accepted,
    /// Every sample, whatever the verdict.
    All,
}

impl fmt::Display for SampleFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleFilter::Accepted => "accepted",
            SampleFilter::All => "all",
        })
    }
}

impl FromStr for SampleFilter {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "accepted" => Ok(SampleFilter::Accepted),
            "all" => Ok(SampleFilter::All),
            _ => Err(RunError::Invalid(format!("unknown sample filter `{s}` (expected accepted or all)"))),
        }
    }
}

/// One elicitation sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Its index in the elicitation's prompt order.
    pub index: usize,
    /// Its scenario (index in the split).
    pub scenario: usize,
    /// Its event's valence.
    pub valence: Valence,
    /// Its target emotion.
    pub emotion: Emotion,
    /// Whether all six emotions of its (scenario, valence) group are among the selected samples: only such
    /// groups enter delta_mu.
    pub complete_group: bool,
}

/// The samples of `records` (an elicitation's replies) that `filter` keeps, in prompt order.
pub fn select(records: &[ReplyRecord], filter: SampleFilter) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for r in records {
        if filter == SampleFilter::Accepted && !r.matched() {
            continue;
        }
        samples.push(Sample { index: r.index, scenario: r.scenario, valence: r.valence()?, emotion: r.emotion()?, complete_group: false });
    }
    let mut members: HashMap<(usize, Valence), [bool; 6]> = HashMap::new();
    for s in &samples {
        members.entry((s.scenario, s.valence)).or_default()[s.emotion.index()] = true;
    }
    for s in &mut samples {
        s.complete_group = members[&(s.scenario, s.valence)].iter().all(|&b| b);
    }
    Ok(samples)
}
