//! [`GgufWriter`]: GGUF v3 files with `f32` tensors (control vectors, test fixtures), loadable by llama.cpp.
use std::io::Write;
use std::path::{Path, PathBuf};

use super::value::value_type_name;
use super::{GgmlType, GgufValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME};
use crate::error::{ModelError, Result};

/// Builds a GGUF v3 file from metadata and `f32` tensors.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    /// (name, ggml dims, data).
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry; a key added twice keeps its first position and its last value.
    /// `general.alignment` (a UINT32 power of two) sets the data alignment, default 32.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Adds an `f32` tensor with a PyTorch-order `shape` (at most 4 dims); `InvalidArgument` if
    /// `data.len()` is not the shape's element count, or the name is a duplicate or 64+ bytes long.
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, shape: &[usize], data: &[f32]) -> Result<()> {
        let name = name.into();
        if name.len() >= MAX_NAME {
            return Err(ModelError::InvalidArgument(format!(
                "GGUF tensor name `{name}` is {} bytes; ggml allows at most {}",
                name.len(),
                MAX_NAME - 1
            )));
        }
        if shape.len() > MAX_DIMS as usize {
            return Err(ModelError::InvalidArgument(format!("GGUF tensor `{name}` has shape {shape:?}; ggml allows at most {MAX_DIMS} dims")));
        }
        let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if n != Some(data.len()) {
            return Err(ModelError::InvalidArgument(format!("GGUF tensor `{name}` has shape {shape:?} but {} values", data.len())));
        }
        if self.tensors.iter().any(|(n, _, _)| *n == name) {
            return Err(ModelError::InvalidArgument(format!("duplicate GGUF tensor `{name}`")));
        }
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name, dims, data.to_vec()));
        Ok(())
    }

    /// Writes the file (GGUF v3, little-endian) to `path.tmp`, then renames it to `path`, so a
    /// reader never sees a half-written file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let alignment = match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => return Err(ModelError::InvalidArgument(format!("{ALIGNMENT_KEY} must be a UINT32 power of two, got {v:?}"))),
        };

        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut head, value).map_err(|msg| ModelError::InvalidArgument(format!("GGUF metadata key `{key}`: {msg}")))?;
        }
        let mut rel = 0u64;
        for (name, dims, data) in &self.tensors {
            put_str(&mut head, name);
            head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&GgmlType::F32.to_u32().to_le_bytes());
            head.extend_from_slice(&rel.to_le_bytes());
            rel = (rel + 4 * data.len() as u64).div_ceil(alignment) * alignment;
        }
        pad_to(&mut head, alignment);

        // One temporary name per process and call: processes sharing a folder (a run's shards) may write the
        // same file at once, and each must rename only what it wrote.
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            out.write_all(&head)?;
            let mut chunk = Vec::new();
            for (_, _, data) in &self.tensors {
                chunk.clear();
                chunk.extend(data.iter().flat_map(|v| v.to_le_bytes()));
                pad_to(&mut chunk, alignment);
                out.write_all(&chunk)?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(ModelError::io(tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ModelError::io(path, e)
        })
    }
}

/// Zero-pads `buf` to a multiple of `alignment`.
fn pad_to(buf: &mut Vec<u8>, alignment: u64) {
    let len = buf.len() as u64;
    buf.resize((len.div_ceil(alignment) * alignment) as usize, 0);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encodes a value (without its type id); arrays must be homogeneous.
fn put_value(buf: &mut Vec<u8>, value: &GgufValue) -> std::result::Result<(), String> {
    match value {
        GgufValue::U8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => buf.push(u8::from(*v)),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Array(items) => {
            // An empty array needs some element type; ggml accepts any, UINT8 is the smallest.
            let elem = items.first().map_or(0, GgufValue::type_id);
            if let Some(bad) = items.iter().find(|v| v.type_id() != elem) {
                return Err(format!("array mixes {} and {} elements (GGUF arrays are homogeneous)", value_type_name(elem), bad.type_name()));
            }
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item)?;
            }
        }
    }
    Ok(())
}
