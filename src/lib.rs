//! emotion-circuits: find and control the mechanisms that make language models express emotion.
//!
//! This facade re-exports the workspace crates so examples and downstream users need one dependency.
pub use emo_model as model;
