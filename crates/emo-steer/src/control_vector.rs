//! llama.cpp control vectors (GGUF, one file per emotion): how emotion directions go to and come back from
//! other tools (NumPy files are [`crate::npy`]'s).
//!
//! Every writer is atomic: it writes a temporary file in the destination's folder and renames it into
//! place, so a killed process leaves either the old file or the new one, never half of one. Every
//! reader checks sizes, shapes and types before it allocates or builds a tensor, and reports a bad
//! file as an error naming it, never a panic.
//!
//! Control vectors follow llama.cpp (`common_control_vector_load`, `llama_adapter_cvec`): tensor
//! `direction.N` is added to the output of block `N`, for `N >= 1`. A direction tensor of shape
//! `[n_layers, d_model]` taken at `resid_post` therefore maps row `N` to `direction.N`; row 0 has no
//! slot in the format and is not exported.
use std::collections::BTreeMap;
use std::path::Path;

use emo_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::tensor_file::{f32_tensor, tensor_to_f32};

// ---------------------------------------------------------------------------------------------------
// llama.cpp control vectors
// ---------------------------------------------------------------------------------------------------

/// `general.architecture` of every control vector.
const CVEC_ARCH: &str = "controlvector";
/// The key naming the model family the vector was made for.
const CVEC_MODEL_HINT: &str = "controlvector.model_hint";
/// The key counting the direction tensors (llama.cpp's and repeng's convention; llama.cpp ignores it).
const CVEC_LAYER_COUNT: &str = "controlvector.layer_count";
/// Prefix of the tensor names; the suffix is the block the vector is added after.
const CVEC_PREFIX: &str = "direction.";

/// A llama.cpp control vector read back from GGUF.
#[derive(Debug)]
pub struct ControlVector {
    /// `controlvector.model_hint` (the model family, e.g. `llama`).
    pub model_hint: String,
    /// `controlvector.layer_count` as stored: by llama.cpp's and repeng's convention the number of
    /// direction tensors (`n_layers - 1` for a full vector), not the model's layer count.
    pub layer_count: usize,
    /// Length of every direction.
    pub d_model: usize,
    /// Direction added to the output of block `N`, by `N` (always >= 1): CPU `f32`, shape `[d_model]`.
    pub layers: BTreeMap<usize, Tensor>,
}

impl ControlVector {
    /// The smallest layer count that holds every direction: the highest block index plus one.
    pub fn n_layers(&self) -> usize {
        self.layers.keys().next_back().map_or(1, |&n| n + 1)
    }

    /// The directions as an `[n_layers, d_model]` `f32` tensor in resid_post order (row `N` is the
    /// vector added after block `N`), with zero rows where the file has no vector, row 0 included.
    /// `Invalid` if a direction's block is `n_layers` or more.
    pub fn to_tensor(&self, n_layers: usize) -> Result<Tensor> {
        if let Some(&max) = self.layers.keys().next_back().filter(|&&n| n >= n_layers) {
            return Err(Error::Invalid(format!("control vector has a direction for block {max}, which does not fit in {n_layers} layers")));
        }
        let d = self.d_model;
        let total = n_layers.checked_mul(d).ok_or_else(|| Error::Invalid(format!("{n_layers} x {d} is too large")))?;
        let mut dense = vec![0f32; total];
        for (&layer, t) in &self.layers {
            let (_, data) = tensor_to_f32(t).map_err(|msg| Error::Invalid(format!("control vector direction {layer}: {msg}")))?;
            if data.len() != d {
                return Err(Error::Invalid(format!("control vector direction {layer} has {} values, expected d_model = {d}", data.len())));
            }
            dense[layer * d..(layer + 1) * d].copy_from_slice(&data);
        }
        f32_tensor(&dense, &[n_layers as i64, d as i64]).map_err(Error::Invalid)
    }
}

/// Writes one emotion's directions as a llama.cpp control vector (GGUF v3, loadable with
/// `llama-cli --control-vector FILE`).
///
/// `directions_resid_post` is `[n_layers, d_model]` at `resid_post`; row `N` (times `scale`) becomes
/// `direction.N` for `N` in `1..n_layers`. **Row 0 is not written**: llama.cpp has no slot for block 0.
/// Metadata: `general.architecture = "controlvector"`, `controlvector.model_hint = model_hint`,
/// `controlvector.layer_count = n_layers - 1` (u32, the number of direction tensors, as llama.cpp's
/// `cvector-generator` writes it). Refuses fewer than 2 layers and non-finite values. Atomic.
pub fn write_control_vector(path: impl AsRef<Path>, directions_resid_post: &Tensor, model_hint: &str, scale: f32) -> Result<()> {
    let path = path.as_ref();
    let invalid = |msg: String| Error::Invalid(format!("{}: cannot write control vector: {msg}", path.display()));
    if !scale.is_finite() {
        return Err(invalid(format!("scale {scale} is not finite")));
    }
    let (shape, data) = tensor_to_f32(directions_resid_post).map_err(invalid)?;
    let (n_layers, d) = match shape[..] {
        [l, d] if l >= 2 && d >= 1 => (l as usize, d as usize),
        _ => return Err(invalid(format!("expected directions of shape [n_layers >= 2, d_model >= 1], got {shape:?}"))),
    };
    let mut writer = GgufWriter::new();
    writer.add_metadata("general.architecture", GgufValue::String(CVEC_ARCH.into()));
    writer.add_metadata(CVEC_MODEL_HINT, GgufValue::String(model_hint.into()));
    let count = u32::try_from(n_layers - 1).map_err(|_| invalid(format!("{n_layers} layers is too many")))?;
    writer.add_metadata(CVEC_LAYER_COUNT, GgufValue::U32(count));
    for layer in 1..n_layers {
        let row: Vec<f32> = data[layer * d..(layer + 1) * d].iter().map(|v| v * scale).collect();
        if let Some(i) = row.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!("row {layer} (times scale {scale}) has a non-finite value {} at index {i}", row[i])));
        }
        writer.add_f32_tensor(format!("{CVEC_PREFIX}{layer}"), &[d], &row).map_err(|e| invalid(e.to_string()))?;
    }
    // GgufWriter::write is atomic itself (temporary file in the same folder, then rename).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    }
    writer.write(path)?;
    Ok(())
}

/// Reads a llama.cpp control vector, checking it as llama.cpp would: `general.architecture` is
/// `controlvector`, every tensor is named `direction.N` with `N >= 1` (each `N` once), is F32 and
/// 1-D, and all have the same length. `controlvector.layer_count` may be any integer type (llama.cpp
/// writes i32, repeng u32); `controlvector.model_hint` may be absent (read as "").
pub fn read_control_vector(path: impl AsRef<Path>) -> Result<ControlVector> {
    let path = path.as_ref();
    let format = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let gguf = GgufFile::open(path)?;

    match gguf.get("general.architecture") {
        Some(GgufValue::String(a)) if a == CVEC_ARCH => {}
        Some(GgufValue::String(a)) => return Err(format(format!("general.architecture is `{a}`, expected `{CVEC_ARCH}`: not a control vector"))),
        Some(v) => return Err(format(format!("general.architecture is a {}, expected the string `{CVEC_ARCH}`", v.type_name()))),
        None => return Err(format("no general.architecture: not a control vector".into())),
    }
    let model_hint = match gguf.get(CVEC_MODEL_HINT) {
        None => String::new(),
        Some(GgufValue::String(s)) => s.clone(),
        Some(v) => return Err(format(format!("{CVEC_MODEL_HINT} is a {}, expected a string", v.type_name()))),
    };
    let layer_count = match gguf.get(CVEC_LAYER_COUNT) {
        None => return Err(format(format!("no {CVEC_LAYER_COUNT}"))),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format(format!("{CVEC_LAYER_COUNT} is {v:?}, expected a non-negative integer")))?,
    };

    let mut d_model: Option<usize> = None;
    let mut layers = BTreeMap::new();
    for info in gguf.tensors() {
        let name = &info.name;
        let layer = name
            .strip_prefix(CVEC_PREFIX)
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format(format!("tensor `{name}` is not named `direction.N`")))?;
        if layer == 0 {
            return Err(format(format!("tensor `{name}`: block 0 is not allowed (llama.cpp adds direction.N after block N, N >= 1)")));
        }
        if info.dtype != GgmlType::F32 {
            return Err(format(format!("tensor `{name}` has type {}, expected F32", info.dtype)));
        }
        // ggml counts trailing dims of 1 as absent, so [d, 1] is 1-D to llama.cpp too.
        if info.dims.is_empty() || info.dims[1..].iter().any(|&x| x != 1) {
            return Err(format(format!("tensor `{name}` has shape {:?}, expected 1-D", info.shape())));
        }
        let len =
            usize::try_from(info.dims[0]).ok().filter(|&n| n > 0).ok_or_else(|| format(format!("tensor `{name}` has length {}", info.dims[0])))?;
        match d_model {
            None => d_model = Some(len),
            Some(d) if d != len => return Err(format(format!("tensor `{name}` has length {len}, but earlier directions have length {d}"))),
            Some(_) => {}
        }
        let data = gguf.dequantize(name)?;
        let tensor = f32_tensor(&data, &[len as i64]).map_err(|m| format(format!("tensor `{name}`: {m}")))?;
        if layers.insert(layer, tensor).is_some() {
            return Err(format(format!("tensor `{name}`: block {layer} has more than one direction")));
        }
    }
    let d_model = d_model.ok_or_else(|| format("no direction.N tensors".into()))?;
    Ok(ControlVector { model_hint, layer_count, d_model, layers })
}
