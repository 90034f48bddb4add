//! `emo-steer`: what a program that steers with emotion directions needs, and nothing heavier — the two
//! residual sites the paper reads ([`Site`]), unit emotion directions per site, emotion and layer
//! ([`EmotionDirections`], loaded from and saved to safetensors), the atomic safetensors writer and checked
//! reader behind them ([`tensor_file`]), and the error type every experiment crate shares ([`Error`]).
//!
//! Extraction, analysis, figures and archives live in `emo-directions` and `emo-run`; loading a direction
//! file through this crate pulls in none of them.
#![warn(missing_docs)]

pub mod directions;
pub mod error;
pub mod tensor_file;

pub use directions::{EmotionDirections, Site};

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use error::{Error, Result};
