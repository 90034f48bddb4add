//! The paper's prompts, exactly as the authors' code builds them (spec section 2), and the enumeration of
//! every (scenario, valence, emotion) prompt of a split.
use emo_model::ChatMessage;

use crate::{Emotion, Scenario, Valence};

/// The emotion-eliciting system prompt.
pub fn elicitation_system(emotion: Emotion) -> String {
    format!("Always reply in {emotion}.\nKeep the reply to at most two sentences.")
}

/// The neutral system prompt (steering, importance, circuit modulation).
pub const NEUTRAL_SYSTEM: &str = "Keep the reply to at most two sentences.";

/// The user message: `{scenario}\n{event}`.
pub fn user_message(scenario: &Scenario, valence: Valence) -> String {
    format!("{}\n{}", scenario.scenario, scenario.events.get(valence))
}

/// The elicitation conversation for one emotion, scenario and valence.
pub fn elicitation_prompt(emotion: Emotion, scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
    vec![ChatMessage::system(elicitation_system(emotion)), ChatMessage::user(user_message(scenario, valence))]
}

/// The neutral conversation for one scenario and valence.
pub fn neutral_prompt(scenario: &Scenario, valence: Valence) -> Vec<ChatMessage> {
    vec![ChatMessage::system(NEUTRAL_SYSTEM), ChatMessage::user(user_message(scenario, valence))]
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
}
