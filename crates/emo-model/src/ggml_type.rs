//! [`GgmlType`]: ggml's tensor element types with their numeric ids and block layouts, shared by the GGUF
//! reader ([`crate::gguf`]) and the dequantisers ([`crate::quant`]).
use std::fmt;

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
