//! `emo-steer`: what a program that steers with emotion directions needs, and nothing heavier — the two
//! residual sites the paper reads ([`Site`]), unit emotion directions per site, emotion and layer
//! ([`EmotionDirections`], loaded from and saved to safetensors), the atomic safetensors writer and checked
//! reader behind them ([`tensor_file`]), directions from other tools ([`import`]: NumPy files, [`npy`], and
//! llama.cpp control vectors, [`control_vector`]), the error type every experiment crate shares ([`Error`]),
//! the paper's constants ([`paper`]), per-row edits ([`RowEdits`]) and residual steering itself ([`steer`]:
//! the edit, [`Steering`], its one checked construction, and [`Steerer`], a builder that steers a model's
//! chat replies) and the per-token emotion readout ([`trace`]).
//!
//! ```no_run
//! use emo_steer::{ChatMessage, Emotion, Model, LoadOptions, Steerer};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let steerer = Steerer::from_file(&model, "runs/paper/directions.safetensors".as_ref())?;
//! let reply = steerer.emotion(Emotion::Anger).alpha(4.0).chat(&[ChatMessage::user("How was your day?")])?;
//! println!("{reply}");
//! # Ok::<(), emo_steer::Error>(())
//! ```
//!
//! Extraction, analysis, figures and archives live in `emo-directions` and `emo-run`; loading a direction
//! file through this crate pulls in none of them.
#![warn(missing_docs)]

pub mod control_vector;
pub mod directions;
pub mod edits;
pub mod error;
pub mod import;
pub mod json_file;
pub mod npy;
pub mod paper;
pub mod steer;
pub mod tensor_file;
pub mod trace;

pub use directions::{EmotionDirections, Site};
pub use edits::RowEdits;
pub use steer::{steering_edit, SteeredChat, Steerer, Steering};
pub use trace::{EmotionTrace, EmotionTracer};
// What a steering program names besides this crate's types, so that it needs no other import.
pub use emo_data::Emotion;
pub use emo_model::{ChatMessage, GenerationConfig, LoadOptions, Model, Positions};

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use error::{Error, Result};
