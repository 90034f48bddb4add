//! The transformer's hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Llama (incl. Llama 3.x, SmolLM2 and Mistral), Qwen2/Qwen2.5, Qwen3 and Phi-3 share one decoder; what
//! differs is captured here: q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3), fused projections (Phi-3),
//! sliding-window attention (Mistral, Phi-3), RoPE frequency scaling (Llama 3, linear, Phi-3's LongRoPE), and tied
//! embeddings.
use std::path::Path;

use serde_json::Value;

use crate::gguf::GgufFile;
use crate::{ModelError, Result};

/// The model families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM, and other `LlamaForCausalLM` checkpoints.
    Llama,
    /// Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): Llama with biases on q, k and v.
    Qwen2,
    /// Qwen3 (`Qwen3ForCausalLM`): Llama with an RMSNorm on each query and key head before RoPE.
    Qwen3,
    /// Phi-3 (`Phi3ForCausalLM`): Llama with q/k/v and gate/up stored fused (`qkv_proj`, `gate_up_proj`).
    Phi3,
    /// Gemma 2 (`Gemma2ForCausalLM`): RMSNorm by (1 + weight), the embedding scaled by sqrt(d_model), norms
    /// after attention and MLP too, tanh-GELU MLP, soft-capped attention scores and logits, queries scaled by
    /// `query_pre_attn_scalar`, a sliding window on alternate layers.
    Gemma2,
    /// Gemma 3, text (`Gemma3ForCausalLM`, `gemma3_text`): Gemma 2's conventions without soft-capping, plus
    /// per-head q/k norms and local (sliding-window) layers with a RoPE base of their own.
    Gemma3,
}

impl Architecture {
    /// Parses an HF `model_type` or GGUF `general.architecture`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" | "smollm" | "mistral" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            "phi3" => Some(Architecture::Phi3),
            "gemma2" => Some(Architecture::Gemma2),
            "gemma3_text" | "gemma3" => Some(Architecture::Gemma3),
            _ => None,
        }
    }

    /// Whether the family follows Gemma's conventions ([`TransformerConfig::gemma`]).
    pub fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }

    /// Whether each query and key head is RMS-normalised before RoPE (Qwen3, Gemma 3).
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3 | Architecture::Gemma3)
    }

    /// Which of `n_layers` layers use the sliding window when the checkpoint does not list them: Gemma 2's
    /// layers 0, 2, 4, ... are local, Gemma 3's all but every sixth (Hugging Face's config defaults and
    /// llama.cpp's fixed patterns agree); empty, meaning every layer, for the other families.
    pub fn default_sliding_layers(self, n_layers: usize) -> Vec<bool> {
        match self {
            Architecture::Gemma2 => (0..n_layers).map(|l| l % 2 == 0).collect(),
            Architecture::Gemma3 => (0..n_layers).map(|l| (l + 1) % 6 != 0).collect(),
            _ => Vec::new(),
        }
    }

    /// The name used by GGUF metadata keys (`{arch}.block_count`, ...).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Phi3 => "phi3",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in HF configs).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1+: long wavelengths divided by `factor`, short kept, a smooth ramp between.
    Llama3 {
        /// Overall scale.
        factor: f64,
        /// Wavelength bound (in units of `original_max_position`) below which frequencies are scaled.
        low_freq_factor: f64,
        /// Wavelength bound above which frequencies are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position: f64,
    },
    /// Linear position interpolation.
    Linear {
        /// Positions are divided by this.
        factor: f64,
    },
    /// Explicit per-frequency divisors, as GGUF's `rope_freqs.weight` stores them.
    Divisors(Vec<f32>),
    /// Phi-3's LongRoPE: per-frequency divisors for sequences within the pre-training context (`short_factor`)
    /// and for those reaching past it (`long_factor`), and cos/sin scaled by `attention_factor`.
    LongRope {
        /// Divisors while a sequence stays within `original_max_position`.
        short_factor: Vec<f32>,
        /// Divisors once it reaches past.
        long_factor: Vec<f32>,
        /// The pre-training context length.
        original_max_position: usize,
        /// What cos and sin are multiplied by.
        attention_factor: f64,
    },
}

/// Everything the decoder needs to know about its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Family.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual width.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub d_head: usize,
    /// The leading dimensions of each query and key head that RoPE rotates: `d_head`, or fewer where the config
    /// sets a `partial_rotary_factor` (Phi-4-mini's 0.75); the rest pass through unrotated.
    pub rotary_dim: usize,
    /// MLP hidden width.
    pub d_mlp: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Context length the model supports.
    pub max_position: usize,
    /// Whether the unembedding reuses the embedding matrix.
    pub tie_embeddings: bool,
    /// Whether q, k and v projections carry biases.
    pub qkv_bias: bool,
    /// Whether each query and key head is RMS-normalised (weight `[d_head]`) before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding-window attention: a query attends to the keys less than this many positions before it
    /// (Mistral 7B v0.1, where the config sets one), `None` for full causal attention.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (Gemma's local layers); empty: every layer, when there is one.
    pub sliding_layers: Vec<bool>,
    /// Gemma's conventions: RMSNorm multiplies by (1 + weight) in f32, the embedding is scaled by
    /// sqrt(d_model), attention and MLP outputs are normed before the residual add, the MLP's activation is
    /// tanh-GELU.
    pub gemma: bool,
    /// What q·k is multiplied by before the softmax (1/sqrt(d_head), or Gemma's
    /// 1/sqrt(query_pre_attn_scalar)).
    pub query_scale: f64,
    /// Attention scores soft-capped as `cap * tanh(s / cap)` (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Final logits soft-capped likewise (Gemma 2).
    pub final_softcap: Option<f64>,
    /// The RoPE base of the sliding-window layers where it is not `rope_theta` (Gemma 3's local layers; the
    /// RoPE scaling applies to the global layers only).
    pub local_rope_theta: Option<f64>,
}

impl TransformerConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_value(path, &v)
    }

    /// Parses an HF config already read as JSON; `path` is used in error messages.
    pub fn from_hf_value(path: &Path, v: &Value) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = Architecture::parse(model_type)
            .ok_or_else(|| ModelError::UnknownArchitecture { path: path.to_path_buf(), arch: model_type.to_string() })?;
        let uint = |key: &str| -> Result<usize> {
            v.get(key).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| ModelError::Metadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                msg: "missing or not a non-negative integer".into(),
            })
        };
        let d_model = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let n_kv_heads = uint("num_key_value_heads").unwrap_or(n_heads);
        let d_head = v.get("head_dim").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(d_model / n_heads.max(1));
        // transformers 5 writes `rope_parameters` (theta and scaling together); older configs `rope_theta`
        // and `rope_scaling`.
        // Gemma 3 keys them by layer type: `full_attention` (the global layers) and `sliding_attention`.
        let by_type = v.get("rope_parameters").filter(|p| p.get("full_attention").is_some());
        let rope_params = match by_type {
            Some(p) => p.get("full_attention"),
            None => v.get("rope_parameters").or_else(|| v.get("rope_scaling")),
        };
        let rope_theta = v.get("rope_theta").or_else(|| rope_params.and_then(|p| p.get("rope_theta"))).and_then(Value::as_f64).unwrap_or(10_000.0);
        let local_rope_theta = by_type
            .and_then(|p| p.get("sliding_attention"))
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_local_base_freq"))
            .and_then(Value::as_f64);
        // Phi-4-mini (model_type phi3) rotates only part of each head: int(d_head x factor) dimensions, as
        // transformers computes it.
        let partial = v.get("partial_rotary_factor").or_else(|| rope_params.and_then(|p| p.get("partial_rotary_factor"))).and_then(Value::as_f64);
        let rotary_dim = match partial {
            Some(f) if f.is_finite() && f > 0.0 && f <= 1.0 => (d_head as f64 * f) as usize,
            Some(f) => {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    key: "partial_rotary_factor".into(),
                    msg: format!("must lie in (0, 1], got {f}"),
                })
            }
            None => d_head,
        };
        let rope_scaling = match rope_params {
            Some(Value::Object(s)) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("");
                let num = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
                match kind {
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor", 8.0),
                        low_freq_factor: num("low_freq_factor", 1.0),
                        high_freq_factor: num("high_freq_factor", 4.0),
                        original_max_position: num("original_max_position_embeddings", 8192.0),
                    }),
                    "linear" => Some(RopeScaling::Linear { factor: num("factor", 1.0) }),
                    "longrope" | "su" => Some(hf_longrope(path, v, s, rotary_dim)?),
                    "default" | "" => None,
                    other => {
                        return Err(ModelError::Metadata {
                            path: path.to_path_buf(),
                            key: "rope_scaling.rope_type".into(),
                            msg: format!("unsupported RoPE scaling `{other}` (supported: llama3, linear, longrope)"),
                        })
                    }
                }
            }
            _ => None,
        };
        let f64_or = |key: &str, default: f64| v.get(key).and_then(Value::as_f64).unwrap_or(default);
        let gemma = arch.is_gemma();
        if gemma {
            let act = v.get("hidden_activation").or_else(|| v.get("hidden_act")).and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
            if act != "gelu_pytorch_tanh" {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    key: "hidden_activation".into(),
                    msg: format!("`{act}` is not supported (gelu_pytorch_tanh)"),
                });
            }
        }
        let n_layers = uint("num_hidden_layers")?;
        let sliding_layers = match v.get("layer_types").and_then(Value::as_array) {
            Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
            None => arch.default_sliding_layers(n_layers),
        };
        let sliding_window = hf_sliding_window(path, v, arch)?;
        // Without a window the layer types say nothing (Qwen3 configs list every layer as full attention).
        let sliding_layers = if sliding_window.is_some() { sliding_layers } else { Vec::new() };
        let cfg = TransformerConfig {
            arch,
            vocab_size: uint("vocab_size")?,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            d_head,
            rotary_dim,
            d_mlp: uint("intermediate_size")?,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position: uint("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(gemma),
            qkv_bias: match arch {
                Architecture::Qwen2 => true,
                Architecture::Llama | Architecture::Qwen3 | Architecture::Phi3 | Architecture::Gemma2 | Architecture::Gemma3 => {
                    v.get("attention_bias").and_then(Value::as_bool).unwrap_or(false)
                }
            },
            qk_norm: arch.has_qk_norm(),
            sliding_window,
            sliding_layers,
            gemma,
            query_scale: if gemma { f64_or("query_pre_attn_scalar", 256.0).powf(-0.5) } else { (d_head as f64).powf(-0.5) },
            // Gemma 2 caps unless its config says null; Gemma 3 only where its config sets a cap.
            attn_softcap: match arch {
                Architecture::Gemma2 => v.get("attn_logit_softcapping").map_or(Some(50.0), Value::as_f64),
                Architecture::Gemma3 => v.get("attn_logit_softcapping").and_then(Value::as_f64),
                _ => None,
            },
            final_softcap: match arch {
                Architecture::Gemma2 => v.get("final_logit_softcapping").map_or(Some(30.0), Value::as_f64),
                Architecture::Gemma3 => v.get("final_logit_softcapping").and_then(Value::as_f64),
                _ => None,
            },
            local_rope_theta: if arch == Architecture::Gemma3 { local_rope_theta } else { None },
        };
        cfg.validate(path)?;
        cfg.validate_rotary(path)?;
        Ok(cfg)
    }

    /// Reads the `{arch}.*` metadata of a GGUF file. Tied embeddings and biases are decided by which
    /// tensors the file holds; what llama.cpp fixes per family instead of storing (Gemma's local/global layer
    /// pattern, Gemma 3's local RoPE base, the query scale) follows llama.cpp.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let arch_name = gguf.architecture()?;
        let arch = Architecture::parse(arch_name)
            .ok_or_else(|| ModelError::UnknownArchitecture { path: path.to_path_buf(), arch: arch_name.to_string() })?;
        let a = arch.gguf_name();
        let uint = |k: &str| gguf.get_u64(&format!("{a}.{k}")).map(|x| x as usize);
        let d_model = uint("embedding_length")?;
        let n_heads = uint("attention.head_count")?;
        let n_kv_heads = uint("attention.head_count_kv").unwrap_or(n_heads);
        let d_head = uint("attention.key_length").unwrap_or(d_model / n_heads.max(1));
        let vocab_size = match uint("vocab_size") {
            Ok(n) => n,
            Err(_) => gguf.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = if gguf.tensor_info("rope_freqs.weight").is_some() {
            Some(RopeScaling::Divisors(gguf.dequantize("rope_freqs.weight")?))
        } else if gguf.tensor_info("rope_factors_long.weight").is_some() {
            // Phi-3's LongRoPE as llama.cpp's converter stores it: both factor lists as tensors, the pre-training
            // context and the attention factor as metadata.
            let original = gguf.get_u64(&format!("{a}.rope.scaling.original_context_length"))? as usize;
            Some(RopeScaling::LongRope {
                short_factor: gguf.dequantize("rope_factors_short.weight")?,
                long_factor: gguf.dequantize("rope_factors_long.weight")?,
                original_max_position: original,
                attention_factor: gguf.get_f64(&format!("{a}.rope.scaling.attn_factor")).unwrap_or(1.0),
            })
        } else {
            match gguf.get(&format!("{a}.rope.scaling.type")).and_then(|v| v.as_str()) {
                Some("linear") => Some(RopeScaling::Linear { factor: gguf.get_f64(&format!("{a}.rope.scaling.factor")).unwrap_or(1.0) }),
                _ => None,
            }
        };
        let n_layers = uint("block_count")?;
        let gemma = arch.is_gemma();
        let softcap = |k: &str| gguf.get_f64(&format!("{a}.{k}")).ok().filter(|&c| c > 0.0);
        let cfg = TransformerConfig {
            arch,
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            d_head,
            // llama.cpp writes the rotated width of each head (all of it, or Phi-4-mini's part).
            rotary_dim: uint("rope.dimension_count").unwrap_or(d_head),
            d_mlp: uint("feed_forward_length")?,
            rms_norm_eps: gguf.get_f64(&format!("{a}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            rope_theta: gguf.get_f64(&format!("{a}.rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            max_position: uint("context_length").unwrap_or(4096),
            tie_embeddings: gguf.tensor_info("output.weight").is_none(),
            qkv_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            qk_norm: arch.has_qk_norm(),
            sliding_window: uint("attention.sliding_window").ok().filter(|&w| w > 0),
            // GGUF does not store Gemma's layer pattern; llama.cpp fixes it per family.
            sliding_layers: arch.default_sliding_layers(n_layers),
            gemma,
            query_scale: gguf_query_scale(arch, n_layers, d_model, n_heads, d_head),
            attn_softcap: if arch == Architecture::Gemma2 { softcap("attn_logit_softcapping") } else { None },
            final_softcap: if arch == Architecture::Gemma2 { softcap("final_logit_softcapping") } else { None },
            // Also fixed by llama.cpp for Gemma 3 rather than stored: its local layers' RoPE base.
            local_rope_theta: (arch == Architecture::Gemma3).then_some(10_000.0),
        };
        cfg.validate(path)?;
        cfg.check_gguf_shapes(gguf)?;
        cfg.validate_rotary(path)?;
        Ok(cfg)
    }

    /// The shape, in PyTorch order, that the decoder needs for a GGUF tensor name; `None` for names it
    /// does not read.
    fn gguf_shape(&self, name: &str) -> Option<Vec<i64>> {
        // validate() bounds every dimension by 2^24, so these products cannot overflow.
        let [v, d, nh, nkv, hd, dm] = [self.vocab_size, self.d_model, self.n_heads, self.n_kv_heads, self.d_head, self.d_mlp].map(|x| x as i64);
        let field = match name {
            "token_embd.weight" | "output.weight" => return Some(vec![v, d]),
            "output_norm.weight" => return Some(vec![d]),
            "rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight" => return Some(vec![self.rotary_dim as i64 / 2]),
            _ => {
                let (layer, field) = name.strip_prefix("blk.")?.split_once('.')?;
                if layer.parse::<usize>().ok()? >= self.n_layers {
                    return None;
                }
                field
            }
        };
        Some(match field {
            "attn_norm.weight" | "ffn_norm.weight" | "post_attention_norm.weight" | "post_ffw_norm.weight" => vec![d],
            "attn_q_norm.weight" | "attn_k_norm.weight" => vec![hd],
            "attn_q.weight" => vec![nh * hd, d],
            "attn_k.weight" | "attn_v.weight" => vec![nkv * hd, d],
            "attn_q.bias" => vec![nh * hd],
            "attn_k.bias" | "attn_v.bias" => vec![nkv * hd],
            "attn_output.weight" => vec![d, nh * hd],
            // Phi-3's fused projections: q, k and v rows in one tensor, gate and up rows in `ffn_up`.
            "attn_qkv.weight" => vec![(nh + 2 * nkv) * hd, d],
            "ffn_up.weight" if self.arch == Architecture::Phi3 => vec![2 * dm, d],
            "ffn_gate.weight" | "ffn_up.weight" => vec![dm, d],
            "ffn_down.weight" => vec![d, dm],
            _ => return None,
        })
    }

    /// Checks every tensor the decoder reads against the metadata's dimensions, so that a file whose
    /// metadata and tensors disagree fails here naming the tensor: the loader reshapes Q and K rows per
    /// head (undoing llama.cpp's permutation) before its own shape check, and LibTorch panics on a
    /// reshape that does not fit.
    fn check_gguf_shapes(&self, gguf: &GgufFile) -> Result<()> {
        for info in gguf.tensors() {
            let Some(expected) = self.gguf_shape(&info.name) else { continue };
            let got = info.shape();
            // RoPE divisors are a vector however ggml stores them.
            let fits = if info.name.starts_with("rope_") { info.n_elements() == expected[0] as u64 } else { got == expected };
            if !fits {
                return Err(ModelError::ShapeMismatch { path: gguf.path().to_path_buf(), name: info.name.clone(), got, expected });
            }
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| ModelError::Metadata { path: path.to_path_buf(), key: key.into(), msg };
        for (key, v) in [
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 || v > (1 << 24) {
                return Err(bad(key, format!("implausible value {v}")));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad("n_kv_heads", format!("{} query heads are not a multiple of {} KV heads", self.n_heads, self.n_kv_heads)));
        }
        if !self.d_head.is_multiple_of(2) {
            return Err(bad("d_head", format!("RoPE needs an even head width, got {}", self.d_head)));
        }
        // A NaN or infinite base or epsilon would load and then give NaN logits.
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(bad("rope_theta", format!("must be a positive finite number, got {}", self.rope_theta)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(bad("rms_norm_eps", format!("must be a non-negative finite number, got {}", self.rms_norm_eps)));
        }
        Ok(())
    }

    /// The rotated width against the head width; checked after a GGUF file's tensor shapes, so that a head count
    /// that does not fit the weights is named by the tensor it breaks rather than by the width derived from it.
    fn validate_rotary(&self, path: &Path) -> Result<()> {
        if self.rotary_dim == 0 || self.rotary_dim > self.d_head || !self.rotary_dim.is_multiple_of(2) {
            return Err(ModelError::Metadata {
                path: path.to_path_buf(),
                key: "rotary_dim".into(),
                msg: format!("RoPE rotates an even number of a head's {} dimensions, not {}", self.d_head, self.rotary_dim),
            });
        }
        Ok(())
    }

    /// The sliding window of `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.is_empty() || self.sliding_layers.get(layer).copied().unwrap_or(false))
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Scales a layer index given for a `reference_layers`-deep model (the paper's 28) to this depth,
    /// rounding to nearest, as the spec prescribes for layer ranges.
    pub fn scale_layer(&self, layer: usize, reference_layers: usize) -> usize {
        scale_layer(layer, self.n_layers, reference_layers)
    }
}

/// LongRoPE from an HF config's RoPE parameters, as transformers computes it: the pre-training context from
/// `original_max_position_embeddings` (in the parameters or the config), the attention factor given or
/// sqrt(1 + ln(factor) / ln(original)) with factor = max_position_embeddings / original when not given.
fn hf_longrope(path: &Path, v: &Value, params: &serde_json::Map<String, Value>, rotary_dim: usize) -> Result<RopeScaling> {
    let bad = |key: &str, msg: String| ModelError::Metadata { path: path.to_path_buf(), key: format!("rope_scaling.{key}"), msg };
    let factors = |key: &str| -> Result<Vec<f32>> {
        let list = params.get(key).and_then(Value::as_array).ok_or_else(|| bad(key, "missing or not a list".into()))?;
        let f: Vec<f32> = list.iter().filter_map(Value::as_f64).map(|x| x as f32).collect();
        if f.len() != list.len() || f.len() != rotary_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(bad(key, format!("needs {} positive numbers (rotated dimensions / 2), got {}", rotary_dim / 2, list.len())));
        }
        Ok(f)
    };
    let original = params
        .get("original_max_position_embeddings")
        .or_else(|| v.get("original_max_position_embeddings"))
        .and_then(Value::as_u64)
        .filter(|&n| n > 1)
        .ok_or_else(|| bad("original_max_position_embeddings", "missing or not an integer above 1".into()))? as usize;
    let max_position = v.get("max_position_embeddings").and_then(Value::as_f64).unwrap_or(original as f64);
    let factor = params.get("factor").and_then(Value::as_f64).unwrap_or(max_position / original as f64);
    let attention_factor = match params.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position: original,
        attention_factor,
    })
}

/// What q·k is scaled by for a GGUF file, which does not store Gemma's `query_pre_attn_scalar`: llama.cpp's
/// rule, 1/sqrt(d_model / n_heads) for the 27B models (recognised by depth: Gemma 2 with 46 layers, Gemma 3
/// with 62) and 1/sqrt(d_head) otherwise, which is what their Hugging Face configs set.
fn gguf_query_scale(arch: Architecture, n_layers: usize, d_model: usize, n_heads: usize, d_head: usize) -> f64 {
    let is_27b = matches!((arch, n_layers), (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62));
    let scalar = if is_27b { d_model as f64 / n_heads.max(1) as f64 } else { d_head as f64 };
    scalar.powf(-0.5)
}

/// The window of an HF config: Mistral's `sliding_window` when set; the Qwen families apply theirs only with
/// `use_sliding_window`, on layers from `max_window_layers` on, which this decoder does not do (refused).
fn hf_sliding_window(path: &Path, v: &Value, arch: Architecture) -> Result<Option<usize>> {
    let window = v.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize).filter(|&w| w > 0);
    match arch {
        Architecture::Llama | Architecture::Phi3 | Architecture::Gemma2 | Architecture::Gemma3 => Ok(window),
        Architecture::Qwen2 | Architecture::Qwen3 => {
            if v.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false) {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    key: "use_sliding_window".into(),
                    msg: "Qwen's per-layer sliding window is not supported".into(),
                });
            }
            Ok(None)
        }
    }
}

/// Scales a layer index given for a `reference_layers`-deep model to an `n_layers`-deep one, rounding to nearest
/// and staying below `n_layers`.
pub fn scale_layer(layer: usize, n_layers: usize, reference_layers: usize) -> usize {
    let scaled = (layer as f64 * n_layers as f64 / reference_layers as f64).round() as usize;
    scaled.min(n_layers.saturating_sub(1))
}
