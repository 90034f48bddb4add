//! Reading and writing GGUF files (the llama.cpp / ggml model format), versions 2 and 3.
//!
//! [`GgufFile::open`] memory-maps the file and parses the header, the metadata and the tensor
//! infos; tensor bytes are borrowed from the map and decoded on request by [`crate::quant`]. Every
//! count, length and offset read from the file is checked against the file's size before it is used,
//! so a damaged file gives a [`ModelError`] naming the file, never a panic or a huge allocation.
//! [`GgufWriter`] writes GGUF v3 files with `f32` tensors (for tests and exported artefacts). The rooms:
//! this file (the reader), [`value`] (metadata values), [`writer`]; element types are
//! [`crate::ggml_type`], beside the dequantisers.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
pub use crate::ggml_type::GgmlType;
use crate::quant;
pub use value::GgufValue;
use value::{min_value_size, value_type_name};
pub use writer::GgufWriter;

pub mod value;
pub mod writer;

/// The magic bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// ggml's limit on tensor name length, terminator included (`GGML_MAX_NAME`); enforced by the writer
/// so that its files load in llama.cpp.
const MAX_NAME: usize = 64;
/// Nesting limit for arrays of arrays, so a crafted file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------------------
// Tensor infos
// ---------------------------------------------------------------------------------------------------

/// Where a tensor is in a GGUF file and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost, contiguous dimension.
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch order (outermost first): the reversed `dims`.
    pub fn shape(&self) -> Vec<i64> {
        // `open` rejects dims above i64::MAX; saturate for hand-built infos.
        self.dims.iter().rev().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect()
    }

    /// Number of elements (the product of the dims; 1 for zero dims). Saturates at `u64::MAX`;
    /// [`GgufFile::open`] rejects files where it would overflow.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Bytes of data: `None` if the type's layout is unknown, the innermost dim is not a whole
    /// number of blocks, or the size overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let bs = self.dtype.block_size()? as u64;
        let ts = self.dtype.type_size()? as u64;
        let inner = self.dims.first().copied().unwrap_or(1);
        if inner % bs != 0 {
            return None;
        }
        let n = self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        (n / bs).checked_mul(ts)
    }
}

// ---------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------

/// A parsed, memory-mapped GGUF file.
///
/// The tensor data stays in the map; the file must not be modified while this value lives.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    mmap: memmap2::Mmap,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the mapped file.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: String, start: u64, end: u64) -> ModelError {
        ModelError::Truncated { path: self.path.to_path_buf(), what, start, end, len: self.buf.len() as u64 }
    }

    /// The next `n` bytes; `what` (built only on failure) describes them for the error.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let start = self.pos as u64;
        let Some(end) = start.checked_add(n) else {
            return Err(ModelError::format(self.path, format!("{}: size {n} at byte {start} overflows", what())));
        };
        if end > self.buf.len() as u64 {
            return Err(self.truncated(what(), start, end));
        }
        // end <= buf.len(), so both fit in usize and the range is in bounds.
        let bytes = self.buf.get(self.pos..end as usize).unwrap_or_default();
        self.pos = end as usize;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.take(len, &|| format!("{} ({len} bytes)", what()))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(ModelError::format(self.path, format!("{} is not valid UTF-8: {e}", what()))),
        }
    }

    /// One metadata value of type `ty`.
    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let [b] = self.array(what)?;
                match b {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(ModelError::format(self.path, format!("{}: bool byte is {b}, not 0 or 1", what()))),
                }
            }
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(ModelError::format(self.path, format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what())));
                }
                let elem = self.u32(&|| format!("element type of {}", what()))?;
                let count = self.u64(&|| format!("element count of {}", what()))?;
                let Some(min) = min_value_size(elem) else {
                    return Err(ModelError::format(self.path, format!("{}: array of unknown value type {elem}", what())));
                };
                // Reject counts the rest of the file cannot hold before reserving memory for them.
                let start = self.pos as u64;
                let need = count.checked_mul(min).and_then(|n| n.checked_add(start));
                let Some(end) = need else {
                    return Err(ModelError::format(self.path, format!("{}: array count {count} is impossibly large", what())));
                };
                if end > self.buf.len() as u64 {
                    let desc = format!("{} ({count} {} elements)", what(), value_type_name(elem));
                    return Err(self.truncated(desc, start, end));
                }
                // count <= remaining bytes, so it fits in usize.
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    items.push(self.value(elem, depth + 1, &|| format!("element {i} of {}", what()))?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(ModelError::format(self.path, format!("{}: unknown value type {t}", what()))),
        })
    }
}

impl GgufFile {
    /// Memory-maps and parses a GGUF v2 or v3 file (little-endian), honouring `general.alignment`.
    ///
    /// Checks that every tensor of a known type lies inside the file; tensors of unknown types
    /// are listed but fail on [`GgufFile::tensor_data`] / [`GgufFile::dequantize`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the map is read-only; as with every mmap-based loader, the file must not be
        // truncated or rewritten while the GgufFile lives.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let parsed = parse(&path, &mmap)?;
        Ok(GgufFile {
            path,
            version: parsed.version,
            meta_index: parsed.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect(),
            metadata: parsed.metadata,
            tensor_index: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            mmap,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data-section alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).and_then(|&i| self.metadata.get(i)).map(|(_, v)| v)
    }

    fn metadata_error(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Metadata { path: self.path.clone(), key: key.to_owned(), msg: msg.into() }
    }

    /// A key that must be present, or a `Metadata` error.
    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| self.metadata_error(key, "absent"))
    }

    fn wrong_type(&self, key: &str, want: &str, got: &GgufValue) -> ModelError {
        self.metadata_error(key, format!("expected {want}, found {}", got.type_name()))
    }

    /// A non-negative integer key (any integer width).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// A numeric key (any integer or float type).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// An array key.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "an array", v))
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of a named tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).and_then(|&i| self.tensors.get(i))
    }

    fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), name: name.to_owned() })
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> ModelError {
        ModelError::UnsupportedQuant { path: self.path.clone(), tensor: info.name.clone(), dtype: info.dtype.to_string() }
    }

    /// The raw bytes of a tensor, borrowed from the map.
    ///
    /// `UnsupportedQuant` for a type whose block layout is unknown (its size cannot be computed).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let info = self.require_tensor(name)?;
        let n_bytes = match info.n_bytes() {
            Some(n) => n,
            None if info.dtype.type_size().is_none() => return Err(self.unsupported(info)),
            None => {
                return Err(ModelError::format(&self.path, format!("tensor `{name}` of type {} has an invalid size {:?}", info.dtype, info.dims)))
            }
        };
        let len = self.mmap.len() as u64;
        let end = info.offset.checked_add(n_bytes).filter(|&e| e <= len);
        match end.and_then(|e| self.mmap.get(info.offset as usize..e as usize)) {
            Some(bytes) => Ok(bytes),
            None => Err(ModelError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor `{name}`"),
                start: info.offset,
                end: info.offset.saturating_add(n_bytes),
                len,
            }),
        }
    }

    /// Drops the pages of a tensor's data from this process's memory after they have been copied out. The map
    /// stays valid (a later read faults them in again from the file); loading then peaks near the size of the
    /// loaded weights instead of file plus weights. Best effort: an error only leaves the pages where they are.
    pub fn release(&self, name: &str) {
        let (Some(info), len) = (self.tensor_info(name), self.mmap.len() as u64) else {
            return;
        };
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let end = info.n_bytes().and_then(|n| info.offset.checked_add(n)).unwrap_or(len).min(len);
        let (start, end) = (info.offset.div_ceil(page) * page, end / page * page);
        if end > start {
            // SAFETY: the map is private and read-only, so MADV_DONTNEED discards only clean file-backed pages,
            // which the kernel reads again from the file on the next access: no byte seen through the map changes.
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start as usize, (end - start) as usize) };
        }
    }

    /// Decodes a tensor to `f32`, in ggml element order (flattened; see [`GgufTensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        if !quant::is_supported(info.dtype) {
            return Err(self.unsupported(info));
        }
        let n = usize::try_from(info.n_elements())
            .map_err(|_| ModelError::format(&self.path, format!("tensor `{name}` is too large for this platform")))?;
        let data = self.tensor_data(name)?;
        quant::dequantize(info.dtype, data, n).map_err(|e| ModelError::format(&self.path, format!("tensor `{name}`: {e}")))
    }
}

/// What [`parse`] extracts from a file.
struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// Parses the header, metadata and tensor infos of a GGUF image.
fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { path, buf, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "GGUF magic".into())?;
    if &magic != MAGIC {
        return Err(ModelError::format(path, format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32(&|| "GGUF version".into())?;
    match version {
        2 | 3 => {}
        // A big-endian file has the same magic and a byte-swapped version.
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => return Err(ModelError::format(path, "big-endian GGUF files are not supported")),
        v => return Err(ModelError::format(path, format!("unsupported GGUF version {v} (only versions 2 and 3 are supported)"))),
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata count".into())?;
    let remaining = (buf.len() - c.pos) as u64;
    // Cap the reservation by what the file could hold, so a corrupt count cannot exhaust memory;
    // the loops below fail with `Truncated` at the real end.
    let mut metadata = Vec::with_capacity(n_kv.min(remaining / 13) as usize);
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let ty = c.u32(&|| format!("value type of metadata key `{key}`"))?;
        let value = c.value(ty, 0, &|| format!("value of metadata key `{key}`"))?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(ModelError::format(path, format!("duplicate metadata key `{key}`")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        // ggml and gguf-py both require a u32 that is a power of two.
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return Err(ModelError::Metadata {
                path: path.to_path_buf(),
                key: ALIGNMENT_KEY.into(),
                msg: format!("must be a UINT32 power of two, found {v:?}"),
            })
        }
    };

    let remaining = (buf.len() - c.pos) as u64;
    let mut tensors = Vec::with_capacity(n_tensors.min(remaining / 24) as usize);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor info {i}"))?;
        let n_dims = c.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(ModelError::format(path, format!("tensor `{name}` has {n_dims} dimensions (ggml allows at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let dtype = GgmlType::from_u32(c.u32(&|| format!("type of tensor `{name}`"))?);
        let rel = c.u64(&|| format!("data offset of tensor `{name}`"))?;
        // Shapes become i64 (PyTorch); element counts must fit too.
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        if dims.iter().any(|&d| d > i64::MAX as u64) || n_elements.is_none_or(|n| n > i64::MAX as u64) {
            return Err(ModelError::format(path, format!("tensor `{name}` has impossible dimensions {dims:?}")));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(ModelError::format(path, format!("duplicate tensor name `{name}`")));
        }
        tensors.push(GgufTensorInfo { name, dims, dtype, offset: rel });
    }

    let end_of_infos = c.pos as u64;
    // alignment is a power of two <= 2^31 and end_of_infos <= file size, so this cannot overflow.
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    let len = buf.len() as u64;
    for t in &mut tensors {
        let rel = t.offset;
        t.offset = data_offset
            .checked_add(rel)
            .ok_or_else(|| ModelError::format(path, format!("tensor `{}` has an impossible data offset {rel}", t.name)))?;
        if t.dtype.block_size().is_none() {
            continue; // Unknown layout: reported when the data is asked for.
        }
        let Some(n_bytes) = t.n_bytes() else {
            return Err(ModelError::format(
                path,
                format!(
                    "tensor `{}` of type {} has dims {:?}: the innermost dimension is not a multiple of \
                     the block size {} or the byte size overflows",
                    t.name,
                    t.dtype,
                    t.dims,
                    t.dtype.block_size().unwrap_or(1)
                ),
            ));
        };
        let end = t.offset.checked_add(n_bytes).ok_or_else(|| ModelError::format(path, format!("tensor `{}`: data end overflows", t.name)))?;
        if end > len {
            return Err(ModelError::Truncated {
                path: path.to_path_buf(),
                what: format!("data of tensor `{}` ({} bytes of {})", t.name, n_bytes, t.dtype),
                start: t.offset,
                end,
                len,
            });
        }
    }
    Ok(Parsed { version, metadata, tensors, alignment, data_offset })
}
