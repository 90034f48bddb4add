//! Files of a run folder: atomic writes (a killed run never leaves a half-written file), f32 safetensors with
//! string metadata (from `emo_steer::tensor_file`), JSON, and sha256 of inputs for the manifest.
use std::fs;
use std::io::Read;
use std::path::Path;

pub use emo_steer::json_file::{read_json, write_json};

use sha2::{Digest, Sha256};

pub use emo_steer::tensor_file::{
    f32_tensor, read_tensors, read_tensors_exact, tensor_to_f32, write_atomic, write_atomic_with, write_tensors, write_tensors_exact, TensorFile,
};

use crate::error::{io, Result};

/// Hex sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
