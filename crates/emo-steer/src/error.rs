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
    /// Not a failure: a shard of a sharded run committed its part of `stages`, which the other shards
    /// share, so nothing that reads them may start before `emo merge` (the CLI exits 0 on it).
    #[error("shard {shard} committed its part of {}; they need the other shards and `emo merge RUN` before the run can go on", list_some(stages))]
    ShardPending {
        /// `I/N`.
        shard: String,
        /// The stages left unmerged, in the order they ran.
        stages: Vec<String>,
    },
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

/// `a, b, c` for a few names; the first three and how many more for many.
fn list_some(names: &[String]) -> String {
    match names.len() {
        0..=4 => names.join(", "),
        n => format!("{} and {} more stages", names[..3].join(", "), n - 3),
    }
}

/// Result alias of the experiment layers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with the path it happened on: `fs::read(p).map_err(io(p))`.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
