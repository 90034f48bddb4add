//! emotion-circuits: find and control the mechanisms that make language models express emotion
//! (after "Do LLMs Feel? Emotion Circuits Discovery and Control", arXiv 2510.11328).
//!
//! This facade is the one dependency an embedder needs. [`prelude`] holds what a steering program names;
//! every library crate is re-exported under a short name. Features keep the default light:
//!
//! | feature | adds |
//! |---|---|
//! | (default) | [`model`] (Llama/Qwen2 with typed hooks), [`data`] (SEV data, prompts, judges), [`steer`] (emotion directions and steering), [`modulate`] (circuit files and modulation) |
//! | `pipelines` | `run` (resumable runs, the generating stage, figures, archives), `directions` (section 5), `attribution` (section 6), `circuits` (finding circuits, section 7) |
//! | `server` | `serve` (the OpenAI-compatible server) |
//!
//! Steering a reply towards anger with directions an `emo directions` run wrote:
//!
//! ```no_run
//! use emotion_circuits::prelude::*;
//!
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let steerer = Steerer::from_file(&model, "runs/paper/directions.safetensors".as_ref())?;
//! let reply = steerer.emotion(Emotion::Anger).alpha(4.0).chat(&[ChatMessage::user("How was your day?")])?;
//! println!("{reply}");
//! # Ok::<(), emotion_circuits::steer::Error>(())
//! ```
//!
//! The steering edit is an ordinary hook, so it combines with others — here with a capture of what it did
//! to the residual stream:
//!
//! ```no_run
//! use emotion_circuits::prelude::*;
//!
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let steerer = Steerer::from_file(&model, "runs/paper/directions.safetensors".as_ref())?;
//! let mut steering = steerer.hook(&[Some(Emotion::Happiness)])?;
//! let mut capture = Capture::new([HookPoint::ResidPost(20)], Positions::LastPrompt);
//! let prompt = vec![ChatMessage::user("Tell me about your weekend.")];
//! let cfg = GenerationConfig::steering();
//! let replies = model.generate_chat(&[prompt], &cfg, &mut HookSet::new().with(&mut steering).with(&mut capture))?;
//! let captured = capture.get(HookPoint::ResidPost(20)).expect("the capture ran");
//! println!("{} (steered residual {:?})", replies[0].text, captured.values.size());
//! # Ok::<(), emotion_circuits::steer::Error>(())
//! ```
//!
//! A program built outside this workspace needs LibTorch's folder in its rpath: see the README's "Use it
//! from your crate" and the `emo-build` crate.

pub use emo_data as data;
pub use emo_model as model;
pub use emo_modulate as modulate;
pub use emo_steer as steer;
/// The tensor library underneath (devices, dtypes, tensors), so that a program needs no `tch` line of its own.
pub use tch;

#[cfg(feature = "pipelines")]
pub use emo_attribution as attribution;
#[cfg(feature = "pipelines")]
pub use emo_circuits as circuits;
#[cfg(feature = "pipelines")]
pub use emo_directions as directions;
#[cfg(feature = "pipelines")]
pub use emo_run as run;
#[cfg(feature = "server")]
pub use emo_serve as serve;

/// What a program that loads a model, hooks it and steers it names.
pub mod prelude {
    pub use emo_data::{Emotion, Valence};
    pub use emo_model::{
        ActivationCache, Capture, ChatMessage, Edit, GenerationConfig, Hook, HookContext, HookPoint, HookSet, Input, Intervention, Interventions,
        LoadOptions, Model, ModelError, Positions, Reply, Sampling,
    };
    /// Circuit modulation (section 7), the other way to steer.
    pub use emo_modulate::Modulator;
    pub use emo_steer::{steering_edit, EmotionDirections, EmotionTrace, EmotionTracer, Site, Steerer, Steering};
    pub use tch::{Device, Kind, Tensor};
}
