//! Files of a run folder: atomic writes (a killed run never leaves a half-written file), f32 safetensors
//! with string metadata, JSON, and sha256 of inputs for the manifest.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::{io, DirectionsError, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers see either
/// the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))
}

/// Serialises `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| DirectionsError::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file into `T`, naming the file on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| DirectionsError::Format { path: path.into(), msg: format!("invalid JSON: {e}") })
}

/// Writes named tensors as f32 safetensors with string metadata, atomically.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
        raw.push((name.clone(), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views = raw
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| DirectionsError::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| DirectionsError::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    write_atomic(path, &bytes)
}

/// Tensors and metadata read from a safetensors file.
pub struct TensorFile {
    /// Tensors by name, f32 on the CPU.
    pub tensors: BTreeMap<String, Tensor>,
    /// The file's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The tensor `name`, with the expected shape if given, or an error naming the file and tensor.
    pub fn take(&mut self, path: &Path, name: &str, shape: Option<&[i64]>) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| DirectionsError::Format {
            path: path.into(),
            msg: format!("no tensor `{name}` (has: {})", self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")),
        })?;
        if let Some(shape) = shape {
            if t.size() != shape {
                return Err(DirectionsError::Format {
                    path: path.into(),
                    msg: format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size()),
                });
            }
        }
        Ok(t)
    }
}

/// Reads an f32 (or f16/bf16/f64, converted) safetensors file.
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = fs::read(path).map_err(io(path))?;
    let bad = |msg: String| DirectionsError::Format { path: path.into(), msg };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("invalid safetensors: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("invalid safetensors: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => return Err(bad(format!("tensor `{name}` has dtype {other:?}; expected a float type"))),
        };
        let t = Tensor::from_data_size(view.data(), &shape, kind).to_kind(Kind::Float);
        tensors.insert(name, t);
    }
    Ok(TensorFile { tensors, metadata })
}

/// Hex sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
