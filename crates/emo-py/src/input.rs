//! What the Python entry points accept as input, turned into the core's [`Input`]: a text, several texts, a
//! conversation (a list of `{"role", "content"}` dicts), several conversations, or token ids (a list, a list
//! of lists, or an integer `torch.Tensor` of shape `[pos]` or `[batch, pos]`).
use emotion_circuits::model::{ChatMessage, Input};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use tch::{Device, Kind};

use crate::tensor;

const EXPECTED: &str = "input must be a str, a list of str, a conversation (a list of {\"role\", \"content\"} dicts), a list of \
                        conversations, or token ids (a list of int, a list of lists, or an integer torch.Tensor)";

/// `obj` as the core's input, and whether it was one row (a text, one conversation, one row of ids): then
/// the entry points return one result rather than a list.
pub fn input(obj: &Bound<'_, PyAny>) -> PyResult<(Input, bool)> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok((Input::Texts(vec![s.to_string()]), true));
    }
    if tensor::is_tensor(obj) {
        return ids_of_tensor(obj);
    }
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.downcast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = obj.downcast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(PyTypeError::new_err(EXPECTED));
    };
    let Some(first) = items.first() else { return Err(PyValueError::new_err("input is empty")) };
    if first.is_instance_of::<PyString>() {
        let texts = items
            .iter()
            .enumerate()
            .map(|(i, t)| t.extract::<String>().map_err(|_| PyTypeError::new_err(format!("input[{i}]: expected a str like input[0]"))))
            .collect::<PyResult<_>>()?;
        return Ok((Input::Texts(texts), false));
    }
    if first.is_instance_of::<PyDict>() {
        return Ok((Input::Conversations(vec![conversation(&items, "input")?]), true));
    }
    if first.extract::<i64>().is_ok() {
        return Ok((Input::Ids(vec![ids(obj, "input")?]), true));
    }
    // Several rows: conversations or ids.
    let mut convs = Vec::new();
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let inner: Vec<Bound<'_, PyAny>> = match item.downcast::<PyList>() {
            Ok(l) => l.iter().collect(),
            Err(_) => match item.downcast::<PyTuple>() {
                Ok(t) => t.iter().collect(),
                Err(_) => return Err(PyTypeError::new_err(format!("input[{i}]: {EXPECTED}"))),
            },
        };
        match inner.first() {
            Some(f) if f.is_instance_of::<PyDict>() => convs.push(conversation(&inner, &format!("input[{i}]"))?),
            _ => rows.push(ids(item, &format!("input[{i}]"))?),
        }
    }
    match (convs.is_empty(), rows.is_empty()) {
        (false, true) => Ok((Input::Conversations(convs), false)),
        (true, false) => Ok((Input::Ids(rows), false)),
        _ => Err(PyTypeError::new_err("input mixes conversations and token ids")),
    }
}

fn conversation(items: &[Bound<'_, PyAny>], what: &str) -> PyResult<Vec<ChatMessage>> {
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let d = m.downcast::<PyDict>().map_err(|_| PyTypeError::new_err(format!("{what}[{i}]: expected a {{\"role\", \"content\"}} dict")))?;
            let field = |k: &str| -> PyResult<String> {
                d.get_item(k)?
                    .ok_or_else(|| PyValueError::new_err(format!("{what}[{i}]: missing \"{k}\"")))?
                    .extract::<String>()
                    .map_err(|_| PyTypeError::new_err(format!("{what}[{i}][\"{k}\"]: expected a str")))
            };
            Ok(ChatMessage { role: field("role")?, content: field("content")? })
        })
        .collect()
}

fn ids(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u32>> {
    let v: Vec<i64> = obj.extract().map_err(|_| PyTypeError::new_err(format!("{what}: expected token ids (a list of int)")))?;
    to_u32(v, what)
}

fn to_u32(v: Vec<i64>, what: &str) -> PyResult<Vec<u32>> {
    if v.is_empty() {
        return Err(PyValueError::new_err(format!("{what}: no tokens")));
    }
    v.into_iter()
        .enumerate()
        .map(|(i, id)| u32::try_from(id).map_err(|_| PyValueError::new_err(format!("{what}: token id {id} at position {i} is not a token id"))))
        .collect()
}

fn ids_of_tensor(obj: &Bound<'_, PyAny>) -> PyResult<(Input, bool)> {
    let t = tensor::from_py(obj, "input")?;
    if t.is_floating_point() || t.kind() == Kind::Bool {
        return Err(PyTypeError::new_err(format!("input: token ids must be an integer tensor, got {:?}", t.kind())));
    }
    let dims = t.size();
    let (rows, single) = match dims.as_slice() {
        [_] => (vec![t.shallow_clone()], true),
        [b, _] => ((0..*b).map(|i| t.get(i)).collect(), false),
        _ => return Err(PyValueError::new_err(format!("input: token ids must be [pos] or [batch, pos], got {dims:?}"))),
    };
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let v: Vec<i64> = Vec::try_from(r.to_device(Device::Cpu).to_kind(Kind::Int64).contiguous()).map_err(crate::error::emo)?;
            to_u32(v, &format!("input[{i}]"))
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((Input::Ids(rows), single))
}
