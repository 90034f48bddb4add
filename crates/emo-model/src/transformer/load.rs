//! Loading a [`Transformer`]: every weight read by its Hugging Face name, checked against the config, and put
//! on the device its [`Placement`] gives it (the embedding on the first device, each layer on its own, the
//! final norm and unembedding on the last).
use tch::{Device, Kind, Tensor};

use super::{Block, Transformer};
use crate::config::{Architecture, TransformerConfig};
use crate::packed::{Projection, WeightFormat};
use crate::placement::Placement;
use crate::rope::Rope;
use crate::weights::WeightSource;
use crate::{ModelError, Result};

impl Transformer {
    /// Loads weights from `src` (Hugging Face names), checks every shape against `cfg`, and moves them to
    /// `device` in `kind`, every tensor dequantized.
    pub fn load(cfg: TransformerConfig, src: &dyn WeightSource, device: Device, kind: Kind) -> Result<Self> {
        Self::load_as(cfg, src, device, kind, WeightFormat::Dequantized)
    }

    /// As [`Transformer::load`], holding quantized projection matrices as `weights` says. With
    /// [`WeightFormat::Packed`] one line on stderr says how many matrices were packed and why the others were
    /// not.
    pub fn load_as(cfg: TransformerConfig, src: &dyn WeightSource, device: Device, kind: Kind, weights: WeightFormat) -> Result<Self> {
        let placement = Placement::single(device, cfg.n_layers);
        Self::load_placed(cfg, src, placement, kind, weights)
    }

    /// As [`Transformer::load_as`], across the devices of `placement` ([`crate::placement`]): each layer's
    /// weights on its device, the embedding on the first, the final norm and unembedding on the last (a tied
    /// unembedding is then a copy of the embedding there).
    pub fn load_placed(cfg: TransformerConfig, src: &dyn WeightSource, placement: Placement, kind: Kind, weights: WeightFormat) -> Result<Self> {
        let covered = placement.ranges().last().map_or(0, |r| r.end);
        if covered != cfg.n_layers || placement.ranges().first().is_none_or(|r| r.start != 0) {
            return Err(ModelError::InvalidArgument(format!("a placement of {covered} layers ({placement}) for a {}-layer model", cfg.n_layers)));
        }
        if placement.is_split() {
            // One line, as the packer's: where each part of the model went.
            eprintln!("{}: placed across {} devices: {placement}", src.path().display(), placement.devices().len());
        }
        let d = cfg.d_model as i64;
        let hd = cfg.d_head as i64;
        let nh = cfg.n_heads as i64;
        let nkv = cfg.n_kv_heads as i64;
        let dm = cfg.d_mlp as i64;
        let get_on = |device: Device, name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = src.tensor_as(name, kind)?;
            if t.size() != shape {
                return Err(ModelError::ShapeMismatch {
                    path: src.path().to_path_buf(),
                    name: name.to_string(),
                    got: t.size(),
                    expected: shape.to_vec(),
                });
            }
            Ok(t.to_device(device))
        };
        let (first, last) = (placement.first(), placement.last());
        let embed = get_on(first, "model.embed_tokens.weight", &[cfg.vocab_size as i64, d])?;
        // Int4 packing runs on the CPU only: it is asked for when every device is the CPU.
        let pack_device = placement.devices().iter().copied().find(|&dv| dv != Device::Cpu).unwrap_or(Device::Cpu);
        let mut packer = crate::packed::Packer::new(src, weights, pack_device, kind);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let device = placement.layer_device(l);
            let get = |name: &str, shape: &[i64]| get_on(device, name, shape);
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let mut proj = |parts: &[(&str, i64)], cols: i64| -> Result<Projection> {
                let parts: Vec<(String, [i64; 2])> = parts.iter().map(|&(s, rows)| (p(s), [rows, cols])).collect();
                packer.projection(&parts, &get)
            };
            // Phi-3 stores q/k/v and gate/up already fused, in the order the decoder splits them.
            let fused = cfg.arch == Architecture::Phi3;
            let qkv_w = if fused {
                proj(&[("self_attn.qkv_proj.weight", (nh + 2 * nkv) * hd)], d)?
            } else {
                proj(&[("self_attn.q_proj.weight", nh * hd), ("self_attn.k_proj.weight", nkv * hd), ("self_attn.v_proj.weight", nkv * hd)], d)?
            };
            let o_w = proj(&[("self_attn.o_proj.weight", d)], nh * hd)?;
            let gate_up_w = if fused {
                proj(&[("mlp.gate_up_proj.weight", 2 * dm)], d)?
            } else {
                proj(&[("mlp.gate_proj.weight", dm), ("mlp.up_proj.weight", dm)], d)?
            };
            let down_w = proj(&[("mlp.down_proj.weight", d)], dm)?;
            let qkv_b = if cfg.qkv_bias {
                let qb = get(&p("self_attn.q_proj.bias"), &[nh * hd])?;
                let kb = get(&p("self_attn.k_proj.bias"), &[nkv * hd])?;
                let vb = get(&p("self_attn.v_proj.bias"), &[nkv * hd])?;
                Some(Tensor::cat(&[qb, kb, vb], 0))
            } else {
                None
            };
            let qk_norm =
                if cfg.qk_norm { Some((get(&p("self_attn.q_norm.weight"), &[hd])?, get(&p("self_attn.k_norm.weight"), &[hd])?)) } else { None };
            // Gemma's `post_attention_layernorm` norms the attention output; its MLP input norm is
            // `pre_feedforward_layernorm` (Llama's MLP input norm is `post_attention_layernorm`).
            let (mlp_norm, post_attn_norm, post_mlp_norm) = if cfg.gemma {
                (
                    get(&p("pre_feedforward_layernorm.weight"), &[d])?,
                    Some(get(&p("post_attention_layernorm.weight"), &[d])?),
                    Some(get(&p("post_feedforward_layernorm.weight"), &[d])?),
                )
            } else {
                (get(&p("post_attention_layernorm.weight"), &[d])?, None, None)
            };
            blocks.push(Block {
                attn_norm: get(&p("input_layernorm.weight"), &[d])?,
                qkv_w,
                qkv_b,
                qk_norm,
                o_w,
                mlp_norm,
                post_attn_norm,
                post_mlp_norm,
                gate_up_w,
                down_w,
            });
        }
        packer.report();
        let norm = get_on(last, "model.norm.weight", &[d])?;
        let tied = cfg.tie_embeddings || !src.contains("lm_head.weight");
        // A tied unembedding on another device than the embedding is a copy there (on the same device,
        // `to_device` shares the tensor).
        let lm_head = Projection::Dense(if tied { embed.to_device(last) } else { get_on(last, "lm_head.weight", &[cfg.vocab_size as i64, d])? });
        let ropes = placement
            .devices()
            .iter()
            .map(|&dv| (Rope::new(&cfg, dv), cfg.local_rope_theta.map(|theta| Rope::plain(theta, cfg.rotary_dim, dv))))
            .collect();
        Ok(Transformer { cfg, kind, placement, embed, blocks, norm, lm_head, tied, ropes })
    }
}
