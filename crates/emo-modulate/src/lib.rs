//! `emo-modulate`: what a program that modulates emotion circuits needs, and nothing heavier — circuit
//! files in the authors' JSON layout with their delta_mu, also from the authors' `.npy` / `.npz` arrays
//! ([`circuit`]), the per-row modulation hooks ([`Modulation`], also as one row of a continuous batch) and
//! [`Modulator`], a builder that modulates a model's chat replies as `emo_steer::Steerer` steers them.
//!
//! Finding circuits (sublayer importance, the authors' budget rule, reports) is `emo-circuits`'s; loading
//! and running them through this crate pulls in none of the pipelines, as `emo-steer` does for directions.
#![warn(missing_docs)]

pub mod circuit;
pub mod modulate;

pub use circuit::{Circuit, CircuitSet, Shape};
pub use modulate::{Modulation, Modulator};

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
