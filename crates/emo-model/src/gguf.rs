//! Reading and writing GGUF files (the llama.cpp / ggml model format), versions 2 and 3.
//!
//! [`GgufFile::open`] memory-maps the file and parses the header, the metadata and the tensor
//! infos; tensor bytes are borrowed from the map and decoded on request by [`crate::quant`]. Every
//! count, length and offset read from the file is checked against the file's size before it is used,
//! so a damaged file gives a [`ModelError`] naming the file, never a panic or a huge allocation.
//! [`GgufWriter`] writes GGUF v3 files with `f32` tensors (for tests and exported artefacts).
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::quant;

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
// Values
// ---------------------------------------------------------------------------------------------------

/// A metadata value, one variant per GGUF value type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7 (one byte, 0 or 1).
    Bool(bool),
    /// Type 8 (UTF-8, length-prefixed).
    String(String),
    /// Type 9: elements all of one type (possibly arrays themselves).
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// The value as a `u64` if it is an integer of any width that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an `f64` if it is numeric (any integer or float type; not bool).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF value type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// The GGUF name of this value's type (`UINT32`, `STRING`, `ARRAY`, ...), as gguf-py spells it.
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }
}

/// gguf-py's name for a value type id.
fn value_type_name(id: u32) -> &'static str {
    match id {
        0 => "UINT8",
        1 => "INT8",
        2 => "UINT16",
        3 => "INT16",
        4 => "UINT32",
        5 => "INT32",
        6 => "FLOAT32",
        7 => "BOOL",
        8 => "STRING",
        9 => "ARRAY",
        10 => "UINT64",
        11 => "INT64",
        12 => "FLOAT64",
        _ => "unknown",
    }
}

/// Encoded size of a fixed-size value type, or the least bytes a variable-size one can take
/// (used to reject array counts that cannot fit in the rest of the file before allocating).
fn min_value_size(id: u32) -> Option<u64> {
    Some(match id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,  // u64 length, empty string
        9 => 12, // u32 type + u64 count, empty array
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------------
// Tensor types
// ---------------------------------------------------------------------------------------------------

/// A ggml tensor element type, with ggml's numeric ids.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 0: 32-bit float.
    F32,
    /// 1: IEEE half.
    F16,
    /// 2: 32-element blocks, f16 scale, 4-bit values.
    Q4_0,
    /// 3: 32-element blocks, f16 scale and min, 4-bit values.
    Q4_1,
    /// 6: 32-element blocks, f16 scale, 5-bit values.
    Q5_0,
    /// 7: 32-element blocks, f16 scale and min, 5-bit values.
    Q5_1,
    /// 8: 32-element blocks, f16 scale, 8-bit values.
    Q8_0,
    /// 9: 32-element blocks, f16 scale and sum, 8-bit values (an intermediate format).
    Q8_1,
    /// 10: 256-element super-blocks, 2-bit values.
    Q2_K,
    /// 11: 256-element super-blocks, 3-bit values.
    Q3_K,
    /// 12: 256-element super-blocks, 4-bit values, 6-bit scales and mins.
    Q4_K,
    /// 13: 256-element super-blocks, 5-bit values, 6-bit scales and mins.
    Q5_K,
    /// 14: 256-element super-blocks, 6-bit values, 8-bit scales.
    Q6_K,
    /// 15: 256-element super-blocks, 8-bit values, f32 scale (an intermediate format).
    Q8_K,
    /// 30: bfloat16.
    BF16,
    /// Any other id (IQ*, TQ*, integer types, ...), kept so the file still opens.
    Other(u32),
}

impl GgmlType {
    /// The type for a ggml type id.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            v => GgmlType::Other(v),
        }
    }

    /// The ggml type id.
    pub fn to_u32(&self) -> u32 {
        match *self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(v) => v,
        }
    }

    /// Elements per block (1 for plain float types); `None` for [`GgmlType::Other`].
    pub fn block_size(&self) -> Option<usize> {
        self.layout().map(|(bs, _)| bs)
    }

    /// Bytes per block; `None` for [`GgmlType::Other`].
    pub fn type_size(&self) -> Option<usize> {
        self.layout().map(|(_, ts)| ts)
    }

    /// (elements, bytes) per block, as in ggml's type traits.
    fn layout(&self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            // ggml's block_q8_1 is f16 d, f16 s, 32 × i8 (gguf-py still lists an older 40-byte layout).
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
            // Name the ggml types we do not model, so errors say e.g. "IQ4_XS (id 23)".
            GgmlType::Other(id) => {
                let known = match id {
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => return write!(f, "unknown type id {id}"),
                };
                return write!(f, "{known} (id {id})");
            }
        };
        f.write_str(name)
    }
}

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

// ---------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------

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

        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
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
