//! `emo-data`: the inputs of the method besides a model — SEV scenario-event data (the paper's files or this
//! project's own built-in set), the exact elicitation and neutral prompts, and (later) emotion judges.
#![warn(missing_docs)]

pub mod emotion;
pub mod error;
pub mod prompts;
pub mod sev;

pub use emotion::{Emotion, Valence};
pub use error::DataError;
pub use prompts::{elicitation_prompt, neutral_prompt, PromptItem};
pub use sev::{Dataset, Events, Scenario, Split};
