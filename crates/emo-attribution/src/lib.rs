//! `emo-attribution`: paper section 6 — which MLP neurons and attention heads of each layer carry each emotion
//! (spec section 7).
//!
//! - Neurons ([`neurons`]): beta_L = W_down_L^T v_mlp[e][L]; a sample's contribution c = a * beta with a the
//!   gated activation (`mlp.hook_post`) at the last prompt token; ranked per layer by the mean of c, signed.
//! - Heads ([`heads`]): the drop of the last-token `hook_resid_mid` projection on v_attn[e][L] when head h's
//!   slice of `o_proj`'s input is zeroed; only layer L is read, so it is <W_O[:, h] z_h(last), v_attn>, from one
//!   clean forward per sample.
//! - Emotion difference vectors ([`delta_mu`]) at `o_proj`'s input and `down_proj`'s input, centred per
//!   (scenario, valence) group.
//!
//! - Attribution patching ([`patching`]): the gradient-based estimate of each unit's ablation effect on the
//!   sweeps' metric, through every later layer, to set beside the analytic scores.
//!
//! [`attribute::attribute`] computes all three in one resumable pass over a section-5 run's samples, reduced
//! batch by batch (memory does not grow with the number of samples), and writes them into the run folder.
#![warn(missing_docs)]

pub mod attribute;
pub mod delta_mu;
pub mod figures;
pub mod heads;
pub mod neurons;
pub mod patching;
pub mod report;
pub mod samples;
pub mod sweeps;

pub use attribute::{attribute, AttributeOptions, Attribution};
pub use samples::{Sample, SampleFilter};
