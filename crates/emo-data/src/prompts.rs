//! The paper's prompts, exactly as the authors' code builds them (spec section 2), named variants of them
//! ([`PromptSet`]), and the enumeration of every (scenario, valence, emotion) prompt of a split.
use std::path::Path;

use emo_model::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::{DataError, Emotion, Scenario, Valence};

/// The emotion-eliciting system prompt.
pub fn elicitation_system(emotion: Emotion) -> String {
    PromptSet::paper().elicitation_system(emotion)
}

/// The paper's elicitation system prompt, `{emotion}` standing for the emotion's name.
pub const ELICITATION_TEMPLATE: &str = "Always reply in {emotion}.\nKeep the reply to at most two sentences.";

/// The neutral system prompt (steering, importance, circuit modulation).
pub const NEUTRAL_SYSTEM: &str = "Keep the reply to at most two sentences.";

/// The user message: `{scenario}\n{event}`.
pub fn user_message(scenario: &Scenario, valence: Valence) -> String {
    format!("{}\n{}", scenario.scenario, scenario.events.get(valence))
}

/// The elicitation conversation for one emotion, scenario and valence (the paper's prompt).
pub fn elicitation_prompt(emotion: Emotion, scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
    PromptSet::paper().elicitation_prompt(emotion, scenario, valence)
}

/// The neutral conversation for one scenario and valence (the paper's prompt).
pub fn neutral_prompt(scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
    PromptSet::paper().neutral_prompt(scenario, valence)
}

/// The two system prompts a run uses: one that elicits an emotion (`{emotion}` stands for its name) and
/// the neutral one (steering, importance, modulation). The user message is always `{scenario}\n{event}`.
///
/// A run uses one set throughout; its manifest records the exact text (keys `prompt_set`,
/// `elicitation_system`, `neutral_system`).
///
/// ```
/// use emo_data::{Emotion, PromptSet};
/// let strong = PromptSet::parse("strong")?;
/// assert_eq!(strong.elicitation_system(Emotion::Fear), "You are feeling intense fear. Reply in a tone full of fear, in at most two sentences.");
/// assert_eq!(PromptSet::parse("paper")?, PromptSet::paper());
/// assert!(PromptSet::parse("loud").is_err()); // neither a variant nor a file
/// # Ok::<(), emo_data::DataError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSet {
    /// `paper`, `strong`, or the file a custom set came from.
    pub name: String,
    /// The eliciting system prompt, with `{emotion}` where the emotion's name goes.
    pub elicitation_system: String,
    /// The neutral system prompt.
    pub neutral_system: String,
}

impl Default for PromptSet {
    fn default() -> Self {
        PromptSet::paper()
    }
}

impl PromptSet {
    /// The named variants [`PromptSet::parse`] knows.
    pub const NAMES: [&'static str; 2] = ["paper", "strong"];

    /// The paper's prompts (the default).
    pub fn paper() -> Self {
        PromptSet { name: "paper".into(), elicitation_system: ELICITATION_TEMPLATE.into(), neutral_system: NEUTRAL_SYSTEM.into() }
    }

    /// A stronger elicitation for small models that ignore "Always reply in {emotion}." (18 of 24 hand-rated
    /// replies of Qwen2.5-Coder-1.5B on target, against 5 with the paper's); the neutral prompt is the paper's.
    pub fn strong() -> Self {
        PromptSet {
            name: "strong".into(),
            elicitation_system: "You are feeling intense {emotion}. Reply in a tone full of {emotion}, in at most two sentences.".into(),
            neutral_system: NEUTRAL_SYSTEM.into(),
        }
    }

    /// `paper`, `strong`, or a JSON file `{"elicitation_system": "...{emotion}...", "neutral_system": "..."}`.
    pub fn parse(arg: &str) -> Result<Self, DataError> {
        match arg {
            "paper" => Ok(PromptSet::paper()),
            "strong" => Ok(PromptSet::strong()),
            _ if Path::new(arg).is_file() => PromptSet::from_file(Path::new(arg)),
            _ => Err(DataError::UnknownName { kind: "prompt set", value: arg.into(), expected: "paper, strong, or a JSON file".into() }),
        }
    }

    /// A custom set from a JSON file with the fields `elicitation_system` (which must contain `{emotion}`)
    /// and `neutral_system`; its name is the file's path.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            elicitation_system: String,
            neutral_system: String,
        }
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let bad = |field: &str, msg: String| DataError::Record { path: path.to_path_buf(), line: 1, field: field.into(), msg };
        let f: File = serde_json::from_str(&text).map_err(|e| DataError::Record {
            path: path.to_path_buf(),
            line: e.line(),
            field: "json".into(),
            msg: format!("{e} (expected {{\"elicitation_system\": \"...{{emotion}}...\", \"neutral_system\": \"...\"}})"),
        })?;
        if !f.elicitation_system.contains("{emotion}") {
            return Err(bad("elicitation_system", "has no `{emotion}` for the emotion's name".into()));
        }
        for (field, v) in [("elicitation_system", &f.elicitation_system), ("neutral_system", &f.neutral_system)] {
            if v.trim().is_empty() {
                return Err(bad(field, "is empty".into()));
            }
        }
        Ok(PromptSet { name: path.display().to_string(), elicitation_system: f.elicitation_system, neutral_system: f.neutral_system })
    }

    /// The eliciting system prompt for `emotion`.
    pub fn elicitation_system(&self, emotion: Emotion) -> String {
        self.elicitation_system.replace("{emotion}", emotion.name())
    }

    /// The elicitation conversation for one emotion, scenario and valence.
    pub fn elicitation_prompt(&self, emotion: Emotion, scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
        vec![ChatMessage::system(self.elicitation_system(emotion)), ChatMessage::user(user_message(scenario, valence))]
    }

    /// The neutral conversation for one scenario and valence.
    pub fn neutral_prompt(&self, scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
        vec![ChatMessage::system(self.neutral_system.clone()), ChatMessage::user(user_message(scenario, valence))]
    }
}

/// One prompt of a split: which scenario, valence and emotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptItem {
    /// Index into the split's scenarios.
    pub scenario: usize,
    /// The event's valence.
    pub valence: Valence,
    /// The target emotion.
    pub emotion: Emotion,
}

impl PromptItem {
    /// Every prompt of a split in a fixed order: scenario, then valence, then emotion (2,880 for 160
    /// scenarios).
    pub fn all(scenarios: &[Scenario]) -> Vec<PromptItem> {
        let mut v = Vec::with_capacity(scenarios.len() * 18);
        for scenario in 0..scenarios.len() {
            for valence in Valence::ALL {
                for emotion in Emotion::ALL {
                    v.push(PromptItem { scenario, valence, emotion });
                }
            }
        }
        v
    }

    /// The prompts of the steering and modulation stages: for each of `emotions` in turn, every scenario x
    /// valence (scenario, then valence), so that each prompt carries the emotion its row is pushed towards.
    pub fn emotion_major(scenarios: &[Scenario], emotions: &[Emotion]) -> Vec<PromptItem> {
        emotions
            .iter()
            .flat_map(|&emotion| (0..scenarios.len()).flat_map(move |scenario| Valence::ALL.map(|valence| PromptItem { scenario, valence, emotion })))
            .collect()
    }
}
