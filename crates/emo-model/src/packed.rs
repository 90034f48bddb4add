//! Quantized GGUF weights kept packed in memory and multiplied by LibTorch's own CPU int4 kernel
//! (`_weight_int4pack_mm_for_cpu`), instead of dequantizing every tensor at load.
//!
//! Every ggml type with one scale (and offset) per 32 consecutive inputs is an integer code `c` per weight
//! with `w = c·s + z` per group ([`QuantRows`]):
//!
//! | ggml | code c | s | z |
//! |---|---|---|---|
//! | Q4_0 | q (4 bits) | d | −8d |
//! | Q4_1 | q (4 bits) | d | m |
//! | Q4_K | q (4 bits), per 32-value sub-block | d·sc | −dmin·m |
//! | Q5_0 | q (5 bits) | d | −16d |
//! | Q8_0 | q + 128 (8 bits) | d | −128d |
//!
//! LibTorch's kernel computes with `w = (q − 8)·s + z` for 4-bit q, so a 4-bit code is one packed matrix and a
//! wider code `c = lo + 16·hi` is two, whose products add up (`lo` with s and z + 8s, `hi` with 16s and 128s):
//! the codes stay the file's own, only the scales change form, rounded to bf16 because the kernel wants them in
//! the activations' dtype. Q6_K (a scale per 16 values) and unquantized tensors stay dense. The kernel's fast
//! path is bf16 activations: with f32 ones it runs scalar code ten times slower, so products with packed
//! weights run in bf16 whatever the model's dtype. That, more than the weights, is how the packed path differs
//! from the dequantized one (docs/performance.md measures it).
use std::collections::BTreeMap;

use half::bf16;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::ggml_type::GgmlType;
use crate::weights::WeightSource;
use crate::{ModelError, Result};

/// How a GGUF file's quantized tensors are held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Every tensor dequantized at load to the model's dtype (exact: what Hugging Face parity is tested on).
    #[default]
    Dequantized,
    /// Projection matrices of 32-value-group types (Q4_0, Q4_1, Q4_K, Q5_0, Q8_0) kept packed as int4, at 4.5
    /// (4-bit codes) or 9 bits (wider codes) a weight, multiplied in bf16 by LibTorch's CPU kernel; other
    /// tensors dequantized. CPU only: on CUDA every tensor is dequantized.
    Packed,
}

impl WeightFormat {
    /// Parses `dequantized` / `packed` (the CLI's `--weights`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dequantized" | "dense" => Ok(WeightFormat::Dequantized),
            "packed" => Ok(WeightFormat::Packed),
            other => Err(ModelError::InvalidArgument(format!("unknown weight format `{other}` (expected `dequantized` or `packed`)"))),
        }
    }
}

/// Inputs per scale group (every packable ggml type has 32).
pub const GROUP: usize = 32;
/// LibTorch's CPU int4 layout packs output rows in tiles of this many.
const TILE_N: usize = 64;

/// A quantized [n, k] matrix as integer codes with a scale and a zero per row and group of [`GROUP`] inputs:
/// `w[r, c] = codes[r, c]·scales[r, c/32] + zeros[r, c/32]`, codes of `bits` bits (4 or 8).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantRows {
    /// Output rows.
    pub n: usize,
    /// Inputs per row.
    pub k: usize,
    /// Code width: 4 (one packed int4 matrix) or 8 (two).
    pub bits: u8,
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

impl QuantRows {
    /// The code width of ggml type `dtype` in this form, or `None` when it has no 32-value groups.
    pub fn bits(dtype: GgmlType) -> Option<u8> {
        match dtype {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Some(4),
            GgmlType::Q5_0 | GgmlType::Q8_0 => Some(8),
            _ => None,
        }
    }

    /// Reads `n` rows of `k` values of type `dtype` (ggml's order: row after row, blocks along a row). `None`
    /// when the type has no such form; an error when the bytes do not match the shape.
    pub fn from_ggml(dtype: GgmlType, data: &[u8], n: usize, k: usize) -> std::result::Result<Option<Self>, String> {
        let Some(bits) = Self::bits(dtype) else {
            return Ok(None);
        };
        let (Some(bs), Some(ts)) = (dtype.block_size(), dtype.type_size()) else {
            return Ok(None);
        };
        if !k.is_multiple_of(bs) {
            return Err(format!("rows of {k} values are not a whole number of {bs}-value {dtype} blocks"));
        }
        let blocks = n.checked_mul(k / bs).ok_or_else(|| format!("{n} x {k} values overflow"))?;
        if blocks.checked_mul(ts) != Some(data.len()) {
            return Err(format!("{n} x {k} values of type {dtype} need {} bytes, got {}", blocks.saturating_mul(ts), data.len()));
        }
        let groups = n * k / GROUP;
        let mut out = QuantRows { n, k, bits, codes: vec![0; n * k], scales: vec![0.0; groups], zeros: vec![0.0; groups] };
        let per_block = bs / GROUP;
        // One ggml block fills `bs` codes and `per_block` groups; blocks are independent.
        out.codes
            .par_chunks_mut(bs)
            .zip(out.scales.par_chunks_mut(per_block))
            .zip(out.zeros.par_chunks_mut(per_block))
            .zip(data.par_chunks(ts))
            .for_each(|(((c, s), z), b)| match dtype {
                GgmlType::Q4_0 => q4_0(b, c, s, z),
                GgmlType::Q4_1 => q4_1(b, c, s, z),
                GgmlType::Q4_K => q4_k(b, c, s, z),
                GgmlType::Q5_0 => q5_0(b, c, s, z),
                _ => q8_0(b, c, s, z),
            });
        Ok(Some(out))
    }

    /// The rows in a new order: row `i` of the result is row `order[i]` of `self`.
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let (k, g) = (self.k, self.k / GROUP);
        let mut out =
            QuantRows { n: order.len(), k, bits: self.bits, codes: Vec::with_capacity(order.len() * k), scales: Vec::new(), zeros: Vec::new() };
        for &r in order {
            out.codes.extend_from_slice(&self.codes[r * k..(r + 1) * k]);
            out.scales.extend_from_slice(&self.scales[r * g..(r + 1) * g]);
            out.zeros.extend_from_slice(&self.zeros[r * g..(r + 1) * g]);
        }
        out
    }

    /// Stacks matrices of the same width and code width along their rows (q, k and v into one product).
    pub fn stack(parts: Vec<QuantRows>) -> Option<Self> {
        let (k, bits) = parts.first().map(|p| (p.k, p.bits))?;
        if parts.iter().any(|p| p.k != k || p.bits != bits) {
            return None;
        }
        let mut out = QuantRows { n: 0, k, bits, codes: Vec::new(), scales: Vec::new(), zeros: Vec::new() };
        for p in parts {
            out.n += p.n;
            out.codes.extend(p.codes);
            out.scales.extend(p.scales);
            out.zeros.extend(p.zeros);
        }
        Some(out)
    }

    /// The weights in f32, [n * k] row-major (`c·s + z`).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        w.par_chunks_mut(GROUP).enumerate().for_each(|(g, w)| {
            let (s, z) = (self.scales[g], self.zeros[g]);
            for (w, &c) in w.iter_mut().zip(&self.codes[g * GROUP..(g + 1) * GROUP]) {
                *w = c as f32 * s + z;
            }
        });
        w
    }

    /// The int4 matrices whose products add up to this one's: (4-bit codes, scales, zeros) in the kernel's
    /// `(q − 8)·s + z` form, one for 4-bit codes, low and high nibbles for 8-bit ones.
    fn planes(&self) -> Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> {
        let lo_zeros = self.zeros.iter().zip(&self.scales).map(|(z, s)| z + 8.0 * s).collect();
        if self.bits == 4 {
            return vec![(self.codes.clone(), self.scales.clone(), lo_zeros)];
        }
        let lo = self.codes.iter().map(|c| c & 0x0F).collect();
        let hi = self.codes.iter().map(|c| c >> 4).collect();
        let hi_scales = self.scales.iter().map(|s| 16.0 * s).collect();
        let hi_zeros = self.scales.iter().map(|s| 128.0 * s).collect();
        vec![(lo, self.scales.clone(), lo_zeros), (hi, hi_scales, hi_zeros)]
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0: f16 d, 16 bytes of nibbles (elements 0..16 low, 16..32 high); w = (q − 8)·d.
fn q4_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    nibbles(&b[2..18], c);
    let d = half_at(b, 0);
    (s[0], z[0]) = (d, -8.0 * d);
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles; w = q·d + m.
fn q4_1(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    nibbles(&b[4..20], c);
    (s[0], z[0]) = (half_at(b, 0), half_at(b, 2));
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles (each 64-value group: low
/// nibbles then high nibbles of 32 bytes); sub-block j: w = d·sc_j·q − dmin·m_j.
fn q4_k(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for g in 0..4 {
        for (i, &byte) in b[16 + 32 * g..16 + 32 * g + 32].iter().enumerate() {
            c[64 * g + i] = byte & 0x0F;
            c[64 * g + 32 + i] = byte >> 4;
        }
        for j in [2 * g, 2 * g + 1] {
            let (sc, m) = crate::quant::scale_min_k4(j, scales);
            (s[j], z[j]) = (d * sc as f32, -(dmin * m as f32));
        }
    }
}

/// Q5_0: f16 d, u32 of fifth bits (bit j belongs to element j), 16 bytes of nibbles; w = (q − 16)·d.
fn q5_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    nibbles(&b[6..22], c);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, c) in c.iter_mut().enumerate() {
        *c |= (((qh >> j) & 1) as u8) << 4;
    }
    let d = half_at(b, 0);
    (s[0], z[0]) = (d, -16.0 * d);
}

/// Q8_0: f16 d, 32 × i8; w = q·d = (q + 128)·d − 128d.
fn q8_0(b: &[u8], c: &mut [u8], s: &mut [f32], z: &mut [f32]) {
    for (c, &q) in c.iter_mut().zip(&b[2..34]) {
        *c = (q as i8 as i16 + 128) as u8;
    }
    let d = half_at(b, 0);
    (s[0], z[0]) = (d, -128.0 * d);
}

/// 16 bytes of ggml nibbles into 32 codes: low nibbles are elements 0..16, high nibbles 16..32.
fn nibbles(bytes: &[u8], c: &mut [u8]) {
    for (i, &byte) in bytes.iter().enumerate() {
        c[i] = byte & 0x0F;
        c[16 + i] = byte >> 4;
    }
}

/// A projection's weight as the decoder holds it: dense, int4 in LibTorch's packed CPU layout, or fused
/// parts of both (q, k and v when v is not packable), whose outputs are concatenated.
pub(crate) enum Projection {
    Dense(Tensor),
    Int4(Int4Weight),
    Cat(Vec<Projection>),
}

/// A packed matrix: one int4 plane, or two whose products add up (8-bit codes).
pub(crate) struct Int4Weight {
    planes: Vec<Int4Plane>,
    n: usize,
    k: usize,
}

/// One int4 matrix in the layout `_weight_int4pack_mm_for_cpu` reads: bytes [n/64, k, 32], byte (t, c, j)
/// holding row 64t+j in its low nibble and row 64t+32+j in its high nibble; scales and zeros [k/32, n, 2] in
/// bf16.
struct Int4Plane {
    packed: Tensor,
    scales_zeros: Tensor,
}

impl Int4Weight {
    /// Packs `rows`, or says why LibTorch's layout cannot hold them (rows not a multiple of 64).
    pub(crate) fn pack(rows: &QuantRows) -> std::result::Result<Self, String> {
        let (n, k) = (rows.n, rows.k);
        if !n.is_multiple_of(TILE_N) || !k.is_multiple_of(GROUP) || k == 0 {
            return Err(format!("[{n}, {k}] is not a multiple of [{TILE_N}, {GROUP}]"));
        }
        let planes = rows
            .planes()
            .into_iter()
            .map(|(codes, scales, zeros)| Int4Plane::pack(n, k, &codes, &scales, &zeros))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Int4Weight { planes, n, k })
    }

    /// `x @ w^T` for x [rows, k] in any float dtype; the products run in bf16 and come back in x's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xb = x.to_kind(Kind::BFloat16);
        let product = |p: &Int4Plane| xb.f_internal_weight_int4pack_mm_for_cpu(&p.packed, GROUP as i64, &p.scales_zeros);
        let y = match self.planes.as_slice() {
            [one] => product(one)?,
            // Summed in f32: the high plane's large zeros cancel most of the low plane's.
            [lo, hi] => product(lo)?.to_kind(Kind::Float) + product(hi)?.to_kind(Kind::Float),
            _ => return Err(ModelError::InvalidArgument(format!("a packed matrix of {} planes", self.planes.len()))),
        };
        Ok(y.to_kind(x.kind()))
    }

    /// The weights as the kernel sees them, dense [n, k] in `kind`: bf16 scales and zeros, f32 arithmetic.
    fn dense(&self, kind: Kind) -> Tensor {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for p in &self.planes {
            let bytes = Vec::<u8>::try_from(&p.packed.reshape([-1])).unwrap_or_default();
            let sz = Vec::<f32>::try_from(&p.scales_zeros.to_kind(Kind::Float).reshape([-1])).unwrap_or_default();
            w.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
                let (t, j) = (r / TILE_N, r % TILE_N);
                let (col, shift) = if j < TILE_N / 2 { (j, 0) } else { (j - TILE_N / 2, 4) };
                for (c, w) in row.iter_mut().enumerate() {
                    let q = (bytes[(t * k + c) * (TILE_N / 2) + col] >> shift) & 0x0F;
                    let g = c / GROUP;
                    *w += (q as f32 - 8.0) * sz[(g * n + r) * 2] + sz[(g * n + r) * 2 + 1];
                }
            });
        }
        Tensor::from_slice(&w).view([n as i64, k as i64]).to_kind(kind)
    }

    fn resident_bytes(&self) -> usize {
        self.planes.iter().map(|p| p.packed.numel() + p.scales_zeros.numel() * 2).sum()
    }
}

impl Int4Plane {
    fn pack(n: usize, k: usize, codes: &[u8], scales: &[f32], zeros: &[f32]) -> std::result::Result<Self, String> {
        let mut bytes = vec![0u8; n * k / 2];
        bytes.par_chunks_mut(k * TILE_N / 2).enumerate().for_each(|(t, tile)| {
            for (c, out) in tile.chunks_exact_mut(TILE_N / 2).enumerate() {
                for (j, o) in out.iter_mut().enumerate() {
                    let lo = codes[(t * TILE_N + j) * k + c];
                    let hi = codes[(t * TILE_N + TILE_N / 2 + j) * k + c];
                    *o = lo | (hi << 4);
                }
            }
        });
        let groups = k / GROUP;
        let mut sz = vec![0u8; groups * n * 4];
        for r in 0..n {
            for g in 0..groups {
                let at = (g * n + r) * 4;
                sz[at..at + 2].copy_from_slice(&bf16::from_f32(scales[r * groups + g]).to_le_bytes());
                sz[at + 2..at + 4].copy_from_slice(&bf16::from_f32(zeros[r * groups + g]).to_le_bytes());
            }
        }
        let packed = Tensor::from_slice(&bytes).view([n as i64, (k / 2) as i64]);
        let scales_zeros =
            Tensor::f_from_data_size(&sz, &[groups as i64, n as i64, 2], Kind::BFloat16).map_err(|e| format!("LibTorch refused the scales: {e}"))?;
        Ok(Int4Plane { packed, scales_zeros })
    }
}

impl Projection {
    /// `x @ w^T + b` on contiguous rows x [rows, in].
    pub(crate) fn forward(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = match self {
            Projection::Dense(w) => return Ok(x.linear(w, b)),
            Projection::Int4(w) => w.forward(x)?,
            Projection::Cat(parts) => Tensor::cat(&parts.iter().map(|p| p.forward(x, None)).collect::<Result<Vec<_>>>()?, -1),
        };
        Ok(match b {
            Some(b) => y + b,
            None => y,
        })
    }

    /// A dense copy of the weight in `kind` (never a handle to the weight itself).
    pub(crate) fn dense(&self, kind: Kind) -> Tensor {
        match self {
            Projection::Dense(w) => w.to_kind(kind).copy(),
            Projection::Int4(w) => w.dense(kind),
            Projection::Cat(parts) => Tensor::cat(&parts.iter().map(|p| p.dense(kind)).collect::<Vec<_>>(), 0),
        }
    }

    /// Bytes the weight occupies.
    pub(crate) fn resident_bytes(&self) -> usize {
        match self {
            Projection::Dense(w) => crate::device::tensor_bytes(w),
            Projection::Int4(w) => w.resident_bytes(),
            Projection::Cat(parts) => parts.iter().map(Projection::resident_bytes).sum(),
        }
    }

    /// (packed, all) products behind this projection (a fused dense part counts once).
    pub(crate) fn packed_parts(&self) -> (usize, usize) {
        match self {
            Projection::Dense(_) => (0, 1),
            Projection::Int4(_) => (1, 1),
            Projection::Cat(parts) => parts.iter().map(Projection::packed_parts).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        }
    }
}

/// Builds the decoder's projections at load, packing what [`WeightFormat`] and the device allow, and counts
/// why the rest stayed dense for one log line.
pub(crate) struct Packer<'a> {
    src: &'a dyn WeightSource,
    pack: bool,
    // The model's dtype, for packable parts that end up dense.
    kind: Kind,
    packed: usize,
    dense: BTreeMap<String, usize>,
}

impl<'a> Packer<'a> {
    pub(crate) fn new(src: &'a dyn WeightSource, format: WeightFormat, device: Device, kind: Kind) -> Self {
        let mut dense = BTreeMap::new();
        if format == WeightFormat::Packed && device != Device::Cpu {
            // LibTorch's CUDA int4 kernel wants another layout; not built here.
            dense.insert(format!("packed int4 runs on the CPU only, the weights are on {device:?}"), 0);
        }
        Packer { src, pack: format == WeightFormat::Packed && device == Device::Cpu, kind, packed: 0, dense }
    }

    /// The product with the row-wise concatenation of `parts` (name, [rows, cols]); dense parts come from
    /// `get`, which checks their shapes and moves them to the model's device and dtype.
    pub(crate) fn projection(&mut self, parts: &[(String, [i64; 2])], get: &dyn Fn(&str, &[i64]) -> Result<Tensor>) -> Result<Projection> {
        let mut out: Vec<Projection> = Vec::new();
        // Consecutive packable parts of one code width are stacked into one packed product, consecutive dense
        // ones into one matmul.
        let (mut quant, mut dense): (Vec<QuantRows>, Vec<Tensor>) = (Vec::new(), Vec::new());
        for (name, shape) in parts {
            let rows = if self.pack { Some(self.src.quantized(name)?) } else { None };
            match rows {
                Some(Ok(rows)) => {
                    if [rows.n as i64, rows.k as i64] != *shape {
                        return Err(ModelError::ShapeMismatch {
                            path: self.src.path().to_path_buf(),
                            name: name.clone(),
                            got: vec![rows.n as i64, rows.k as i64],
                            expected: shape.to_vec(),
                        });
                    }
                    flush_dense(&mut dense, &mut out);
                    if quant.last().is_some_and(|q| q.bits != rows.bits) {
                        self.flush_quant(&mut quant, &mut out);
                    }
                    quant.push(rows);
                }
                other => {
                    if let Some(Err(why)) = other {
                        *self.dense.entry(why).or_default() += 1;
                    }
                    self.flush_quant(&mut quant, &mut out);
                    dense.push(get(name, shape)?);
                }
            }
        }
        self.flush_quant(&mut quant, &mut out);
        flush_dense(&mut dense, &mut out);
        Ok(if out.len() == 1 { out.remove(0) } else { Projection::Cat(out) })
    }

    /// Packs the pending parts as one product (dense if LibTorch's layout cannot hold them).
    fn flush_quant(&mut self, quant: &mut Vec<QuantRows>, out: &mut Vec<Projection>) {
        let n = quant.len();
        let Some(rows) = QuantRows::stack(std::mem::take(quant)) else {
            return;
        };
        match Int4Weight::pack(&rows) {
            Ok(w) => {
                self.packed += n;
                out.push(Projection::Int4(w));
            }
            Err(why) => {
                *self.dense.entry(why).or_default() += n;
                out.push(Projection::Dense(Tensor::from_slice(&rows.dequantize()).view([rows.n as i64, rows.k as i64]).to_kind(self.kind)));
            }
        }
    }

    /// One line on stderr: what was packed, and why the rest was not.
    pub(crate) fn report(&self) {
        if !self.pack && self.dense.is_empty() {
            return;
        }
        let why: Vec<String> = self.dense.iter().map(|(why, n)| if *n > 0 { format!("{n} {why}") } else { why.clone() }).collect();
        let total = self.packed + self.dense.values().sum::<usize>();
        let rest = if why.is_empty() { String::new() } else { format!("; dense: {}", why.join(", ")) };
        eprintln!("{}: packed {} of {total} projection matrices as int4{rest}", self.src.path().display(), self.packed);
    }
}

fn flush_dense(dense: &mut Vec<Tensor>, out: &mut Vec<Projection>) {
    match dense.len() {
        0 => {}
        1 => out.push(Projection::Dense(dense.remove(0))),
        _ => out.push(Projection::Dense(Tensor::cat(&std::mem::take(dense), 0))),
    }
}
