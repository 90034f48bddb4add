//! Rotary position embeddings: inverse frequencies with each family's scaling (Llama 3, linear, GGUF's
//! divisors, Phi-3's LongRoPE) and the cos/sin a forward rotates queries and keys by, as Hugging Face computes
//! them (angles in f32).
use tch::{Device, Kind, Tensor};

use crate::config::{RopeScaling, TransformerConfig};

/// The rotation of one kind of layer (Gemma 3's local layers have their own).
pub(crate) struct Rope {
    /// [rotary_dim/2] inverse frequencies (LongRoPE: the short-context ones).
    inv_freq: Tensor,
    /// LongRoPE: the long-context inverse frequencies and the original context length beyond which a row uses them.
    long: Option<(Tensor, i64)>,
    /// What cos and sin are multiplied by (LongRoPE's attention factor, else 1).
    scale: f64,
}

impl Rope {
    /// The global layers' rotation of `cfg`, with its scaling.
    pub(crate) fn new(cfg: &TransformerConfig, device: Device) -> Rope {
        let base = base_inv_freq(cfg.rope_theta, cfg.rotary_dim);
        let (long, scale) = match &cfg.rope_scaling {
            Some(RopeScaling::LongRope { long_factor, original_max_position, attention_factor, .. }) => {
                (Some(((&base / Tensor::from_slice(long_factor)).to_device(device), *original_max_position as i64)), *attention_factor)
            }
            _ => (None, 1.0),
        };
        Rope { inv_freq: scaled(base, cfg).to_device(device), long, scale }
    }

    /// An unscaled rotation of `rotary_dim` dimensions with base `theta` (Gemma 3's local layers).
    pub(crate) fn plain(theta: f64, rotary_dim: usize, device: Device) -> Rope {
        Rope { inv_freq: base_inv_freq(theta, rotary_dim).to_device(device), long: None, scale: 1.0 }
    }

    /// cos and sin, [batch, 1, tokens, rotary_dim] in `kind`, for `positions` [batch, tokens] (padding, -1, gets
    /// position 0: it is masked anyway). Under LongRoPE a row whose positions in this call reach past the
    /// original context uses the long-context frequencies, the short ones otherwise: Hugging Face's rule for
    /// one sequence, applied per row so that a row's result does not depend on the rows beside it. A row that
    /// crosses while decoding keeps the keys it cached before with their short-factor rotation (as vLLM does;
    /// transformers' `generate` recomputes its whole cache at that step instead).
    pub(crate) fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let pos = positions.clamp_min(0).to_kind(Kind::Float).unsqueeze(-1); // [b, t, 1]
        let freqs = match &self.long {
            None => pos * &self.inv_freq,
            Some((long, original)) => {
                let beyond = (positions.amax([-1], true) + 1).gt(*original).unsqueeze(-1); // [b, 1, 1]
                pos * long.where_self(&beyond, &self.inv_freq)
            }
        }; // [b, t, rotary_dim/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [b, 1, t, rotary_dim]
        if self.scale == 1.0 {
            (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
        } else {
            ((emb.cos() * self.scale).to_kind(kind), (emb.sin() * self.scale).to_kind(kind))
        }
    }
}

/// Rotates the halves of the first `rotary_dim` (cos's width) dimensions of `x` [batch, heads, tokens, d_head]
/// by `cos` and `sin` (Hugging Face's half-split layout); the others pass through (partial rotary embeddings).
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (d, rot) = (x.size()[3], cos.size()[3]);
    let xr = if rot == d { x.shallow_clone() } else { x.narrow(3, 0, rot) };
    let half = rot / 2;
    let rotated = Tensor::cat(&[-xr.narrow(3, half, half), xr.narrow(3, 0, half)], 3);
    let out = &xr * cos + rotated * sin;
    if rot == d {
        out
    } else {
        Tensor::cat(&[out, x.narrow(3, rot, d - rot)], 3)
    }
}

/// theta^(-2i/d) for the d = `rotary_dim` rotated dimensions, [rotary_dim/2] f32.
fn base_inv_freq(theta: f64, rotary_dim: usize) -> Tensor {
    let dim = rotary_dim as i64;
    let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
    Tensor::from(theta as f32).pow(&exps).reciprocal()
}

/// The base frequencies with the model's scaling applied (LongRoPE: its short factors).
fn scaled(inv: Tensor, cfg: &TransformerConfig) -> Tensor {
    match &cfg.rope_scaling {
        None => inv,
        Some(RopeScaling::Linear { factor }) => inv / *factor,
        Some(RopeScaling::Divisors(d)) => inv / Tensor::from_slice(d),
        Some(RopeScaling::LongRope { short_factor, .. }) => inv / Tensor::from_slice(short_factor),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            let v: Vec<f32> = Vec::<f32>::try_from(&inv).unwrap_or_default();
            let low_wl = original_max_position / low_freq_factor;
            let high_wl = original_max_position / high_freq_factor;
            let scaled: Vec<f32> = v
                .iter()
                .map(|&f| {
                    let f = f as f64;
                    let wl = 2.0 * std::f64::consts::PI / f;
                    let g = if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / factor
                    } else {
                        let smooth = (original_max_position / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    };
                    g as f32
                })
                .collect();
            Tensor::from_slice(&scaled)
        }
    }
}
