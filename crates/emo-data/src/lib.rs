//! `emo-data`: the inputs of the method besides a model — SEV scenario-event data (the paper's files or this
//! project's own built-in set), the exact elicitation and neutral prompts, and emotion judges.
#![warn(missing_docs)]

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod chat_judge;
pub mod embedding_judge;
pub mod emotion;
pub mod ensemble_judge;
pub mod error;
pub mod judge;
pub mod lexicon_judge;
pub mod openai_judge;
pub mod prompts;
pub mod sentence_encoder;
pub mod sev;

pub use chat_judge::ChatJudge;
pub use embedding_judge::EmbeddingJudge;
pub use emotion::{Emotion, Valence};
pub use ensemble_judge::AnyOfJudge;
pub use error::DataError;
pub use judge::{Judge, Verdict};
pub use lexicon_judge::LexiconJudge;
pub use openai_judge::{OpenAiConfig, OpenAiJudge};
pub use prompts::{elicitation_prompt, neutral_prompt, PromptItem, PromptSet};
pub use sentence_encoder::SentenceEncoder;
pub use sev::{Dataset, Events, Scenario, Split};
