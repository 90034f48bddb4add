//! `ActivationCache` for Python: `cache["blocks.10.hook_resid_post"]`, `cache["resid_post", 10]` (negative
//! layers count from the end), `in`, `len`, `keys()`, and TransformerLens' residual analyses. Values are the
//! core's tensors, shared with PyTorch.
use emotion_circuits::model::ActivationCache;
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::error::emo;
use crate::tensor::to_py;

/// The activations of one forward, by hook name.
#[pyclass(name = "ActivationCache", module = "emotion_circuits", unsendable)]
pub struct PyActivationCache {
    pub(crate) cache: ActivationCache,
}

#[pymethods]
impl PyActivationCache {
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let t = if let Ok(name) = key.extract::<String>() {
            self.cache.by_name(&name)
        } else if let Ok(pair) = key.downcast::<PyTuple>() {
            let (name, layer): (String, i64) = pair.extract().map_err(|_| PyTypeError::new_err("a cache key is a hook name or (name, layer)"))?;
            self.cache.at(&name, layer)
        } else {
            return Err(PyTypeError::new_err("a cache key is a hook name or (name, layer)"));
        };
        to_py(py, t.map_err(|e| PyKeyError::new_err(e.to_string()))?)
    }

    fn __contains__(&self, name: &str) -> bool {
        self.cache.by_name(name).is_ok()
    }

    fn __len__(&self) -> usize {
        self.cache.len()
    }

    /// The hook names held, in the forward's order.
    fn keys(&self) -> Vec<String> {
        self.cache.points().map(|p| p.to_string()).collect()
    }

    fn __iter__(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<PyObject> {
        Ok(slf.keys().into_pyobject(py)?.try_iter()?.into_any().unbind())
    }

    /// The token ids the forward ran, `[batch, pos]`, left-padded.
    #[getter]
    fn tokens(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, self.cache.tokens())
    }

    /// Which positions are real tokens (not padding), `[batch, pos]`.
    #[getter]
    fn mask(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, self.cache.mask())
    }

    /// The residual stream before each block (and after the last; with `incl_mid`, also between attention and
    /// MLP), stacked as `[component, batch, pos, d_model]`, with the labels.
    #[pyo3(signature = (layer = None, incl_mid = false))]
    fn accumulated_resid(&self, py: Python<'_>, layer: Option<usize>, incl_mid: bool) -> PyResult<(PyObject, Vec<String>)> {
        let (t, labels) = self.cache.accumulated_resid(layer, incl_mid).map_err(emo)?;
        Ok((to_py(py, &t)?, labels))
    }

    /// The residual stream split into what each component added (embedding, each attention and MLP), stacked,
    /// with the labels.
    #[pyo3(signature = (layer = None))]
    fn decompose_resid(&self, py: Python<'_>, layer: Option<usize>) -> PyResult<(PyObject, Vec<String>)> {
        let (t, labels) = self.cache.decompose_resid(layer).map_err(emo)?;
        Ok((to_py(py, &t)?, labels))
    }

    fn __repr__(&self) -> String {
        format!("ActivationCache({} hook points)", self.cache.len())
    }
}
