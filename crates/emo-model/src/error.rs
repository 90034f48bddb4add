//! The crate's error type. Every variant names the file, key, tensor or value at fault, so bad input is
//! reported, never a panic or a LibTorch abort.
use std::path::PathBuf;

/// Everything that can go wrong while loading, running or hooking a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file ended before a structure it declares.
    #[error("{path}: truncated file: {what} needs bytes {start}..{end}, but the file has {len} bytes")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// A file whose content is malformed (bad magic, impossible sizes, wrong JSON, ...).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A GGUF tensor in a quantisation type this crate cannot dequantize.
    #[error("{path}: tensor `{tensor}` has ggml type {dtype}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K)")]
    UnsupportedQuant {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The ggml type, by name or number.
        dtype: String,
    },
    /// A required metadata key or config field is absent or of the wrong type.
    #[error("{path}: metadata key `{key}`: {msg}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A weight the architecture needs is not in the file(s).
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The file (or folder for sharded checkpoints).
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor whose shape differs from what the config implies.
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Shape found.
        got: Vec<i64>,
        /// Shape expected.
        expected: Vec<i64>,
    },
    /// The model's architecture is not one this crate implements.
    #[error("{path}: unknown architecture `{arch}` (supported: llama, qwen2)")]
    UnknownArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture string found.
        arch: String,
    },
    /// The tokenizer is missing or cannot be built.
    #[error("tokenizer ({path}): {msg}")]
    Tokenizer {
        /// The file or folder the tokenizer was to come from.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A model reference that resolves to nothing usable.
    #[error("model `{reference}` not found: {msg}")]
    ModelNotFound {
        /// What the user asked for.
        reference: String,
        /// Why it could not be resolved, and what to do instead.
        msg: String,
    },
    /// An error raised by a hook at a hook point.
    #[error("hook at {point}: {msg}")]
    Hook {
        /// The hook point, TransformerLens name.
        point: String,
        /// What went wrong.
        msg: String,
    },
    /// A caller passed an invalid value (shape, index, option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from LibTorch, caught before it can abort.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    /// A malformed-file error.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format { path: path.into(), msg: msg.into() }
    }
}
