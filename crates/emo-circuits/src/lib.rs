//! `emo-circuits`: paper section 7 — which sublayers drive the final emotion state, the global emotion
//! circuits assembled from section 6's neurons and heads by the authors' budget rule, and circuit
//! modulation during cached generation (spec section 8).
//!
//! - [`importance`]: sigma, the reference direction v_ref and the sublayer importance I, measured through
//!   prefix branching (every injection acts at the last prompt token).
//! - [`allocate`]: the budget rule as a pure function (K_total = 10 per sublayer, 0.7 / 0.3, minimums, cap,
//!   largest remainder, backfill).
//! - [`circuit`]: circuits picked from a section-6 attribution, overlap between emotions (the circuit files,
//!   their import from the authors' arrays and modulation itself are the light crate `emo-modulate`'s).
//! - [`modulate`]: the resumable modulation stage.
//! - [`report`]: the section-7 part of a run's report (importance profiles, circuits, Table 2, fluency).
#![warn(missing_docs)]

pub mod allocate;
pub mod circuit;
pub mod figures;
pub mod importance;
pub mod modulate;
pub mod report;

pub use allocate::{allocate, Allocation, Budget};
pub use circuit::assemble;
pub use importance::{sublayer_importance, ImportanceOptions, Profile, SublayerImportance};
pub use modulate::{modulation_stage, ModulateOptions};
