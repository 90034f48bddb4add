//! Where weights come from: a GGUF file or Hugging Face safetensors (single or sharded, memory-mapped).
//! Both are addressed by Hugging Face tensor names, so the decoder has one loading path.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::config::{Architecture, TransformerConfig};
use crate::gguf::GgufFile;
use crate::quant_rows::QuantRows;
use crate::{ModelError, Result};

/// A source of named weights, by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource {
    /// Whether the tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor on the CPU, in its stored float type (dequantized to f32 for GGUF).
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// The tensor on the CPU in `kind`. GGUF files dequantize it in slices straight into a tensor of that
    /// kind, so loading never holds a whole f32 copy of a large tensor (a 128k-token embedding is 1.6 GB in f32).
    fn tensor_as(&self, name: &str, kind: Kind) -> Result<Tensor> {
        Ok(self.tensor(name)?.to_kind(kind))
    }
    /// The file or folder, for error messages.
    fn path(&self) -> &Path;
    /// The tensor as integer codes with group scales and zeros, without changing any weight
    /// ([`crate::quant_rows`]), or why it cannot be (not quantized, or not in groups of 32). Only GGUF files hold
    /// such tensors.
    fn quantized(&self, name: &str) -> Result<std::result::Result<QuantRows, String>> {
        let _ = name;
        Ok(Err("not a quantized file".into()))
    }
}

/// Weights of a GGUF file, renamed to Hugging Face names and, for the Llama family, with llama.cpp's
/// Q/K row permutation undone so that the decoder sees Hugging Face's layout (for Gemma, with the 1 that
/// llama.cpp's converter adds to every norm weight taken off again).
pub struct GgufWeights<'a> {
    gguf: &'a GgufFile,
    cfg: TransformerConfig,
}

impl<'a> GgufWeights<'a> {
    /// Wraps an open GGUF file whose config was read with [`TransformerConfig::from_gguf`].
    pub fn new(gguf: &'a GgufFile, cfg: TransformerConfig) -> Self {
        GgufWeights { gguf, cfg }
    }

    /// The GGUF tensor behind a Hugging Face name, or `MissingTensor`.
    fn info(&self, name: &str) -> Result<(String, &crate::gguf::GgufTensorInfo)> {
        let path = self.gguf.path().to_path_buf();
        let gname = self.gguf_name(name).ok_or_else(|| ModelError::MissingTensor { path: path.clone(), name: name.to_string() })?;
        match self.gguf.tensor_info(&gname) {
            Some(info) => Ok((gname, info)),
            None => Err(ModelError::MissingTensor { path, name: format!("{gname} (Hugging Face `{name}`)") }),
        }
    }

    /// How many heads share the rows of `name` when llama.cpp permuted them for its interleaved RoPE (the
    /// Llama family's q and k), else `None`.
    fn permuted_heads(&self, name: &str) -> Option<i64> {
        if self.cfg.arch != Architecture::Llama {
            return None;
        }
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            Some(self.cfg.n_heads as i64)
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            Some(self.cfg.n_kv_heads as i64)
        } else {
            None
        }
    }

    /// Gemma's norms multiply by (1 + w); llama.cpp's converter stores w + 1 so that its kernels multiply by
    /// the weight alone. Whether `name` is such a norm weight.
    fn shifted_norm(&self, name: &str) -> bool {
        self.cfg.gemma && name.ends_with("norm.weight")
    }

    fn gguf_name(&self, name: &str) -> Option<String> {
        let simple = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(s) = simple {
            return Some(s.to_string());
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, field) = rest.split_once('.')?;
        let g = match field {
            "input_layernorm.weight" => "attn_norm.weight",
            // Gemma's post_attention_layernorm norms the attention output; its MLP input norm is
            // pre_feedforward_layernorm, which llama.cpp calls ffn_norm as it does Llama's MLP input norm.
            "post_attention_layernorm.weight" if self.cfg.gemma => "post_attention_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.qkv_proj.weight" => "attn_qkv.weight",
            "mlp.gate_up_proj.weight" => "ffn_up.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{g}"))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.gguf_name(name).is_some_and(|g| self.gguf.tensor_info(&g).is_some())
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensor_as(name, Kind::Float)
    }

    fn tensor_as(&self, name: &str, kind: Kind) -> Result<Tensor> {
        if self.shifted_norm(name) && kind != Kind::Float {
            // The 1 comes off in f32: a bf16 w + 1 has lost most of w's bits already.
            return Ok(self.tensor_as(name, Kind::Float)?.to_kind(kind));
        }
        let (gname, info) = self.info(name)?;
        let shape = info.shape();
        let k = shape.last().copied().unwrap_or(1).max(0) as usize;
        let n = usize::try_from(info.n_elements()).unwrap_or(usize::MAX);
        let whole_rows =
            matches!((info.dtype.block_size(), info.dtype.type_size()), (Some(bs), Some(_)) if k > 0 && k.is_multiple_of(bs) && n.is_multiple_of(k));
        let t = if !whole_rows || !crate::quant::is_supported(info.dtype) {
            // Whatever is wrong, dequantizing the whole tensor names it.
            Tensor::f_from_slice(&self.gguf.dequantize(&gname)?)?.to_kind(kind)
        } else {
            let data = self.gguf.tensor_data(&gname)?;
            let row_bytes = data.len() / (n / k).max(1);
            let out = Tensor::f_empty([n as i64], (kind, tch::Device::Cpu))?;
            // About a million values a slice: one f32 slice at a time besides the tensor being filled.
            let rows_per_slice = ((1 << 20) / k).max(1);
            for (i, bytes) in data.chunks(rows_per_slice * row_bytes).enumerate() {
                let len = bytes.len() / row_bytes * k;
                let vals = crate::quant::dequantize(info.dtype, bytes, len)
                    .map_err(|e| ModelError::format(self.gguf.path(), format!("tensor `{gname}`: {e}")))?;
                out.narrow(0, (i * rows_per_slice * k) as i64, len as i64).copy_(&Tensor::f_from_slice(&vals)?);
            }
            out
        };
        self.gguf.release(&gname);
        let t = t.f_reshape(&shape)?;
        let t = if self.shifted_norm(name) { t.f_sub_scalar(1.0)? } else { t };
        // llama.cpp permutes Q and K rows for its interleaved RoPE; Hugging Face (and we) use the half-split
        // layout, so invert the permutation per head: [heads, 2, d/2] -> [heads, d/2, 2].
        Ok(match self.permuted_heads(name) {
            Some(h) => unpermute_rows(&t, h)?,
            None => t,
        })
    }

    fn quantized(&self, name: &str) -> Result<std::result::Result<QuantRows, String>> {
        let (gname, info) = self.info(name)?;
        if QuantRows::bits(info.dtype).is_none() {
            return Ok(Err(format!("{} has no 32-value groups", info.dtype)));
        }
        let shape = info.shape();
        let &[n, k] = shape.as_slice() else {
            return Ok(Err(format!("{}-dimensional", shape.len())));
        };
        let (n, k) = (n as usize, k as usize);
        let data = self.gguf.tensor_data(&gname)?;
        let rows = QuantRows::from_ggml(info.dtype, data, n, k);
        self.gguf.release(&gname);
        let rows = match rows {
            Ok(Some(rows)) => rows,
            Ok(None) => return Ok(Err(format!("{} has no 32-value groups", info.dtype))),
            Err(e) => return Err(ModelError::format(self.gguf.path(), format!("tensor `{gname}`: {e}"))),
        };
        Ok(Ok(match self.permuted_heads(name) {
            Some(h) => {
                // The same permutation as `tensor`, computed on row indices.
                let order = unpermute_rows(&Tensor::arange(n as i64, (tch::Kind::Int64, tch::Device::Cpu)), h)?;
                let order: Vec<i64> = Vec::try_from(&order)?;
                rows.select_rows(&order.iter().map(|&i| i as usize).collect::<Vec<_>>())
            }
            None => rows,
        }))
    }

    fn path(&self) -> &Path {
        self.gguf.path()
    }
}

/// Inverts llama.cpp's `permute(w, n_head)` on the rows of `w` (weight [rows, cols] or bias [rows]); an error,
/// not a LibTorch panic, when the rows do not split into `n_head` pairs of halves.
fn unpermute_rows(w: &Tensor, n_head: i64) -> Result<Tensor> {
    let size = w.size();
    let rows = size.first().copied().unwrap_or(0);
    let half = if n_head > 0 { rows / n_head / 2 } else { 0 };
    let mut view: Vec<i64> = vec![n_head, half, 2];
    view.extend_from_slice(&size[1..]);
    Ok(w.f_reshape(&view)?.f_transpose(1, 2)?.f_reshape(&size)?)
}

/// Hugging Face safetensors weights, single file or sharded with `model.safetensors.index.json`,
/// memory-mapped.
pub struct SafetensorsWeights {
    dir: PathBuf,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    // tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens every `*.safetensors` of a model folder (the shards listed in the index when there is one).
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::format(&index_path, "no `weight_map` object"))?;
            map.values().filter_map(|f| f.as_str().map(str::to_string)).collect()
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
            rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".safetensors")).collect()
        };
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(ModelError::format(dir, "no *.safetensors weights in this folder"));
        }
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for name in names {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is read-only; a file changed underneath us is the user's doing, as with any mmap.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::format(&path, format!("invalid safetensors: {e}")))?;
            for t in st.names() {
                index.insert(t.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(SafetensorsWeights { dir: dir.to_path_buf(), files, index })
    }
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| ModelError::MissingTensor { path: self.dir.clone(), name: name.to_string() })?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| ModelError::format(path, format!("invalid safetensors: {e}")))?;
        let view = st.tensor(name).map_err(|e| ModelError::format(path, format!("tensor `{name}`: {e}")))?;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => return Err(ModelError::format(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}
