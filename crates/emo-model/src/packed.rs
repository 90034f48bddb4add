//! Quantized GGUF weights kept packed in memory and multiplied by LibTorch's own CPU int4 kernel
//! (`_weight_int4pack_mm_for_cpu`), instead of dequantizing every tensor at load.
//!
//! The codes stay the file's own ([`QuantRows`]): LibTorch's kernel computes with `w = (q − 8)·s + z` for 4-bit q,
//! so a 4-bit code is one packed matrix and a wider code `c = lo + 16·hi` is two, whose products add up (`lo` with
//! s and z + 8s, `hi` with 16s and 128s): only the scales change form, rounded to bf16 because the kernel wants
//! them in the activations' dtype. Q6_K (a scale per 16 values) and unquantized tensors stay dense. The kernel's
//! fast path is bf16 activations: with f32 ones it runs scalar code ten times slower, so products with packed
//! weights run in bf16 whatever the model's dtype. That, more than the weights, is how the packed path differs
//! from the dequantized one (docs/performance.md measures it).
use std::collections::BTreeMap;

use half::bf16;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

pub use crate::quant_rows::{QuantRows, GROUP};
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

/// How many output rows LibTorch's CPU int4 layout packs in a tile on this machine: four float vectors' worth,
/// so 64 with AVX-512 and 32 with AVX2 (byte j of a tile's column holds row j in its low nibble and row
/// j + tile/2 in its high one, either way). Read once from LibTorch's own packing of a probe matrix; None
/// when the layout is neither (a CPU without AVX2), and then nothing is packed.
fn tile_n() -> Option<usize> {
    static TILE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *TILE.get_or_init(|| {
        let _guard = tch::no_grad_guard();
        // Row r holds code r / 16: the first byte pairs row 0 with row 32 (0x20) in 64-row tiles, with row 16
        // (0x10) in 32-row tiles.
        let codes: Vec<i32> = (0..64 * 32).map(|i: i32| i / 32 / 16).collect();
        let packed = Tensor::from_slice(&codes).view([64, 32]).f_internal_convert_weight_to_int4pack_for_cpu(1).ok()?;
        match Vec::<u8>::try_from(packed.reshape([-1])).ok()?.first()? {
            0x20 => Some(64),
            0x10 => Some(32),
            _ => None,
        }
    })
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
    // Rows per tile of the layout (see `tile_n`).
    tile: usize,
}

/// One int4 matrix in the layout `_weight_int4pack_mm_for_cpu` reads: bytes [n/T, k, T/2] for tiles of T rows
/// (`tile_n`), byte (t, c, j) holding row Tt+j in its low nibble and row Tt+T/2+j in its high nibble; scales
/// and zeros [k/32, n, 2] in bf16.
struct Int4Plane {
    packed: Tensor,
    scales_zeros: Tensor,
}

impl Int4Weight {
    /// Packs `rows`, or says why LibTorch's layout cannot hold them (rows not a multiple of 64).
    pub(crate) fn pack(rows: &QuantRows) -> std::result::Result<Self, String> {
        let (n, k) = (rows.n, rows.k);
        let tile = tile_n().ok_or("LibTorch's int4 layout on this CPU (no AVX2) is not one this crate writes")?;
        if !n.is_multiple_of(tile) || !k.is_multiple_of(GROUP) || k == 0 {
            return Err(format!("[{n}, {k}] is not a multiple of [{tile}, {GROUP}]"));
        }
        let planes = rows
            .planes()
            .into_iter()
            .map(|(codes, scales, zeros)| Int4Plane::pack(n, k, tile, &codes, &scales, &zeros))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Int4Weight { planes, n, k, tile })
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
        let (n, k, tile) = (self.n, self.k, self.tile);
        let mut w = vec![0f32; n * k];
        for p in &self.planes {
            let bytes = Vec::<u8>::try_from(&p.packed.reshape([-1])).unwrap_or_default();
            let sz = Vec::<f32>::try_from(&p.scales_zeros.to_kind(Kind::Float).reshape([-1])).unwrap_or_default();
            w.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
                let (t, j) = (r / tile, r % tile);
                let (col, shift) = if j < tile / 2 { (j, 0) } else { (j - tile / 2, 4) };
                for (c, w) in row.iter_mut().enumerate() {
                    let q = (bytes[(t * k + c) * (tile / 2) + col] >> shift) & 0x0F;
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
    fn pack(n: usize, k: usize, tile: usize, codes: &[u8], scales: &[f32], zeros: &[f32]) -> std::result::Result<Self, String> {
        let mut bytes = vec![0u8; n * k / 2];
        bytes.par_chunks_mut(k * tile / 2).enumerate().for_each(|(t, block)| {
            for (c, out) in block.chunks_exact_mut(tile / 2).enumerate() {
                for (j, o) in out.iter_mut().enumerate() {
                    let lo = codes[(t * tile + j) * k + c];
                    let hi = codes[(t * tile + tile / 2 + j) * k + c];
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
