//! Errors of the data layer: each names the file, line and field, or the value, at fault.
use std::path::PathBuf;

/// What can go wrong reading or using data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A malformed record.
    #[error("{path}:{line}: {field}: {msg}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault (`json` for a line that is not JSON).
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// A name that is not one of the six emotions or three valences.
    #[error("unknown {kind} `{value}` (expected one of: {expected})")]
    UnknownName {
        /// `emotion` or `valence`.
        kind: &'static str,
        /// The value given.
        value: String,
        /// The accepted names.
        expected: String,
    },
    /// A split name other than `sev` or `test`.
    #[error("unknown split `{0}` (expected sev or test)")]
    UnknownSplit(String),
    /// An argument that cannot be used, with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// An error from the model layer (chat templates, tokenizer).
    #[error(transparent)]
    Model(#[from] emo_model::ModelError),
}
