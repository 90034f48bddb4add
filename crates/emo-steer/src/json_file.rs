//! JSON files (direction summaries, circuits, manifests): written atomically, read with the file named in
//! every error.
use std::path::Path;

use crate::error::{io, Error, Result};
use crate::tensor_file::write_atomic;

/// Serialises `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Format { path: path.into(), msg: format!("cannot serialise: {e}") })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file into `T`, naming the file on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::Format { path: path.into(), msg: format!("invalid JSON: {e}") })
}
