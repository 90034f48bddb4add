//! Errors of the directions layer: the experiment layers' one error type (`emo_steer::Error`), under the name
//! this crate has always used. Each names the run folder file, tensor or value at fault.
pub use emo_steer::error::io;
pub use emo_steer::Error as DirectionsError;

/// Result alias of this crate.
pub type Result<T, E = DirectionsError> = std::result::Result<T, E>;
