//! Quantized GGUF matrices read as they are stored: integer codes with a scale and a zero per row and group of
//! 32 inputs, for every ggml type that has one scale (and offset) per 32 consecutive inputs, so that
//! [`crate::packed`] can hand them to LibTorch's int4 kernel without changing a weight:
//!
//! | ggml | code c | s | z |
//! |---|---|---|---|
//! | Q4_0 | q (4 bits) | d | −8d |
//! | Q4_1 | q (4 bits) | d | m |
//! | Q4_K | q (4 bits), per 32-value sub-block | d·sc | −dmin·m |
//! | Q5_0 | q (5 bits) | d | −16d |
//! | Q8_0 | q + 128 (8 bits) | d | −128d |
use rayon::prelude::*;

use crate::ggml_type::GgmlType;

/// Inputs per scale group (every packable ggml type has 32).
pub const GROUP: usize = 32;

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
    pub(crate) fn planes(&self) -> Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> {
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
