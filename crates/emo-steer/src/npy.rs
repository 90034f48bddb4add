//! NumPy `.npy` / `.npz` files, written as `numpy.save` / `numpy.savez` write them and read with every size,
//! shape and type checked before anything is allocated: a bad file is an error naming it, never a panic.
//! Every writer is atomic.
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use tch::Tensor;

use crate::error::{io, Error, Result};
use crate::tensor_file::{f32_tensor, tensor_to_f32, write_atomic_with};

// ---------------------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------------------

/// The first six bytes of every `.npy` file.
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy aligns the data to this many bytes (`numpy.lib.format.ARRAY_ALIGN`), so it can be mapped.
const NPY_ALIGN: usize = 64;
/// Larger headers are refused before allocating: NumPy itself refuses more than 10,000 bytes by
/// default, so a bigger one is damage, not data.
const NPY_MAX_HEADER: usize = 1 << 20;

/// The `.npy` image (version 1.0, or 2.0 if the header outgrows 1.0's 16-bit length) of an `f32`
/// array in C order.
fn npy_bytes(shape: &[i64], data: &[f32]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic, version, header length field, dict, padding spaces and '\n' make a multiple of 64.
    let (major, len_field) = if dict.len() + 1 + 10 + NPY_ALIGN <= u16::MAX as usize { (1u8, 2usize) } else { (2u8, 4usize) };
    let unpadded = NPY_MAGIC.len() + 2 + len_field + dict.len() + 1;
    let header_len = dict.len() + 1 + (NPY_ALIGN - unpadded % NPY_ALIGN) % NPY_ALIGN;

    let mut out = Vec::with_capacity(NPY_MAGIC.len() + 2 + len_field + header_len + 4 * data.len());
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + header_len - dict.len() - 1, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() % NPY_ALIGN, 0);
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// The `.npy` image of a tensor, or what is wrong with the tensor.
fn tensor_npy_bytes(tensor: &Tensor) -> std::result::Result<Vec<u8>, String> {
    let (shape, data) = tensor_to_f32(tensor)?;
    Ok(npy_bytes(&shape, &data))
}

/// Writes a floating-point tensor of any rank as a NumPy `.npy` file (format 1.0, `<f4`, C order;
/// other float kinds are converted to `f32`). Atomic.
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let bytes = tensor_npy_bytes(tensor).map_err(|msg| Error::Invalid(format!("{}: cannot write the tensor: {msg}", path.display())))?;
    write_atomic_with(path, |out| out.write_all(&bytes).map_err(io(path)))
}

/// Reads a NumPy `.npy` file as a CPU `f32` tensor.
///
/// Accepts format versions 1.0, 2.0 and 3.0 and dtypes `<f4` and `<f8` (converted to `f32`, rounding
/// to nearest); refuses other dtypes and Fortran-ordered arrays of rank 2 or more, naming the file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_npy(&bytes).map_err(|msg| Error::Format { path: path.to_path_buf(), msg })
}

/// The element types [`read_npy`] accepts.
#[derive(Clone, Copy)]
enum NpyDtype {
    F4,
    F8,
}

/// Parses a `.npy` image; `Err` says what is wrong.
fn parse_npy(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 8 || &bytes[..6] != NPY_MAGIC {
        return Err("not a NumPy .npy file (bad magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_field = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(format!("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")),
    };
    let start = 8 + len_field;
    if bytes.len() < start {
        return Err(format!("truncated .npy header: the file has {} bytes", bytes.len()));
    }
    let header_len = if len_field == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    if header_len > NPY_MAX_HEADER {
        return Err(format!("the .npy header claims {header_len} bytes, more than the {NPY_MAX_HEADER} allowed"));
    }
    let data_start = start + header_len;
    if bytes.len() < data_start {
        return Err(format!("truncated .npy header: it needs bytes {start}..{data_start}, but the file has {} bytes", bytes.len()));
    }
    // Versions 1 and 2 are latin-1, version 3 UTF-8; the fields we read are ASCII either way.
    let header = String::from_utf8_lossy(&bytes[start..data_start]);
    let header = parse_npy_header(&header)?;
    let dtype = match header.descr.as_str() {
        "<f4" => NpyDtype::F4,
        "<f8" => NpyDtype::F8,
        // Same layout on little-endian hosts, which is all LibTorch's CPU builds are.
        "=f4" if cfg!(target_endian = "little") => NpyDtype::F4,
        "=f8" if cfg!(target_endian = "little") => NpyDtype::F8,
        other => return Err(format!("unsupported dtype '{other}' (supported: '<f4', '<f8')")),
    };
    // A Fortran-ordered array of rank 0 or 1 has the same bytes as a C-ordered one.
    if header.fortran_order && header.shape.len() > 1 {
        return Err(format!(
            "the array of shape {:?} is in Fortran order, which is not supported (save it with numpy.ascontiguousarray)",
            header.shape
        ));
    }
    let numel = header
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= (isize::MAX as u64) / 8)
        .ok_or_else(|| format!("shape {:?} is too large", header.shape))? as usize;
    let itemsize = match dtype {
        NpyDtype::F4 => 4,
        NpyDtype::F8 => 8,
    };
    let payload = &bytes[data_start..];
    if payload.len() != numel * itemsize {
        return Err(format!(
            "shape {:?} of '{}' needs {} bytes of data after the header, but the file has {}",
            header.shape,
            header.descr,
            numel * itemsize,
            payload.len()
        ));
    }
    let data: Vec<f32> = match dtype {
        NpyDtype::F4 => payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        NpyDtype::F8 => payload.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32).collect(),
    };
    let shape: Vec<i64> = header.shape.iter().map(|&d| d as i64).collect();
    f32_tensor(&data, &shape)
}

/// The fields of a `.npy` header that matter.
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A Python literal as found in `.npy` headers.
#[derive(Debug)]
enum PyLit {
    Str(String),
    Bool(bool),
    Int(u64),
    None,
    /// A tuple or a list.
    Seq(Vec<PyLit>),
    Dict(Vec<(String, PyLit)>),
}

/// Parses the header dict (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`).
fn parse_npy_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let bad = |msg: &str| format!("malformed .npy header {:?}: {msg}", text.trim_end());
    let mut p = LitParser { s: text.as_bytes(), pos: 0 };
    let lit = p.value(0).map_err(|m| bad(&m))?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(bad("unexpected text after the dict"));
    }
    let PyLit::Dict(entries) = lit else {
        return Err(bad("not a dict"));
    };
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(PyLit::Str(s)) => s.clone(),
        Some(PyLit::Seq(_)) => return Err("unsupported structured dtype (a list of fields); only '<f4' and '<f8' arrays are supported".into()),
        Some(_) => return Err(bad("'descr' is not a string")),
        None => return Err(bad("no 'descr'")),
    };
    let fortran_order = match get("fortran_order") {
        Some(PyLit::Bool(b)) => *b,
        Some(_) => return Err(bad("'fortran_order' is not True or False")),
        None => return Err(bad("no 'fortran_order'")),
    };
    let shape = match get("shape") {
        Some(PyLit::Seq(items)) => items
            .iter()
            .map(|d| match d {
                PyLit::Int(v) => Ok(*v),
                _ => Err(bad("'shape' holds a non-integer")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("'shape' is not a tuple")),
        None => return Err(bad("no 'shape'")),
    };
    Ok(NpyHeader { descr, fortran_order, shape })
}

/// A recursive-descent parser for the Python literals NumPy writes (`repr` of a dict of str, bool,
/// and tuples of ints); nesting is capped so a crafted header cannot overflow the stack.
struct LitParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl LitParser<'_> {
    const MAX_DEPTH: usize = 8;

    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> std::result::Result<PyLit, String> {
        if depth > Self::MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            None => Err("unexpected end".into()),
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(PyLit::Dict(entries));
                    }
                    let PyLit::Str(key) = self.value(depth + 1)? else {
                        return Err("a dict key is not a string".into());
                    };
                    if self.peek() != Some(b':') {
                        return Err(format!("expected ':' after key '{key}'"));
                    }
                    self.pos += 1;
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err("expected ',' or '}' in the dict".into()),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(PyLit::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {}
                        _ => return Err("expected ',' or a closing bracket in a sequence".into()),
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let start = self.pos;
                // NumPy's dtype strings never contain escapes; a backslash is refused, not guessed at.
                while let Some(&c) = self.s.get(self.pos) {
                    if c == q {
                        let s = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                        self.pos += 1;
                        return Ok(PyLit::Str(s));
                    }
                    if c == b'\\' {
                        return Err("escape sequences in strings are not supported".into());
                    }
                    self.pos += 1;
                }
                Err("unterminated string".into())
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII digits");
                let v = digits.parse::<u64>().map_err(|_| format!("integer {digits} is too large"))?;
                // Python 2 wrote long integers with an `L` suffix (`(3L, 4L)`).
                if self.s.get(self.pos) == Some(&b'L') {
                    self.pos += 1;
                }
                Ok(PyLit::Int(v))
            }
            Some(_) => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(PyLit::Bool(true)),
                    b"False" => Ok(PyLit::Bool(false)),
                    b"None" => Ok(PyLit::None),
                    _ => Err(format!("unexpected character '{}'", self.s[start] as char)),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// .npz
// ---------------------------------------------------------------------------------------------------

/// Writes named tensors as a NumPy `.npz` archive, as `numpy.savez` does: one stored (uncompressed)
/// zip entry `NAME.npy` per tensor, in the given order. Names must be non-empty and distinct. Atomic.
pub fn write_npz(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let invalid = |msg: String| Error::Invalid(format!("{}: {msg}", path.display()));
    // Encode everything first, so a bad tensor fails before any file is created.
    let mut entries = Vec::with_capacity(tensors.len());
    for (i, (name, tensor)) in tensors.iter().enumerate() {
        if name.is_empty() {
            return Err(invalid(format!("array {i} has an empty name")));
        }
        if tensors[..i].iter().any(|(n, _)| n == name) {
            return Err(invalid(format!("array name `{name}` appears twice")));
        }
        let bytes = tensor_npy_bytes(tensor).map_err(|msg| invalid(format!("cannot write array `{name}`: {msg}")))?;
        entries.push((format!("{name}.npy"), bytes));
    }
    write_atomic_with(path, |out| {
        let zip_err = |e: zip::result::ZipError| match e {
            zip::result::ZipError::Io(e) => io(path)(e),
            e => invalid(e.to_string()),
        };
        let mut zip = zip::ZipWriter::new(out);
        for (name, bytes) in &entries {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                // Zip64 only where an entry needs it, so small archives stay plain zip.
                .large_file(bytes.len() as u64 >= u32::MAX as u64);
            zip.start_file(name.as_str(), options).map_err(zip_err)?;
            zip.write_all(bytes).map_err(io(path))?;
        }
        zip.finish().map_err(zip_err)?;
        Ok(())
    })
}

/// Reads a NumPy `.npz` archive (stored or deflated entries, as `numpy.savez` and
/// `numpy.savez_compressed` write them) as `(name, tensor)` pairs in archive order, with the `.npy`
/// suffix stripped from each name. Directory entries are skipped.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let format = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let file = File::open(path).map_err(io(path))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| format(format!("not a readable .npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| format(format!("zip entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry.name().to_owned();
        // Reading more than the declared size would mean a lying header; stop one byte past it.
        let declared = entry.size();
        let mut bytes = Vec::with_capacity(declared.min(1 << 30) as usize);
        (&mut entry).take(declared.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format(format!("entry `{entry_name}`: {e}")))?;
        if bytes.len() as u64 != declared {
            return Err(format(format!("entry `{entry_name}` declares {declared} bytes but holds {}", bytes.len())));
        }
        let tensor = parse_npy(&bytes).map_err(|msg| format(format!("entry `{entry_name}`: {msg}")))?;
        let name = entry_name.strip_suffix(".npy").unwrap_or(&entry_name).to_owned();
        out.push((name, tensor));
    }
    Ok(out)
}
