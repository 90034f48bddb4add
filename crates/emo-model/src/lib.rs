//! `emo-model`: a LibTorch-backed decoder-only transformer (Llama and Qwen2 families) whose every
//! activation can be read or edited through typed hooks named as in TransformerLens.
//!
//! ```no_run
//! use emo_model::{Model, LoadOptions, ChatMessage, GenerationConfig, HookSet, HookPoint, Capture, Positions};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let mut capture = Capture::new([HookPoint::ResidPost(10)], Positions::LastPrompt);
//! let replies = model.generate_chat(
//!     &[vec![ChatMessage::user("The train was late again.")]],
//!     &GenerationConfig::greedy(40),
//!     &mut HookSet::new().with(&mut capture),
//! )?;
//! let resid = capture.per_row(HookPoint::ResidPost(10), 1)?; // [1, d_model]
//! # Ok::<(), emo_model::ModelError>(())
//! ```
#![warn(missing_docs)]

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The version of `tch` this crate is built with (pinned exactly in the workspace; a test checks it against
/// `Cargo.lock`).
pub const TCH_VERSION: &str = "0.24.0";
/// The version of the LibTorch linked at build time (from its `version.py` or `build-version`), or
/// `unknown`.
pub const LIBTORCH_VERSION: &str = match option_env!("EMO_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};

pub mod batcher;
pub mod branch;
pub mod chat;
pub mod chat_encode;
pub mod components;
pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod ggml_type;
pub mod gguf;
pub mod home;
pub mod hooks;
pub mod input;
pub mod interp;
pub mod kv_cache;
pub mod model;
pub mod packed;
pub mod placement;
pub mod quant;
pub mod quant_rows;
mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

/// docs/hooks.md's snippets, compiled as doc tests (only then: the file is outside this crate's package).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/hooks.md")]
pub struct HooksGuide;

pub use batcher::{BatchRequest, ContinuousBatch, Event, Guard, GuardHold, RowControl};
pub use branch::Prefix;
pub use chat::{ChatMessage, ChatTemplate};
pub use components::{Sublayer, SublayerKind};
pub use config::{Architecture, TransformerConfig};
pub use error::{ModelError, Result};
pub use generate::{Generated, GenerationConfig, StopReason};
pub use hooks::{
    ActivationCache, CacheHook, Capture, Edit, FnHook, Hook, HookContext, HookPoint, HookSet, Intervention, Interventions, Positions, Readout,
    Readouts,
};
pub use input::Input;
pub use kv_cache::DecodeState;
pub use model::{LoadOptions, Model, Reply};
/// The array crate captures and caches convert to ([`ActivationCache::to_ndarray`]), so that an embedder
/// names the same version.
pub use ndarray;
pub use packed::WeightFormat;
pub use placement::Placement;
pub use sampling::Sampling;
pub use tokenizer::Tokenizer;
pub use transformer::{LogitsFor, Transformer};
