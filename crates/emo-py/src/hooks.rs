//! `fwd_hooks` from Python: `(name, fn)` pairs whose `fn(tensor, hook)` may edit the activation in place or
//! return a replacement, name filters (`(lambda name: ..., fn)`), and native hooks (`zero`, `scale`, `add`,
//! a steerer's or modulator's hook) that run in Rust at full speed. They run in the order given.
use std::cell::RefCell;
use std::rc::Rc;
use std::str::FromStr;

use emotion_circuits::model::{Edit, Hook, HookContext, HookPoint, HookSet, Intervention, Interventions, ModelError, Positions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use tch::Tensor;

use crate::tensor;

/// What a Python hook is told about where it runs (TransformerLens' `hook` argument).
#[pyclass(name = "HookPoint", module = "emotion_circuits", frozen)]
pub struct PyHookPoint {
    /// The TransformerLens name, `blocks.3.hook_resid_post`.
    #[pyo3(get)]
    name: String,
    /// The block's index, `None` outside the blocks (`hook_embed`, `ln_final.*`).
    #[pyo3(get)]
    layer: Option<usize>,
}

#[pymethods]
impl PyHookPoint {
    fn __repr__(&self) -> String {
        format!("HookPoint({:?})", self.name)
    }
}

/// A hook point by name, as a `ValueError` naming it when unknown.
pub fn point(name: &str) -> PyResult<HookPoint> {
    HookPoint::from_str(name).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Positions by name (`all`, `last-prompt`, ...), as a `ValueError` naming them when unknown.
pub fn positions(name: &str) -> PyResult<Positions> {
    Positions::from_str(name).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A hook that runs in Rust: an ablation, a scaling, an added vector, or a steerer's or modulator's edit.
/// Pass it in `fwd_hooks` beside `(name, fn)` pairs.
#[pyclass(name = "Hook", module = "emotion_circuits", unsendable)]
pub struct NativeHook {
    /// Each part: the rows' edits (one row: every row alike) and the positions they act on.
    pub parts: Vec<(Vec<Intervention>, Positions)>,
    /// What `repr` shows.
    pub label: String,
}

#[pymethods]
impl NativeHook {
    fn __repr__(&self) -> String {
        format!("Hook({})", self.label)
    }
}

impl NativeHook {
    /// A hook applying `edit` at `name` to every row at `positions`.
    fn one(name: &str, edit: Edit, positions: &str, label: String) -> PyResult<NativeHook> {
        Ok(NativeHook { parts: vec![(vec![Intervention::none().with(point(name)?, edit)], self::positions(positions)?)], label })
    }

    /// The core's hooks, fresh for one call.
    pub fn interventions(&self) -> Vec<Interventions> {
        self.parts
            .iter()
            .map(|(rows, positions)| {
                if rows.len() == 1 {
                    Interventions::all_rows(rows[0].clone(), positions.clone())
                } else {
                    Interventions::new(rows.clone(), positions.clone())
                }
            })
            .collect()
    }
}

/// Zero-ablates `units` (neurons of `mlp.hook_post`, heads of `attn.hook_z`, channels elsewhere) at `name`.
#[pyfunction]
#[pyo3(signature = (name, units, positions = "all"))]
pub fn zero(name: &str, units: Vec<i64>, positions: &str) -> PyResult<NativeHook> {
    NativeHook::one(name, Edit::Zero(units.clone()), positions, format!("zero {name} {units:?}"))
}

/// Multiplies `units` at `name` by `factor` (enhancement above 1).
#[pyfunction]
#[pyo3(signature = (name, units, factor, positions = "all"))]
pub fn scale(name: &str, units: Vec<i64>, factor: f64, positions: &str) -> PyResult<NativeHook> {
    NativeHook::one(name, Edit::ScaleUnits(units.clone(), factor), positions, format!("scale {name} {units:?} x{factor}"))
}

/// Adds `vector` at `name`, or `alpha` times the activation's RMS times `vector` when `alpha` is given (the
/// paper's steering edit). The vector is shared with PyTorch, not copied.
#[pyfunction]
#[pyo3(signature = (name, vector, alpha = None, positions = "all"))]
pub fn add(name: &str, vector: &Bound<'_, PyAny>, alpha: Option<f64>, positions: &str) -> PyResult<NativeHook> {
    let v = tensor::from_py(vector, "vector")?;
    let edit = match alpha {
        Some(a) => Edit::AddRms(v, a),
        None => Edit::Add(v),
    };
    NativeHook::one(name, edit, positions, format!("add at {name}"))
}

/// Where a Python hook's exception waits while the forward unwinds: the hook point's name and the error.
pub type Raised = Rc<RefCell<Option<(String, PyErr)>>>;

enum Filter {
    Point(HookPoint),
    Names(PyObject),
}

/// One `(name or filter, fn)` pair of `fwd_hooks`.
struct PyHook {
    filter: Filter,
    f: PyObject,
    raised: Raised,
}

impl PyHook {
    fn fail(&self, point: HookPoint, e: PyErr) -> ModelError {
        let name = point.to_string();
        let msg = Python::with_gil(|py| e.value(py).to_string());
        self.raised.borrow_mut().get_or_insert((name.clone(), e));
        ModelError::Hook { point: name, msg: format!("the Python hook raised: {msg}") }
    }
}

impl Hook for PyHook {
    fn wants(&self, point: HookPoint) -> bool {
        match &self.filter {
            Filter::Point(p) => *p == point,
            Filter::Names(f) => Python::with_gil(|py| match f.call1(py, (point.to_string(),)).and_then(|r| r.is_truthy(py)) {
                Ok(yes) => yes,
                Err(e) => {
                    self.raised.borrow_mut().get_or_insert((point.to_string(), e));
                    false
                }
            }),
        }
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, _ctx: &HookContext) -> emotion_circuits::model::Result<Option<Tensor>> {
        if self.raised.borrow().is_some() {
            return Err(ModelError::Hook { point: point.to_string(), msg: "an earlier Python hook raised".into() });
        }
        let out = Python::with_gil(|py| -> PyResult<Option<Tensor>> {
            let t = tensor::to_py(py, act)?;
            let hp = Py::new(py, PyHookPoint { name: point.to_string(), layer: point.layer() })?;
            let r = self.f.call1(py, (t, hp))?;
            if r.is_none(py) {
                return Ok(None);
            }
            tensor::from_py(r.bind(py), &format!("the hook at {point} returned")).map(Some)
        });
        out.map_err(|e| self.fail(point, e))
    }
}

/// The hooks of one call, built from `fwd_hooks`, in order; `raised` receives a Python hook's exception.
pub struct CallHooks {
    natives: Vec<Interventions>,
    python: Vec<PyHook>,
    order: Vec<(bool, usize)>,
    /// A Python hook's exception, to re-raise after the forward stops.
    pub raised: Raised,
}

impl CallHooks {
    /// Reads `fwd_hooks`: a list of `(name, fn)`, `(filter, fn)` and native [`NativeHook`]s.
    pub fn parse(fwd_hooks: Option<&Bound<'_, PyAny>>) -> PyResult<CallHooks> {
        let mut hooks = CallHooks { natives: Vec::new(), python: Vec::new(), order: Vec::new(), raised: Rc::new(RefCell::new(None)) };
        let Some(list) = fwd_hooks.filter(|h| !h.is_none()) else { return Ok(hooks) };
        let items: Vec<Bound<'_, PyAny>> = match list.downcast::<PyList>() {
            Ok(l) => l.iter().collect(),
            Err(_) => list.downcast::<PyTuple>().map_err(|_| PyTypeError::new_err("fwd_hooks must be a list"))?.iter().collect(),
        };
        for (i, item) in items.iter().enumerate() {
            if let Ok(native) = item.downcast::<NativeHook>() {
                for part in native.borrow().interventions() {
                    hooks.order.push((true, hooks.natives.len()));
                    hooks.natives.push(part);
                }
                continue;
            }
            let pair = item
                .downcast::<PyTuple>()
                .ok()
                .filter(|t| t.len() == 2)
                .ok_or_else(|| PyTypeError::new_err(format!("fwd_hooks[{i}]: expected (name, fn), (filter, fn) or a Hook")))?;
            let (key, f) = (pair.get_item(0)?, pair.get_item(1)?);
            if !f.is_callable() {
                return Err(PyTypeError::new_err(format!("fwd_hooks[{i}]: the hook is not callable")));
            }
            let filter = if let Ok(name) = key.downcast::<PyString>() {
                Filter::Point(point(&name.to_string())?)
            } else if key.is_callable() {
                Filter::Names(key.clone().unbind())
            } else {
                return Err(PyTypeError::new_err(format!("fwd_hooks[{i}]: the first item must be a hook name or a filter on names")));
            };
            hooks.order.push((false, hooks.python.len()));
            hooks.python.push(PyHook { filter, f: f.unbind(), raised: hooks.raised.clone() });
        }
        Ok(hooks)
    }

    /// A hook set borrowing every hook, in the order given.
    pub fn set(&mut self) -> HookSet<'_> {
        let mut set = HookSet::new();
        let (mut natives, mut python): (Vec<Option<&mut Interventions>>, Vec<Option<&mut PyHook>>) =
            (self.natives.iter_mut().map(Some).collect(), self.python.iter_mut().map(Some).collect());
        for &(native, i) in &self.order {
            if native {
                set.push(natives[i].take().expect("each hook once"));
            } else {
                set.push(python[i].take().expect("each hook once"));
            }
        }
        set
    }

    /// The error to raise for a failed call: a Python hook's own exception (with a note naming its hook
    /// point) when one raised, else the core's error as an `EmoError`.
    pub fn error(&self, py: Python<'_>, e: impl std::fmt::Display) -> PyErr {
        match self.raised.borrow_mut().take() {
            Some((name, err)) => {
                let _ = err.value(py).call_method1("add_note", (format!("raised in the hook at {name}"),));
                err
            }
            None => crate::error::emo(e),
        }
    }
}
