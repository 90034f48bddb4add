//! Files every experiment writes: atomic writes (a killed run never leaves a half-written file) and f32
//! safetensors with string metadata, read back with their names and shapes checked.
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{io, Error, Result};

/// Makes temporary names unique within the process, so concurrent writers never share one.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden temporary path next to `path` (same folder, so the final rename cannot cross devices).
fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Runs `fill` on a buffered temporary file in `path`'s folder, syncs it and renames it to `path`, so readers
/// see either the old file or the whole new one; on any error the temporary file is removed and `path` is left
/// untouched. The folder must exist.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::Invalid(format!("{}: not a file path", path.display())));
    }
    let tmp = tmp_path(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(io(path))?);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| io(path)(e.into_error()))?;
        file.sync_all().map_err(io(path))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]), creating its folder first: the files of a
/// run folder appear as the run goes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_atomic_with(path, |out| out.write_all(bytes).map_err(io(path)))
}

/// A floating-point tensor's shape and its values in C order as `f32` (converted from any float kind,
/// copied to the CPU). `Err` holds what is wrong, for the caller to attach a file name to.
pub fn tensor_to_f32(t: &Tensor) -> std::result::Result<(Vec<i64>, Vec<f32>), String> {
    // Asking an undefined tensor for its kind or size aborts inside LibTorch; check first.
    if !t.defined() {
        return Err("the tensor is undefined".into());
    }
    let kind = t.f_kind().map_err(|e| e.to_string())?;
    if !matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        return Err(format!("expected a floating-point tensor, got {kind:?}"));
    }
    let shape = t.size();
    let cpu = t
        .f_detach()
        .and_then(|t| t.f_to(Device::Cpu))
        .and_then(|t| t.f_to_dtype(Kind::Float, false, false))
        .and_then(|t| t.f_contiguous())
        .map_err(|e| e.to_string())?;
    let n =
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?)).ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let mut data = vec![0f32; n];
    if n > 0 {
        cpu.f_copy_data(&mut data, n).map_err(|e| e.to_string())?;
    }
    Ok((shape, data))
}

/// A CPU `f32` tensor of `shape` holding `data`; the caller has checked that the sizes agree
/// (`Tensor::f_from_data_size` would read past a short buffer, so it is not used).
pub fn f32_tensor(data: &[f32], shape: &[i64]) -> std::result::Result<Tensor, String> {
    Tensor::f_from_slice(data).and_then(|t| t.f_reshape(shape)).map_err(|e| e.to_string())
}

/// Writes named tensors as f32 safetensors with string metadata, atomically.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (shape, values) = tensor_to_f32(t).map_err(|msg| Error::Format { path: path.into(), msg: format!("tensor `{name}`: {msg}") })?;
        raw.push((name.clone(), Dtype::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    serialize(path, raw, metadata)
}

/// Writes named tensors in their own dtype (f32, f64 or i64, copied to the CPU) with string metadata,
/// atomically: for running sums and counts, which f32 would round.
pub fn write_tensors_exact(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bad = |msg: String| Error::Format { path: path.into(), msg: format!("tensor `{name}`: {msg}") };
        if !t.defined() {
            return Err(bad("the tensor is undefined".into()));
        }
        let t = t.f_detach().and_then(|t| t.f_to(Device::Cpu)).and_then(|t| t.f_contiguous()).map_err(|e| bad(e.to_string()))?;
        let n = t.numel();
        let (dtype, bytes) = match t.kind() {
            Kind::Float => (Dtype::F32, copy_le::<f32, 4>(&t, n, f32::to_le_bytes)),
            Kind::Double => (Dtype::F64, copy_le::<f64, 8>(&t, n, f64::to_le_bytes)),
            Kind::Int64 => (Dtype::I64, copy_le::<i64, 8>(&t, n, i64::to_le_bytes)),
            other => return Err(bad(format!("dtype {other:?} cannot be stored exactly (f32, f64 or i64)"))),
        };
        raw.push((name.clone(), dtype, t.size(), bytes.map_err(|e| bad(e.to_string()))?));
    }
    serialize(path, raw, metadata)
}

fn copy_le<T: tch::kind::Element + Default + Copy, const N: usize>(
    t: &Tensor,
    n: usize,
    le: fn(T) -> [u8; N],
) -> std::result::Result<Vec<u8>, tch::TchError> {
    let mut data = vec![T::default(); n];
    if n > 0 {
        t.f_copy_data(&mut data, n)?;
    }
    Ok(data.into_iter().flat_map(le).collect())
}

fn serialize(path: &Path, raw: Vec<(String, Dtype, Vec<i64>, Vec<u8>)>, metadata: &BTreeMap<String, String>) -> Result<()> {
    let views = raw
        .iter()
        .map(|(n, d, s, b)| {
            let shape = s.iter().map(|&x| x as usize).collect();
            Ok((n.as_str(), safetensors::tensor::TensorView::new(*d, shape, b)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    let bytes = canonical_header(bytes).map_err(|msg| Error::Format { path: path.into(), msg })?;
    write_atomic(path, &bytes)
}

/// safetensors writes the metadata from a `HashMap`, in an order that changes from run to run; runs identify
/// their inputs by sha256, so the same tensors and metadata must give the same bytes: the header's keys are
/// sorted (same characters, so the same length and offsets).
fn canonical_header(mut bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let b: BTreeMap<String, serde_json::Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(b.into_iter().collect())
            }
            other => other,
        }
    }
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).ok_or("no header")?;
    let end = 8usize.checked_add(n).filter(|&e| e <= bytes.len()).ok_or("header longer than the file")?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..end]).map_err(|e| format!("header: {e}"))?;
    let mut text = serde_json::to_vec(&sorted(header)).map_err(|e| format!("header: {e}"))?;
    if text.len() > n {
        return Err(format!("sorted header is {} bytes, the original {n}", text.len()));
    }
    // safetensors pads its header with spaces to 8-byte alignment.
    text.resize(n, b' ');
    bytes[8..end].copy_from_slice(&text);
    Ok(bytes)
}

/// Tensors and metadata read from a safetensors file.
pub struct TensorFile {
    /// Tensors by name on the CPU: f32 from [`read_tensors`], the stored dtype from [`read_tensors_exact`].
    pub tensors: BTreeMap<String, Tensor>,
    /// The file's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The tensor `name`, with the expected shape if given, or an error naming the file and tensor.
    pub fn take(&mut self, path: &Path, name: &str, shape: Option<&[i64]>) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| Error::Format {
            path: path.into(),
            msg: format!("no tensor `{name}` (has: {})", self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")),
        })?;
        if let Some(shape) = shape {
            if t.size() != shape {
                return Err(Error::Format { path: path.into(), msg: format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size()) });
            }
        }
        Ok(t)
    }
}

/// Reads an f32 (or f16/bf16/f64, converted) safetensors file.
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let mut file = read_tensors_exact(path)?;
    for (name, t) in file.tensors.iter_mut() {
        if !t.is_floating_point() {
            return Err(Error::Format { path: path.into(), msg: format!("tensor `{name}` has dtype {:?}; expected a float type", t.kind()) });
        }
        *t = t.to_kind(Kind::Float);
    }
    Ok(file)
}

/// Reads a safetensors file keeping each tensor's dtype (f32, f16, bf16, f64, i64).
pub fn read_tensors_exact(path: &Path) -> Result<TensorFile> {
    let bytes = fs::read(path).map_err(io(path))?;
    let bad = |msg: String| Error::Format { path: path.into(), msg };
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
            Dtype::I64 => Kind::Int64,
            other => return Err(bad(format!("tensor `{name}` has dtype {other:?}; expected a float type or i64"))),
        };
        tensors.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    Ok(TensorFile { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("emo-steer-canonical-{}", std::process::id()));
        let meta: BTreeMap<String, String> = (0..12).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
        let tensors = [("b".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0])), ("a".to_string(), Tensor::from_slice(&[4.0f64]))];
        // A HashMap's order differs between instances, so several writes would differ without the sorting.
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let path = dir.join(format!("{i}.safetensors"));
                write_tensors_exact(&path, &tensors, &meta).unwrap();
                fs::read(&path).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]), "the files differ");
        let path = dir.join("0.safetensors");
        let mut f = read_tensors_exact(&path).unwrap();
        assert_eq!(f.metadata, meta);
        assert_eq!(Vec::<f32>::try_from(f.take(&path, "b", Some(&[3])).unwrap()).unwrap(), vec![1.0, 2.0, 3.0]);
        let _ = fs::remove_dir_all(&dir);
    }
}
