//! Emotion directions brought in from other tools: `.safetensors`, NumPy `.npy` / `.npz`, or a folder of
//! llama.cpp control vectors — what `emo steer --directions` and `emo serve --directions` read.
use std::collections::BTreeMap;
use std::path::Path;

use emo_data::Emotion;
use tch::{Kind, Tensor};

use crate::control_vector::read_control_vector;
use crate::directions::{EmotionDirections, Site};
use crate::error::{Error, Result};
use crate::npy::{read_npy, read_npz};

/// Reads directions for an `n_layers` x `d_model` model from a `.safetensors` or `.npz` file (arrays
/// `resid_mid.{emotion}` and `resid_post.{emotion}`; a missing `resid_mid` is zero), a `.npy` array
/// `[6, n_layers, d_model]` of `resid_post` directions, or a folder of llama.cpp control vectors `{emotion}.gguf`
/// (`resid_post` only; block 0, which control vectors cannot hold, is zero).
pub fn import_directions(path: &Path, n_layers: usize, d_model: usize) -> Result<EmotionDirections> {
    let shape = [n_layers as i64, d_model as i64];
    let zeros = || Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
    let mut by_name: BTreeMap<String, Tensor> = if path.is_dir() {
        Emotion::ALL
            .iter()
            .map(|e| {
                let f = path.join(format!("{}.gguf", e.name()));
                Ok((format!("resid_post.{}", e.name()), read_control_vector(&f)?.to_tensor(n_layers)?))
            })
            .collect::<Result<_>>()?
    } else if path.extension().is_some_and(|x| x == "npz") {
        read_npz(path)?.into_iter().collect()
    } else if path.extension().is_some_and(|x| x == "npy") {
        // One array [6, n_layers, d_model] of resid_post directions, emotions in the paper's order.
        let t = read_npy(path)?;
        if t.size() != [6, n_layers as i64, d_model as i64] {
            return Err(Error::Format {
                path: path.into(),
                msg: format!("array has shape {:?}; expected [6, {n_layers}, {d_model}] (resid_post, emotions in order)", t.size()),
            });
        }
        Emotion::ALL.iter().map(|e| (format!("resid_post.{}", e.name()), t.get(e.index() as i64))).collect()
    } else {
        EmotionDirections::load(path)?.named().into_iter().collect()
    };
    let mut sites = Vec::new();
    for site in Site::ALL {
        let rows = Emotion::ALL
            .iter()
            .map(|e| {
                let name = format!("{}.{}", site.name(), e.name());
                match by_name.remove(&name) {
                    Some(t) if t.size() == shape => Ok(t.to_kind(Kind::Float)),
                    Some(t) => Err(Error::Format { path: path.into(), msg: format!("`{name}` has shape {:?}; the model needs {shape:?}", t.size()) }),
                    None if site == Site::ResidMid => Ok(zeros()),
                    None => Err(Error::Format { path: path.into(), msg: format!("no `{name}`") }),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        sites.push(Tensor::stack(&rows, 0));
    }
    let resid_post = sites.pop().expect("two sites");
    let resid_mid = sites.pop().expect("two sites");
    Ok(EmotionDirections { resid_mid, resid_post })
}
