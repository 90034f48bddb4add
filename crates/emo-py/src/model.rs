//! `Model`: load a chat model and run it as TransformerLens users do (`to_tokens`, `run_with_cache`,
//! `run_with_hooks`, `generate`), with hooks written in Python or native ones.
use emotion_circuits::model::device::{parse_devices, parse_kind_on};
use emotion_circuits::model::kv_cache::left_pad;
use emotion_circuits::model::{GenerationConfig, HookPoint, HookSet, Input, LoadOptions, Model, Sampling, WeightFormat};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::cache::PyActivationCache;
use crate::error::emo;
use crate::hooks::{self, CallHooks};
use crate::input::input;
use crate::tensor::{to_py, without_gil};

/// A loaded chat model (Llama, Qwen2/3, Mistral, Phi-3, Gemma families), from an alias (`smollm2-135m`), a
/// `.gguf` file, a Hugging Face folder or a repo id.
#[pyclass(name = "Model", module = "emotion_circuits", unsendable)]
pub struct PyModel {
    pub(crate) model: Model,
}

#[pymethods]
impl PyModel {
    /// Loads a model. `device`: `cpu`, `cuda`, `cuda:N`, `auto` or a comma list spreading the layers;
    /// `dtype`: `float32`/`f32`, `bfloat16`/`bf16`, `float16`/`f16`, or `auto` (bf16 on CUDA and on CPUs with
    /// avx512_bf16 or AMX, else f32); `weights`: `dequantized` (exact) or
    /// `packed` (int4 GGUF matrices, CPU).
    #[staticmethod]
    #[pyo3(signature = (name_or_path = "smollm2-135m", device = "cpu", dtype = "float32", weights = "dequantized", chat_template = None))]
    fn load(py: Python<'_>, name_or_path: &str, device: &str, dtype: &str, weights: &str, chat_template: Option<&str>) -> PyResult<PyModel> {
        let devices = parse_devices(device).map_err(|e| PyValueError::new_err(format!("device={device:?}: {e}")))?;
        let kind = parse_kind_on(torch_dtype_name(dtype), devices[0]).map_err(|e| PyValueError::new_err(format!("dtype={dtype:?}: {e}")))?;
        let format = WeightFormat::parse(weights).map_err(|e| PyValueError::new_err(format!("weights={weights:?}: {e}")))?;
        let opts = LoadOptions::new(devices[0], kind).devices(devices).weights(format);
        let model = without_gil(py, || Model::load(name_or_path, opts)).map_err(emo)?;
        let model = match chat_template {
            Some(source) => model.with_chat_template(source).map_err(emo)?,
            None => model,
        };
        Ok(PyModel { model })
    }

    /// The model's shape in TransformerLens' names: `n_layers`, `d_model`, `n_heads`, `n_key_value_heads`,
    /// `d_head`, `d_mlp`, `d_vocab`, `n_ctx`, and `architecture`.
    #[getter]
    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.model.transformer.config();
        let d = PyDict::new(py);
        d.set_item("architecture", format!("{:?}", c.arch).to_lowercase())?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_key_value_heads", c.n_kv_heads)?;
        d.set_item("d_head", c.d_head)?;
        d.set_item("d_mlp", c.d_mlp)?;
        d.set_item("d_vocab", c.vocab_size)?;
        d.set_item("n_ctx", c.max_position)?;
        Ok(d)
    }

    /// Where the model was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.model.path.display().to_string()
    }

    /// Every hook point's name, in the forward's order.
    fn hook_names(&self) -> Vec<String> {
        HookPoint::all(self.model.transformer.config().n_layers).iter().map(|p| p.to_string()).collect()
    }

    /// Token ids, `[batch, pos]` int64, left-padded with the pad token: texts as Hugging Face's
    /// `tokenizer(text)` gives them, conversations through the chat template, ids as they are.
    fn to_tokens(&self, py: Python<'_>, input: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let rows = self.model.to_tokens(self::input(input)?.0).map_err(emo)?;
        // The padding every forward uses, so the tensor is what the model runs.
        let (tokens, _, _) = left_pad(&rows, self.model.pad_token_id()).map_err(emo)?;
        to_py(py, &tokens)
    }

    /// The text of token ids (`[pos]` gives a str, `[batch, pos]` a list), special tokens kept.
    fn to_string(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let (input, single) = input(tokens)?;
        let Input::Ids(rows) = input else { return Err(PyTypeError::new_err("to_string takes token ids")) };
        let texts: Vec<String> = rows.iter().map(|r| self.model.tokenizer.decode(r, false)).collect::<Result<_, _>>().map_err(emo)?;
        one_or_list(py, texts, single)
    }

    /// Each token of one input as a string.
    fn to_str_tokens(&self, input: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let rows = self.model.to_tokens(self::input(input)?.0).map_err(emo)?;
        let row = rows.first().ok_or_else(|| PyValueError::new_err("no input"))?;
        row.iter().map(|&t| self.model.tokenizer.decode(&[t], false).map_err(emo)).collect()
    }

    /// The logits, `[batch, pos, d_vocab]` float32.
    #[pyo3(signature = (input, fwd_hooks = None))]
    fn __call__(&self, py: Python<'_>, input: &Bound<'_, PyAny>, fwd_hooks: Option<&Bound<'_, PyAny>>) -> PyResult<PyObject> {
        self.run_with_hooks(py, input, fwd_hooks)
    }

    /// One forward with `fwd_hooks` (`[(name, fn), (filter, fn), native hook, ...]`, run in that order);
    /// `fn(tensor, hook)` may edit the tensor in place or return a replacement. Returns the logits.
    #[pyo3(signature = (input, fwd_hooks = None))]
    fn run_with_hooks(&self, py: Python<'_>, input: &Bound<'_, PyAny>, fwd_hooks: Option<&Bound<'_, PyAny>>) -> PyResult<PyObject> {
        let (input, _) = self::input(input)?;
        let logits = hooked(py, fwd_hooks, |set| self.model.run_with_hooks(input, set))?;
        to_py(py, &logits)
    }

    /// One forward keeping the activations `names_filter` accepts (`None`: all; a name; a list of names; a
    /// function of the name), after `fwd_hooks` ran. Returns `(logits, cache)`.
    #[pyo3(signature = (input, names_filter = None, fwd_hooks = None))]
    fn run_with_cache(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        names_filter: Option<&Bound<'_, PyAny>>,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(PyObject, PyActivationCache)> {
        let (input, _) = self::input(input)?;
        let keep = names(names_filter, self.model.transformer.config().n_layers)?;
        let (logits, cache) = hooked(py, fwd_hooks, |set| self.model.run_with_cache_and_hooks(input, |p| keep.contains(&p), set))?;
        Ok((to_py(py, &logits)?, PyActivationCache { cache }))
    }

    /// Continues each input with up to `max_new_tokens` tokens (greedy unless `temperature` > 0), with
    /// `fwd_hooks` acting at every step. Texts continue as they are; conversations get the chat template's
    /// assistant turn. Returns the new text (a list for several inputs), or the new token ids with
    /// `return_tokens=True`.
    #[pyo3(signature = (input, max_new_tokens = 50, fwd_hooks = None, temperature = 0.0, top_p = 1.0, top_k = 0, seed = 0,
                        min_new_tokens = 0, repetition_penalty = 1.0, no_repeat_ngram_size = 0, return_tokens = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        max_new_tokens: usize,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        min_new_tokens: usize,
        repetition_penalty: f32,
        no_repeat_ngram_size: usize,
        return_tokens: bool,
    ) -> PyResult<PyObject> {
        let (input, single) = self::input(input)?;
        let rows = self.model.to_tokens(input).map_err(emo)?;
        let cfg = GenerationConfig {
            max_new_tokens,
            min_new_tokens,
            repetition_penalty,
            no_repeat_ngram_size,
            sampling: Sampling { temperature, top_p, top_k, seed },
            ..Default::default()
        };
        let generated = hooked(py, fwd_hooks, |set| self.model.generate_ids(&rows, &cfg, set))?;
        if return_tokens {
            let ids: Vec<Vec<u32>> = generated.into_iter().map(|g| g.tokens).collect();
            return if single { Ok(ids[0].clone().into_pyobject(py)?.into_any().unbind()) } else { Ok(ids.into_pyobject(py)?.into_any().unbind()) };
        }
        let texts = generated.iter().map(|g| self.model.tokenizer.decode(&g.tokens, true)).collect::<Result<Vec<_>, _>>().map_err(emo)?;
        one_or_list(py, texts, single)
    }

    fn __repr__(&self) -> String {
        let c = self.model.transformer.config();
        format!("Model({}, {} layers, d_model {}, {:?})", self.model.path.display(), c.n_layers, c.d_model, self.model.transformer.device())
    }
}

/// Runs `f` with the hooks of `fwd_hooks` and the GIL released. Returns its result, or the error to raise:
/// a Python hook's own exception first (also when the forward went on, as after a name filter raised).
fn hooked<T, E: std::fmt::Display>(
    py: Python<'_>,
    fwd_hooks: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce(&mut HookSet) -> Result<T, E>,
) -> PyResult<T> {
    let mut hooks = CallHooks::parse(fwd_hooks)?;
    let out = {
        let mut set = hooks.set();
        without_gil(py, || f(&mut set))
    };
    match out {
        Err(e) => Err(hooks.error(py, e)),
        Ok(_) if hooks.raised.borrow().is_some() => Err(hooks.error(py, "a hook raised")),
        Ok(v) => Ok(v),
    }
}

/// The hook points `filter` names: `None` every point, a name, a list of names, or a function of the name.
fn names(filter: Option<&Bound<'_, PyAny>>, n_layers: usize) -> PyResult<Vec<HookPoint>> {
    let all = HookPoint::all(n_layers);
    let Some(f) = filter.filter(|f| !f.is_none()) else { return Ok(all) };
    if let Ok(name) = f.extract::<String>() {
        return Ok(vec![hooks::point(&name)?]);
    }
    if let Ok(list) = f.downcast::<PyList>() {
        return list.iter().map(|n| hooks::point(&n.extract::<String>()?)).collect();
    }
    if f.is_callable() {
        let mut keep = Vec::new();
        for p in all {
            if f.call1((p.to_string(),))?.is_truthy()? {
                keep.push(p);
            }
        }
        return Ok(keep);
    }
    Err(PyTypeError::new_err("names_filter must be None, a hook name, a list of names or a function of the name"))
}

fn one_or_list(py: Python<'_>, mut texts: Vec<String>, single: bool) -> PyResult<PyObject> {
    if single {
        Ok(texts.remove(0).into_pyobject(py)?.into_any().unbind())
    } else {
        Ok(texts.into_pyobject(py)?.into_any().unbind())
    }
}

/// PyTorch's dtype names (`float32`, `torch.bfloat16`) as the core's (`f32`, `bf16`).
fn torch_dtype_name(dtype: &str) -> &str {
    match dtype.trim_start_matches("torch.") {
        "float32" | "float" => "f32",
        "bfloat16" => "bf16",
        "float16" | "half" => "f16",
        other => other,
    }
}
