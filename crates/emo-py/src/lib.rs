//! The native half of the Python package `emotion_circuits` (`emotion_circuits._native`): the Rust core's
//! models, hooks, caches, steering, modulation and pipelines, with tensors shared with PyTorch.
//!
//! Names follow TransformerLens where it has them (`run_with_cache`, `run_with_hooks`, `to_tokens`,
//! `fwd_hooks`, `cache["resid_post", 10]`); the Python half (`python/emotion_circuits/`) adds the pipelines'
//! keyword functions, Jupyter progress bars and the type stubs.
use pyo3::prelude::*;

mod cache;
mod error;
mod hooks;
mod input;
mod model;
mod pipelines;
mod steer;
mod tensor;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EmoError", m.py().get_type::<error::EmoError>())?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<cache::PyActivationCache>()?;
    m.add_class::<hooks::PyHookPoint>()?;
    m.add_class::<hooks::NativeHook>()?;
    m.add_class::<steer::PyDirections>()?;
    m.add_class::<steer::PySteerer>()?;
    m.add_class::<steer::PyModulator>()?;
    m.add_function(wrap_pyfunction!(hooks::zero, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::scale, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::add, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::run_command, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::set_progress, m)?)?;
    Ok(())
}
