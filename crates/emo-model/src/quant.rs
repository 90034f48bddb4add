//! Dequantisation of ggml tensor data (as stored in GGUF files) to `f32`.
//!
//! The arithmetic follows ggml's reference `dequantize_row_*` functions operation by operation (same
//! products, same order, no fused multiply-add), so results are bit-identical to ggml and to gguf-py.
//! Blocks are independent, so the work is split over rayon in chunks of whole blocks.
use half::{bf16, f16};
use rayon::prelude::*;

use crate::ggml_type::GgmlType;

/// Elements in a Q4_0 / Q4_1 / Q5_0 / Q8_0 block.
const QK: usize = 32;
/// Elements in a K-quant super-block.
const QK_K: usize = 256;
/// Roughly how many output elements one rayon task produces: large enough to amortise scheduling,
/// small enough to balance a 500 MB file over all cores.
const CHUNK_ELEMS: usize = 1 << 15;

/// The types [`dequantize`] accepts.
pub const SUPPORTED: [GgmlType; 10] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Whether [`dequantize`] can decode `dtype`.
pub fn is_supported(dtype: GgmlType) -> bool {
    SUPPORTED.contains(&dtype)
}

/// Decodes `n_elements` values of type `dtype` from `data`, which must hold exactly the blocks for
/// those elements (`n_elements / block_size * type_size` bytes).
///
/// The error text says what is wrong (unsupported type, element count not a whole number of blocks,
/// wrong byte count); callers add the file and tensor names.
pub fn dequantize(dtype: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, String> {
    if !is_supported(dtype) {
        return Err(format!("ggml type {dtype} cannot be dequantized (not supported)"));
    }
    // Both are Some for every supported type.
    let (Some(bs), Some(ts)) = (dtype.block_size(), dtype.type_size()) else {
        return Err(format!("ggml type {dtype} has no known block layout"));
    };
    let n_blocks = n_elements / bs;
    if n_blocks * bs != n_elements {
        return Err(format!("{n_elements} elements of type {dtype} are not a whole number of {bs}-element blocks"));
    }
    let expected = n_blocks.checked_mul(ts).ok_or_else(|| format!("{n_elements} elements of type {dtype} overflow the byte size"))?;
    if data.len() != expected {
        return Err(format!("{n_elements} elements of type {dtype} need {expected} bytes, got {}", data.len()));
    }

    let mut out = vec![0f32; n_elements];
    match dtype {
        GgmlType::F32 => run::<1, 4>(data, &mut out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => run::<1, 2>(data, &mut out, |b, o| o[0] = f16::from_le_bytes(*b).to_f32()),
        GgmlType::BF16 => run::<1, 2>(data, &mut out, |b, o| o[0] = bf16::from_le_bytes(*b).to_f32()),
        GgmlType::Q8_0 => run::<QK, 34>(data, &mut out, q8_0),
        GgmlType::Q4_0 => run::<QK, 18>(data, &mut out, q4_0),
        GgmlType::Q4_1 => run::<QK, 20>(data, &mut out, q4_1),
        GgmlType::Q5_0 => run::<QK, 22>(data, &mut out, q5_0),
        GgmlType::Q4_K => run::<QK_K, 144>(data, &mut out, q4_k),
        GgmlType::Q5_K => run::<QK_K, 176>(data, &mut out, q5_k),
        GgmlType::Q6_K => run::<QK_K, 210>(data, &mut out, q6_k),
        // Excluded by `is_supported` above.
        other => return Err(format!("ggml type {other} cannot be dequantized (not supported)")),
    }
    Ok(out)
}

/// Applies `f` to every (block bytes, block output) pair, in parallel over chunks of blocks.
/// The caller has checked that `data` and `out` hold the same whole number of blocks.
fn run<const BS: usize, const TS: usize>(data: &[u8], out: &mut [f32], f: impl Fn(&[u8; TS], &mut [f32; BS]) + Sync) {
    let blocks_per_chunk = (CHUNK_ELEMS / BS).max(1);
    out.par_chunks_mut(blocks_per_chunk * BS).zip(data.par_chunks(blocks_per_chunk * TS)).for_each(|(o, d)| {
        for (ob, db) in o.chunks_exact_mut(BS).zip(d.chunks_exact(TS)) {
            // chunks_exact guarantees the lengths; the `if let` only avoids a panic path.
            if let (Some(ob), Some(db)) = (ob.first_chunk_mut::<BS>(), db.first_chunk::<TS>()) {
                f(db, ob);
            }
        }
    });
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0: f16 d, 32 × i8. y = q·d.
#[inline(always)]
fn q8_0(b: &[u8; 34], y: &mut [f32; QK]) {
    let d = half_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = (q as i8) as f32 * d;
    }
}

/// Q4_0: f16 d, 16 bytes of nibbles (low nibbles are elements 0..16, high nibbles 16..32). y = (q−8)·d.
#[inline(always)]
fn q4_0(b: &[u8; 18], y: &mut [f32; QK]) {
    let d = half_at(b, 0);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..]) {
        *lo = ((q & 0x0F) as i32 - 8) as f32 * d;
        *hi = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles. y = q·d + m.
#[inline(always)]
fn q4_1(b: &[u8; 20], y: &mut [f32; QK]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..]) {
        *lo = (q & 0x0F) as f32 * d + m;
        *hi = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: f16 d, u32 of fifth bits (bit j belongs to element j), 16 bytes of nibbles. y = (q−16)·d.
#[inline(always)]
fn q5_0(b: &[u8; 22], y: &mut [f32; QK]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for (j, ((lo, hi), &q)) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[6..]).enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        *lo = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        *hi = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K:
/// bytes 0..4 hold scales 0..4 (low 6 bits), bytes 4..8 mins 0..4; sub-blocks 4..8 keep their low
/// nibbles in bytes 8..12 and their top two bits in the spare high bits of bytes 0..8.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of packed scales/mins, 128 bytes of nibbles. Each 64-element group
/// takes low nibbles for its first 32 elements and high nibbles for the next 32. y = d·sc·q − dmin·m.
#[inline(always)]
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..];
    for (g, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *lo = d1 * (q & 0x0F) as f32 - m1;
            *hi = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits: bit i of byte l is the high bit of element l of
/// sub-block i. Layout: d, dmin, scales[12], qh[32], qs[128].
#[inline(always)]
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..];
    for (g, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 1u8 << (2 * g + 1));
        let (lo, hi) = y.split_at_mut(32);
        for (((lo, hi), &q), &h) in lo.iter_mut().zip(hi.iter_mut()).zip(q).zip(qh) {
            let h1 = if h & u1 != 0 { 16 } else { 0 };
            let h2 = if h & u2 != 0 { 16 } else { 0 };
            *lo = d1 * ((q & 0x0F) + h1) as f32 - m1;
            *hi = d2 * ((q >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K: ql[128] (low nibbles), qh[64] (2-bit highs), 16 × i8 scales (one per 16 elements), f16 d.
/// Each 128-element half uses 64 bytes of ql and 32 of qh; y = d·scale·(q−32).
#[inline(always)]
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = ((ql[l] & 0x0F) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_sizes_and_types() {
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], 32).unwrap_err().contains("need 18 bytes"));
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], 31).unwrap_err().contains("whole number"));
        assert!(dequantize(GgmlType::Q5_1, &[0; 24], 32).unwrap_err().contains("not supported"));
        assert!(dequantize(GgmlType::Other(99), &[], 0).unwrap_err().contains("not supported"));
        assert_eq!(dequantize(GgmlType::Q6_K, &[], 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn q8_0_block() {
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 4;
        b[3] = (-6i8) as u8;
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(&y[..3], &[2.0, -3.0, 0.0]);
    }
}
