//! Section 5's directions and steering, and section 7's circuit modulation, for Python. A steerer's or
//! modulator's `hook(emotion)` is a native hook for `fwd_hooks`; `chat` replies with the paper's decoding.
use std::path::PathBuf;
use std::str::FromStr;

use emotion_circuits::data::Emotion;
use emotion_circuits::model::{ChatMessage, GenerationConfig, Input, Interventions, Positions};
use emotion_circuits::modulate::{CircuitSet, Modulation, Modulator};
use emotion_circuits::steer::{EmotionDirections, Site, Steerer};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::emo;
use crate::hooks::NativeHook;
use crate::input::input;
use crate::model::PyModel;
use crate::tensor::{from_py, to_py, without_gil};

fn emotion(name: &str) -> PyResult<Emotion> {
    Emotion::from_str(name).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn site(name: &str) -> PyResult<Site> {
    Site::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| PyValueError::new_err(format!("unknown site {name:?} (resid_mid or resid_post)")))
}

/// One conversation: a str is one user message.
fn messages(obj: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    match input(obj)? {
        (Input::Texts(mut t), true) => Ok(vec![ChatMessage::user(t.remove(0))]),
        (Input::Conversations(mut c), true) => Ok(c.remove(0)),
        _ => Err(PyTypeError::new_err("expected a str (one user message) or one conversation")),
    }
}

/// A native hook from the core's hooks.
fn native(parts: Vec<Interventions>, label: String) -> NativeHook {
    NativeHook { parts: parts.iter().map(|i| (i.rows().to_vec(), i.positions().clone())).collect(), label }
}

/// The paper's decoding with `max_new_tokens` replies.
fn decoding(base: GenerationConfig, max_new_tokens: Option<usize>) -> GenerationConfig {
    GenerationConfig { max_new_tokens: max_new_tokens.unwrap_or(base.max_new_tokens), ..base }
}

/// Emotion directions per layer (`[6, n_layers, d_model]` at `resid_mid` and `resid_post`, emotions in the
/// paper's order), as `emo directions` writes them.
#[pyclass(name = "EmotionDirections", module = "emotion_circuits", unsendable)]
pub struct PyDirections {
    pub(crate) directions: EmotionDirections,
}

#[pymethods]
impl PyDirections {
    /// Directions from two tensors `[6, n_layers, d_model]` (shared, not copied).
    #[new]
    fn new(resid_mid: &Bound<'_, PyAny>, resid_post: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (mid, post) = (from_py(resid_mid, "resid_mid")?, from_py(resid_post, "resid_post")?);
        if mid.size() != post.size() || mid.dim() != 3 || mid.size()[0] != 6 {
            return Err(PyValueError::new_err(format!("directions must both be [6, n_layers, d_model], got {:?} and {:?}", mid.size(), post.size())));
        }
        Ok(PyDirections { directions: EmotionDirections { resid_mid: mid, resid_post: post } })
    }

    /// Reads a `directions.safetensors` file.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Ok(PyDirections { directions: EmotionDirections::load(&path).map_err(emo)? })
    }

    /// Writes them as `emo directions` does.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.directions.save(&path, &Default::default()).map_err(emo)
    }

    /// The emotions, in the order of the first dimension.
    #[classattr]
    fn emotions() -> Vec<&'static str> {
        Emotion::ALL.iter().map(|e| e.name()).collect()
    }

    #[getter]
    fn resid_mid(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, &self.directions.resid_mid)
    }

    #[getter]
    fn resid_post(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_py(py, &self.directions.resid_post)
    }

    /// One emotion's directions, `[n_layers, d_model]`.
    #[pyo3(signature = (emotion, site = "resid_post"))]
    fn get(&self, py: Python<'_>, emotion: &str, site: &str) -> PyResult<PyObject> {
        to_py(py, &self.directions.get(self::site(site)?, self::emotion(emotion)?))
    }

    fn __repr__(&self) -> String {
        let (l, d) = self.directions.dims();
        format!("EmotionDirections({l} layers, d_model {d})")
    }
}

/// Steers a model with emotion directions (paper section 5): alpha times the residual's RMS along the
/// emotion's direction, added at `hook_resid_post` of `layers` (the paper's 11-20 of 28, scaled) at the last
/// prompt token and every generated one.
#[pyclass(name = "Steerer", module = "emotion_circuits", unsendable)]
pub struct PySteerer {
    model: Py<PyModel>,
    directions: EmotionDirections,
    alpha: f64,
    layers: Option<(usize, usize)>,
    positions: Positions,
    site: Site,
}

impl PySteerer {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(Steerer<'_>) -> PyResult<T>) -> PyResult<T> {
        let model = self.model.borrow(py);
        let mut s =
            Steerer::new(&model.model, self.directions.clone()).map_err(emo)?.alpha(self.alpha).site(self.site).positions(self.positions.clone());
        if let Some((a, b)) = self.layers {
            s = s.layers(a, b);
        }
        f(s)
    }
}

#[pymethods]
impl PySteerer {
    /// `directions`: an `EmotionDirections` or the path of a `directions.safetensors`.
    #[new]
    #[pyo3(signature = (model, directions, alpha = emotion_circuits::steer::paper::STEERING_ALPHA, layers = None, positions = "last-prompt-and-generated", site = "resid_post"))]
    fn new(
        py: Python<'_>,
        model: Py<PyModel>,
        directions: &Bound<'_, PyAny>,
        alpha: f64,
        layers: Option<(usize, usize)>,
        positions: &str,
        site: &str,
    ) -> PyResult<Self> {
        let directions = match directions.downcast::<PyDirections>() {
            Ok(d) => d.borrow().directions.clone(),
            Err(_) => EmotionDirections::load(&directions.extract::<PathBuf>()?).map_err(emo)?,
        };
        let s = PySteerer { model, directions, alpha, layers, positions: crate::hooks::positions(positions)?, site: self::site(site)? };
        s.with(py, |_| Ok(()))?; // checks the directions fit the model
        Ok(s)
    }

    /// The steering edit towards `emotion`, a native hook for `fwd_hooks`.
    fn hook(&self, py: Python<'_>, emotion: &str) -> PyResult<NativeHook> {
        let e = self::emotion(emotion)?;
        self.with(py, |s| Ok(native(vec![s.hook(&[Some(e)]).map_err(emo)?], format!("steer {emotion} alpha {}", self.alpha))))
    }

    /// The reply to one conversation (a str is one user message), steered towards `emotion` (`None`:
    /// unsteered), with the paper's steering decoding.
    #[pyo3(signature = (messages, emotion = None, max_new_tokens = None))]
    fn chat(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, emotion: Option<&str>, max_new_tokens: Option<usize>) -> PyResult<String> {
        let msgs = self::messages(messages)?;
        let e = emotion.map(self::emotion).transpose()?;
        self.with(py, |s| {
            let mut s = s.generation(decoding(GenerationConfig::steering(), max_new_tokens));
            if let Some(e) = e {
                s = s.emotion(e);
            }
            without_gil(py, || s.chat(&msgs)).map_err(emo)
        })
    }
}

/// Modulates a model with emotion circuits (paper section 7), from a folder `emo circuits build` wrote.
#[pyclass(name = "Modulator", module = "emotion_circuits", unsendable)]
pub struct PyModulator {
    model: Py<PyModel>,
    circuits: CircuitSet,
    scale: f64,
}

#[pymethods]
impl PyModulator {
    #[new]
    #[pyo3(signature = (model, circuits, scale = 1.0))]
    fn new(py: Python<'_>, model: Py<PyModel>, circuits: PathBuf, scale: f64) -> PyResult<Self> {
        let set = CircuitSet::load_for(&circuits, model.borrow(py).model.transformer.config()).map_err(emo)?;
        Ok(PyModulator { model, circuits: set, scale })
    }

    /// The modulation towards `emotion` (neuron and head edits), a native hook for `fwd_hooks`.
    #[pyo3(signature = (emotion, scale = None))]
    fn hook(&self, emotion: &str, scale: Option<f64>) -> PyResult<NativeHook> {
        let s = scale.unwrap_or(self.scale);
        let parts = Modulation::new(&self.circuits).hooks_for(&[Some((self::emotion(emotion)?, s))]).map_err(emo)?;
        Ok(native(parts, format!("modulate {emotion} scale {s}")))
    }

    /// The reply to one conversation (a str is one user message), modulated towards `emotion` (`None`:
    /// unmodulated), with the paper's modulation decoding.
    #[pyo3(signature = (messages, emotion = None, max_new_tokens = None))]
    fn chat(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, emotion: Option<&str>, max_new_tokens: Option<usize>) -> PyResult<String> {
        let msgs = self::messages(messages)?;
        let e = emotion.map(self::emotion).transpose()?;
        let model = self.model.borrow(py);
        let mut m = Modulator::new(&model.model, self.circuits.clone())
            .map_err(emo)?
            .scale(self.scale)
            .generation(decoding(GenerationConfig::modulation(), max_new_tokens));
        if let Some(e) = e {
            m = m.emotion(e);
        }
        without_gil(py, || m.chat(&msgs)).map_err(emo)
    }
}
