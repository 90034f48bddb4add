//! `emo-run`: the experiment machinery every section crate stands on —
//!
//! - a run folder and its manifest ([`RunDir`], [`Manifest`]: model files by sha256, data, versions, stages);
//! - one resumable batch loop for every stage kind ([`stage::run_stage`] over a [`stage::StageWork`]):
//!   generation with judging ([`generation`]: the stage sections 5 and 7 run), forward-only sweeps ([`forward::SweepStage`]) and
//!   statistics reduced batch by batch ([`forward::ReduceStage`]), each with typed settings checked on
//!   resume;
//! - the paper's constants in one place ([`paper`]);
//! - sweeps of many interventions over many prompts, through prefix branching wherever it is exact
//!   ([`Sweep`]), and streaming statistics ([`GroupedSums`]);
//! - files: atomic writes and safetensors ([`store`]), NumPy ([`npy`]), reply records ([`records`]),
//!   accuracy tables ([`accuracy`]), figures ([`figures`]) and Markdown reports ([`report`]);
//! - progress bars, drawn on stderr or handed to an embedder's sink ([`progress`]).
#![warn(missing_docs)]

pub mod accuracy;
pub mod bench;
pub mod error;
pub mod figures;
pub mod folder;
pub mod forward;
pub mod generation;
pub use emo_steer::{npy, paper};
pub mod merge;
pub mod progress;
pub mod records;
pub mod report;
pub mod shard;
pub mod shard_progress;
pub mod stage;
pub mod stats;
pub mod store;
pub mod sweep;

pub use accuracy::Accuracy;
pub use error::{Result, RunError};
pub use folder::{DatasetInfo, Manifest, ModelInfo, RunDir, StageInfo, StageStats, ELICIT};
pub use forward::{ReduceStage, Reduction, SweepStage};
pub use records::{JudgeRecord, ReplyRecord};
pub use shard::{Pending, Shard};
pub use stage::{run_stage, StageWork};
pub use stats::GroupedSums;
pub use sweep::{Metric, PrefixCache, Sweep};
