//! The experiment layers' one error type (`emo_steer::Error`), named for this crate.
pub use emo_steer::error::io;
pub use emo_steer::Error as RunError;

/// Result alias of this crate.
pub type Result<T, E = RunError> = std::result::Result<T, E>;
