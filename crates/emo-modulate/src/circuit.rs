//! Emotion circuits: per emotion, the neurons and heads of every layer that modulation stimulates, and the
//! delta_mu vectors it adds there. Files in the authors' layout (one JSON per emotion) beside the delta_mu
//! tensors; the authors' own delta_mu arrays (`.npy` per layer, `.npz`) import too, so that their published
//! circuits run here on their model.
use std::path::{Path, PathBuf};

use emo_data::Emotion;
use emo_model::TransformerConfig;
use emo_steer::json_file::{read_json, write_json};
use emo_steer::npy::{read_npy, read_npz};
use emo_steer::tensor_file::{read_tensors_exact, write_tensors_exact};
use emo_steer::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What a circuit set needs of the model: its depth, heads per layer and MLP width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Layers.
    pub n_layers: usize,
    /// Attention heads per layer.
    pub n_heads: usize,
    /// MLP neurons per layer.
    pub d_mlp: usize,
}

impl Shape {
    /// The shape of a model of configuration `cfg`.
    pub fn of(cfg: &TransformerConfig) -> Shape {
        Shape { n_layers: cfg.n_layers, n_heads: cfg.n_heads, d_mlp: cfg.d_mlp }
    }
}

/// A count per kind, as the authors' JSON spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerKind {
    /// Neurons.
    pub mlp: usize,
    /// Heads.
    pub attn: usize,
}

/// The neurons of one layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerNeurons {
    /// How many.
    pub k: usize,
    /// Which (`mlp.hook_post` indices), in rank order.
    pub neurons: Vec<usize>,
}

/// The heads of one layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerHeads {
    /// How many.
    pub k: usize,
    /// Which, in rank order.
    pub heads: Vec<usize>,
}

/// One layer of a circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitLayer {
    /// The layer.
    pub layer: usize,
    /// Its neurons.
    pub mlp: LayerNeurons,
    /// Its heads.
    pub attention: LayerHeads,
}

/// One emotion's circuit, in the authors' JSON layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    /// The emotion.
    pub emotion: Emotion,
    /// Units in all.
    #[serde(rename = "K_total")]
    pub k_total: usize,
    /// `fixed`: the neuron share is `ratio_fixed`.
    pub ratio_mode: String,
    /// The neuron share.
    pub ratio_fixed: f64,
    /// Units per kind.
    #[serde(rename = "K_alloc")]
    pub k_alloc: PerKind,
    /// Minimum units per layer.
    pub min_per_layer: PerKind,
    /// Cap on a layer's part above the minimum, as a share of its kind.
    pub cap_ratio: f64,
    /// Free-form totals (written: neurons, heads, layers).
    #[serde(default)]
    pub summary: serde_json::Value,
    /// Every layer.
    pub layers: Vec<CircuitLayer>,
}

impl Circuit {
    /// Every (layer, neuron) of the circuit.
    pub fn neuron_set(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.layers.iter().flat_map(|l| l.mlp.neurons.iter().map(move |&n| (l.layer, n))).collect();
        v.sort_unstable();
        v
    }

    /// Every (layer, head) of the circuit.
    pub fn head_set(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.layers.iter().flat_map(|l| l.attention.heads.iter().map(move |&h| (l.layer, h))).collect();
        v.sort_unstable();
        v
    }

    /// Checks the circuit against a model's shape: layers in range and not repeated, k equal to the number
    /// of units listed, units in range and distinct. `source` names the file in the error.
    pub fn check(&self, shape: Shape, source: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Format { path: source.to_path_buf(), msg });
        let mut seen = vec![false; shape.n_layers];
        for l in &self.layers {
            if l.layer >= shape.n_layers || std::mem::replace(&mut seen[l.layer], true) {
                return bad(format!("layer {} is out of range 0..{} or listed twice", l.layer, shape.n_layers));
            }
            for (what, k, units, n) in
                [("neurons", l.mlp.k, &l.mlp.neurons, shape.d_mlp), ("heads", l.attention.k, &l.attention.heads, shape.n_heads)]
            {
                if k != units.len() {
                    return bad(format!("layer {}: k = {k} but {} {what} are listed", l.layer, units.len()));
                }
                let mut sorted = units.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != units.len() {
                    return bad(format!("layer {}: a {} is listed twice", l.layer, &what[..what.len() - 1]));
                }
                if let Some(u) = units.iter().find(|&&u| u >= n) {
                    return bad(format!("layer {}: {} {u} is out of range 0..{n}", l.layer, &what[..what.len() - 1]));
                }
            }
        }
        Ok(())
    }
}

/// The circuits of the emotions a folder holds, with the delta_mu vectors modulation adds.
#[derive(Debug)]
pub struct CircuitSet {
    /// One circuit per emotion present, in `Emotion::ALL` order.
    pub circuits: Vec<Circuit>,
    /// delta_mu at `o_proj`'s input, `[6, n_layers, n_heads * d_head]` f32 (zero rows for absent emotions).
    pub delta_mu_attn: Tensor,
    /// delta_mu at `down_proj`'s input, `[6, n_layers, d_mlp]` f32.
    pub delta_mu_mlp: Tensor,
    /// Heads per layer of the model the set is for (the attention width is n_heads x d_head).
    pub n_heads: usize,
}

/// A clone shares the delta_mu tensors' storage: nothing edits them in place.
impl Clone for CircuitSet {
    fn clone(&self) -> Self {
        CircuitSet {
            circuits: self.circuits.clone(),
            delta_mu_attn: self.delta_mu_attn.shallow_clone(),
            delta_mu_mlp: self.delta_mu_mlp.shallow_clone(),
            n_heads: self.n_heads,
        }
    }
}

/// The file of one emotion's circuit in a circuits folder.
pub fn circuit_file(dir: &Path, emotion: Emotion) -> PathBuf {
    dir.join(format!("{}.json", emotion.name()))
}

/// The delta_mu tensors of a circuits folder (`attn`, `mlp`).
pub fn delta_mu_file(dir: &Path) -> PathBuf {
    dir.join("delta_mu.safetensors")
}

impl CircuitSet {
    /// The circuit of `emotion`.
    pub fn get(&self, emotion: Emotion) -> Result<&Circuit> {
        self.circuits
            .iter()
            .find(|c| c.emotion == emotion)
            .ok_or_else(|| Error::Invalid(format!("no circuit for {emotion} (the set holds {})", self.names())))
    }

    fn names(&self) -> String {
        self.circuits.iter().map(|c| c.emotion.name()).collect::<Vec<_>>().join(", ")
    }

    /// The model shape the delta_mu tensors are for: (n_layers, attention width, d_mlp).
    pub fn dims(&self) -> (usize, usize, usize) {
        let (a, m) = (self.delta_mu_attn.size(), self.delta_mu_mlp.size());
        (a[1] as usize, a[2] as usize, m[2] as usize)
    }

    /// Checks that the delta_mu tensors are for a model of configuration `cfg` (depth, attention width, MLP
    /// width).
    pub fn check_fits(&self, cfg: &TransformerConfig) -> Result<()> {
        let (l, d_attn, d_mlp) = self.dims();
        if (l, d_attn, d_mlp) != (cfg.n_layers, cfg.n_heads * cfg.d_head, cfg.d_mlp) {
            return Err(Error::Invalid(format!(
                "the circuits' delta_mu are for {l} layers, attention width {d_attn}, {d_mlp} neurons; the model has {}, {}, {}",
                cfg.n_layers,
                cfg.n_heads * cfg.d_head,
                cfg.d_mlp
            )));
        }
        Ok(())
    }

    /// [`CircuitSet::load`] for a model of configuration `cfg`.
    pub fn load_for(dir: &Path, cfg: &TransformerConfig) -> Result<CircuitSet> {
        CircuitSet::load(dir, Shape::of(cfg), cfg.n_heads * cfg.d_head)
    }

    /// Writes `{emotion}.json` per circuit and `delta_mu.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for c in &self.circuits {
            write_json(&circuit_file(dir, c.emotion), c)?;
        }
        let tensors = [("attn".to_string(), self.delta_mu_attn.shallow_clone()), ("mlp".to_string(), self.delta_mu_mlp.shallow_clone())];
        write_tensors_exact(&delta_mu_file(dir), &tensors, &Default::default())
    }

    /// Reads a folder [`CircuitSet::save`] wrote, or one in the authors' layout (see [`CircuitSet::import`]),
    /// checked against `shape` (`d_attn` = n_heads x d_head).
    pub fn load(dir: &Path, shape: Shape, d_attn: usize) -> Result<CircuitSet> {
        let circuits = read_circuits(dir, Some(shape))?;
        let set = if delta_mu_file(dir).exists() {
            let path = delta_mu_file(dir);
            let mut f = read_tensors_exact(&path)?;
            let l = shape.n_layers as i64;
            CircuitSet {
                circuits,
                delta_mu_attn: f.take(&path, "attn", Some(&[6, l, d_attn as i64]))?.to_kind(Kind::Float),
                delta_mu_mlp: f.take(&path, "mlp", Some(&[6, l, shape.d_mlp as i64]))?.to_kind(Kind::Float),
                n_heads: shape.n_heads,
            }
        } else {
            let (attn, mlp) = import_delta_mu(dir, &circuits, shape, d_attn)?;
            CircuitSet { circuits, delta_mu_attn: attn, delta_mu_mlp: mlp, n_heads: shape.n_heads }
        };
        Ok(set)
    }

    /// Same as [`CircuitSet::load`]: named for the authors' layout, which it also reads — circuit JSONs
    /// `{emotion}.json` (or any `*.json` whose `emotion` field names one), attention delta_mu
    /// `emo_diff/{emotion}/L{layer}.npy` (n_heads x d_head long) and MLP delta_mu either in an `.npz` in the
    /// folder with keys `{emotion}/diff/L{layer}` or as `mlp_diff/{emotion}/L{layer}.npy` (d_mlp long).
    pub fn import(dir: &Path, shape: Shape, d_attn: usize) -> Result<CircuitSet> {
        Self::load(dir, shape, d_attn)
    }
}

/// The circuits of a folder (`{emotion}.json`, or any `*.json` with an emotion and layers), in `Emotion::ALL`
/// order, each checked against `shape` when one is given.
pub fn read_circuits(dir: &Path, shape: Option<Shape>) -> Result<Vec<Circuit>> {
    let entries = std::fs::read_dir(dir).map_err(emo_steer::error::io(dir))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    let mut found: Vec<Option<(PathBuf, Circuit)>> = vec![None; 6];
    for path in files {
        // Other JSON files (summaries) may sit beside the circuits: only objects with an emotion and layers
        // are circuits, and a file that has both must parse.
        let value: serde_json::Value = read_json(&path)?;
        if value.get("emotion").is_none() || value.get("layers").is_none() {
            continue;
        }
        let c: Circuit = serde_json::from_value(value).map_err(|e| Error::Format { path: path.clone(), msg: format!("not a circuit: {e}") })?;
        if let Some(shape) = shape {
            c.check(shape, &path)?;
        }
        if let Some((first, _)) = &found[c.emotion.index()] {
            return Err(Error::Invalid(format!("two circuits for {}: {} and {}", c.emotion, first.display(), path.display())));
        }
        let i = c.emotion.index();
        found[i] = Some((path, c));
    }
    let circuits: Vec<Circuit> = found.into_iter().flatten().map(|(_, c)| c).collect();
    if circuits.is_empty() {
        return Err(Error::Invalid(format!("{}: no circuit files (`{{emotion}}.json`)", dir.display())));
    }
    Ok(circuits)
}

/// The authors' delta_mu arrays for the emotions of `circuits`, as `[6, L, d]` tensors.
fn import_delta_mu(dir: &Path, circuits: &[Circuit], shape: Shape, d_attn: usize) -> Result<(Tensor, Tensor)> {
    let l = shape.n_layers;
    let attn = Tensor::zeros([6, l as i64, d_attn as i64], (Kind::Float, tch::Device::Cpu));
    let mlp = Tensor::zeros([6, l as i64, shape.d_mlp as i64], (Kind::Float, tch::Device::Cpu));
    let npz: Option<(PathBuf, Vec<(String, Tensor)>)> = {
        let mut found = None;
        for e in std::fs::read_dir(dir).map_err(emo_steer::error::io(dir))?.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "npz") {
                found = Some((p.clone(), read_npz(&p)?));
                break;
            }
        }
        found
    };
    let put = |target: &Tensor, e: Emotion, layer: usize, v: Tensor, width: usize, source: &Path| -> Result<()> {
        if v.numel() != width {
            return Err(Error::Format { path: source.to_path_buf(), msg: format!("holds {} values, expected {width}", v.numel()) });
        }
        target.get(e.index() as i64).get(layer as i64).copy_(&v.reshape([-1]).to_kind(Kind::Float));
        Ok(())
    };
    for c in circuits {
        let e = c.emotion;
        for layer in 0..l {
            let path = dir.join("emo_diff").join(e.name()).join(format!("L{layer}.npy"));
            if !path.exists() {
                return Err(Error::Invalid(format!(
                    "{}: no delta_mu.safetensors and no attention delta_mu {} (the authors' layout)",
                    dir.display(),
                    path.display()
                )));
            }
            put(&attn, e, layer, read_npy(&path)?, d_attn, &path)?;
            let key = format!("{}/diff/L{layer}", e.name());
            let from_npz = npz.as_ref().and_then(|(p, arrays)| arrays.iter().find(|(k, _)| *k == key).map(|(_, t)| (p.clone(), t.shallow_clone())));
            match from_npz {
                Some((p, t)) => put(&mlp, e, layer, t, shape.d_mlp, &p.join(&key))?,
                None => {
                    let path = dir.join("mlp_diff").join(e.name()).join(format!("L{layer}.npy"));
                    if !path.exists() {
                        return Err(Error::Invalid(format!(
                            "{}: no MLP delta_mu for {e} layer {layer} (an .npz with key `{key}` or {})",
                            dir.display(),
                            path.display()
                        )));
                    }
                    put(&mlp, e, layer, read_npy(&path)?, shape.d_mlp, &path)?;
                }
            }
        }
    }
    Ok((attn, mlp))
}
