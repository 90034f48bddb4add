//! `emo-circuits`: paper section 7 — which sublayers drive the final emotion state, the global emotion
//! circuits assembled from section 6's neurons and heads by the authors' budget rule, and circuit
//! modulation during cached generation (spec section 8).
//!
//! - [`importance`]: sigma, the reference direction v_ref and the sublayer importance I, measured through
//!   prefix branching (every injection acts at the last prompt token).
//! - [`allocate`]: the budget rule as a pure function (K_total = 10 per sublayer, 0.7 / 0.3, minimums, cap,
//!   largest remainder, backfill).
//! - [`circuit`]: circuits in the authors' JSON layout with their delta_mu, export and import (also of the
//!   authors' `.npy` / `.npz` arrays), overlap between emotions.
//! - [`modulate`]: per-row modulation hooks, the resumable modulation stage, and [`Modulator`], the
//!   high-level entry point (load circuits, pick an emotion and scale, chat).
//! - [`report`]: the section-7 part of a run's report (importance profiles, circuits, Table 2, fluency).
#![warn(missing_docs)]

pub mod allocate;
pub mod circuit;
pub mod figures;
pub mod importance;
pub mod modulate;
pub mod report;

pub use allocate::{allocate, Allocation, Budget, Shape};
pub use circuit::{Circuit, CircuitSet};
pub use importance::{sublayer_importance, ImportanceOptions, Profile, SublayerImportance};
pub use modulate::{modulation_stage, ModulateOptions, ModulatedChat, Modulation, Modulator};
