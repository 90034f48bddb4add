//! Tensors across the boundary without copies: a `tch::Tensor` and a `torch.Tensor` made from it (or the
//! other way round) hold the same LibTorch tensor, so an in-place edit on either side is seen by the other.
//! This works because the extension links the very LibTorch that `import torch` loaded (the package
//! imports torch first).
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::EmoError;

extern "C" {
    fn emo_thp_check(obj: *mut ffi::PyObject) -> i32;
    fn emo_thp_wrap(t: *const C_tensor) -> *mut ffi::PyObject;
    fn emo_thp_unpack(obj: *mut ffi::PyObject) -> *mut C_tensor;
}

/// A `torch.Tensor` sharing `t`'s storage.
pub fn to_py(py: Python<'_>, t: &Tensor) -> PyResult<PyObject> {
    // SAFETY: `t` is a live tensor; the bridge returns a new reference or null with a Python error set.
    let ptr = unsafe { emo_thp_wrap(t.as_ptr()) };
    if ptr.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new, owned reference.
    Ok(unsafe { PyObject::from_owned_ptr(py, ptr) })
}

/// Whether `obj` is a `torch.Tensor`.
pub fn is_tensor(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: a check on a live object; false when torch's tensor type is not set up.
    unsafe { emo_thp_check(obj.as_ptr()) != 0 }
}

/// The LibTorch tensor behind a `torch.Tensor` (shared, not copied); a `TypeError` naming `what` otherwise.
pub fn from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    if !is_tensor(obj) {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        return Err(PyTypeError::new_err(format!("{what}: expected a torch.Tensor, got {ty}")));
    }
    // SAFETY: `obj` is a torch.Tensor; the bridge returns a new heap tensor that tch then owns, or null.
    let ptr = unsafe { emo_thp_unpack(obj.as_ptr()) };
    if ptr.is_null() {
        return Err(EmoError::new_err(format!("{what}: could not read the tensor")));
    }
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

/// Runs `f` with the GIL released, so that other Python threads run meanwhile; Python hooks take it back for
/// as long as they run.
pub fn without_gil<T, F: FnOnce() -> T>(py: Python<'_>, f: F) -> T {
    struct Unchecked<X>(X);
    // SAFETY: `allow_threads` runs the closure on this thread, before it returns; nothing crosses threads.
    // The classes whose data the closure borrows are `unsendable`, so no other thread can reach them.
    unsafe impl<X> Send for Unchecked<X> {}
    let job = Unchecked(f);
    let out = py.allow_threads(move || {
        let job = job;
        Unchecked((job.0)())
    });
    out.0
}
