//! `emo-run`: the experiment machinery sections 6 and 7 stand on — the paper's constants in one place,
//! sweeps of many interventions over many prompts (through prefix branching wherever it is exact), and
//! statistics reduced batch by batch so that memory does not grow with the number of prompts.
#![warn(missing_docs)]

pub mod paper;
pub mod stats;
pub mod sweep;

pub use stats::GroupedSums;
pub use sweep::{Metric, Sweep};
