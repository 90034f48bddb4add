//! `emo-directions`: paper section 5 — elicit emotional replies while reading the last prompt token's
//! residual stream, extract context-agnostic emotion directions, analyse them (linear probes, PCA, cosine
//! structure), export them (safetensors, `.npy`/`.npz`, llama.cpp control vectors, whose formats are
//! `emo-steer`'s) and validate them by steering generation. Run folders, stages, files and figures come from `emo-run`; the directions type and its
//! sites from the light crate `emo-steer`.
#![warn(missing_docs)]

pub mod analysis;
pub mod directions;
pub mod elicit;
pub mod error;
pub mod extract;
pub mod pca;
pub mod probe;
pub mod report;
pub mod run;
pub mod steer;

// Shared with the other sections; kept under their old paths here.
pub use emo_run::{accuracy, figures, store};

pub use accuracy::Accuracy;
pub use directions::{Activations, DirectionsSummary, EmotionDirections, GroupFilter, Site};
pub use elicit::ElicitOptions;
pub use error::{DirectionsError, Result};
pub use run::{ReplyRecord, RunDir};
pub use steer::SteerOptions;
