//! The error of the experiment layers (this crate, `emo-run`, the section crates): each names the file, tensor
//! or value at fault.
use std::path::PathBuf;

/// What can go wrong running or reading experiments and their files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but is not what it should be (bad JSON, missing tensor, wrong shape...).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A request that cannot be met (unknown layer, empty selection, mismatched run...).
    #[error("{0}")]
    Invalid(String),
    /// An error from the data layer (datasets, prompts, judges).
    #[error(transparent)]
    Data(#[from] emo_data::DataError),
    /// An error from the model layer.
    #[error(transparent)]
    Model(#[from] emo_model::ModelError),
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Model(emo_model::ModelError::Torch(e))
    }
}

/// Result alias of the experiment layers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with the path it happened on: `fs::read(p).map_err(io(p))`.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
