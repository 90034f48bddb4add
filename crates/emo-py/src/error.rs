//! Rust errors as Python exceptions: `EmoError` (a `RuntimeError`) with the core's own message.
use pyo3::create_exception;
use pyo3::PyErr;

create_exception!(
    emotion_circuits,
    EmoError,
    pyo3::exceptions::PyRuntimeError,
    "An error from the Rust core (a missing file, a wrong shape, an unknown hook point, ...), with its message."
);

/// `e` as an [`EmoError`] carrying its message (with its causes, for `anyhow` chains).
pub fn emo(e: impl std::fmt::Display) -> PyErr {
    EmoError::new_err(format!("{e:#}"))
}
