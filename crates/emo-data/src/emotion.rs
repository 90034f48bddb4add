//! The six emotions and three valences, in the paper's order everywhere.
use std::fmt;
use std::str::FromStr;

use crate::DataError;

/// One of the six basic emotions the paper studies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Emotion {
    /// anger
    Anger,
    /// sadness
    Sadness,
    /// happiness
    Happiness,
    /// fear
    Fear,
    /// surprise
    Surprise,
    /// disgust
    Disgust,
}

impl Emotion {
    /// All six, in the paper's order: anger, sadness, happiness, fear, surprise, disgust.
    pub const ALL: [Emotion; 6] = [Emotion::Anger, Emotion::Sadness, Emotion::Happiness, Emotion::Fear, Emotion::Surprise, Emotion::Disgust];

    /// The lowercase name used in prompts and files.
    pub fn name(self) -> &'static str {
        match self {
            Emotion::Anger => "anger",
            Emotion::Sadness => "sadness",
            Emotion::Happiness => "happiness",
            Emotion::Fear => "fear",
            Emotion::Surprise => "surprise",
            Emotion::Disgust => "disgust",
        }
    }

    /// Position in [`Emotion::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Emotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Finds `s` (trimmed, any case) among `all` by name; the error lists the accepted names.
fn parse_name<T: Copy, const N: usize>(kind: &'static str, s: &str, all: [T; N], name: fn(T) -> &'static str) -> Result<T, DataError> {
    let wanted = s.trim().to_lowercase();
    all.into_iter().find(|&x| name(x) == wanted).ok_or_else(|| DataError::UnknownName {
        kind,
        value: s.to_string(),
        expected: all.map(name).join(", "),
    })
}

impl FromStr for Emotion {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        parse_name("emotion", s, Emotion::ALL, Emotion::name)
    }
}

/// The valence of a scenario's outcome event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Valence {
    /// A good outcome.
    Positive,
    /// A procedural, neither good nor bad, outcome.
    Neutral,
    /// A bad outcome.
    Negative,
}

impl Valence {
    /// All three, in the order of the data files.
    pub const ALL: [Valence; 3] = [Valence::Positive, Valence::Neutral, Valence::Negative];

    /// The lowercase name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Valence::Positive => "positive",
            Valence::Neutral => "neutral",
            Valence::Negative => "negative",
        }
    }

    /// Position in [`Valence::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Valence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Valence {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        parse_name("valence", s, Valence::ALL, Valence::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_order() {
        let names: Vec<String> = Emotion::ALL.iter().map(|e| e.to_string()).collect();
        assert_eq!(names, ["anger", "sadness", "happiness", "fear", "surprise", "disgust"]);
        for e in Emotion::ALL {
            assert_eq!(e.to_string().parse::<Emotion>().unwrap(), e);
            assert_eq!(Emotion::ALL[e.index()], e);
        }
        for v in Valence::ALL {
            assert_eq!(v.to_string().parse::<Valence>().unwrap(), v);
        }
        let err = "joy".parse::<Emotion>().unwrap_err().to_string();
        assert!(err.contains("`joy`") && err.contains("disgust"), "{err}");
        assert!("meh".parse::<Valence>().unwrap_err().to_string().contains("`meh`"));
    }
}
