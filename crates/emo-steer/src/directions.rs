//! Unit emotion directions per residual site, emotion and layer, as the paper's section 5 extracts them
//! (see `emo-directions`), and their safetensors file.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use emo_data::Emotion;
use emo_model::HookPoint;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::tensor_file::{read_tensors, write_tensors};

/// One of the two residual sites the paper reads in every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// After the attention output is added (`blocks.L.hook_resid_mid`, the paper's attention site).
    ResidMid,
    /// After the MLP output is added (`blocks.L.hook_resid_post`, the paper's MLP site).
    ResidPost,
}

impl Site {
    /// Both sites, attention first (the paper's sublayer order Attn0, MLP0, Attn1, ...).
    pub const ALL: [Site; 2] = [Site::ResidMid, Site::ResidPost];

    /// The TransformerLens-style name without the `hook_` prefix, as used in file and tensor names.
    pub fn name(self) -> &'static str {
        match self {
            Site::ResidMid => "resid_mid",
            Site::ResidPost => "resid_post",
        }
    }

    /// The hook point of this site in `layer`.
    pub fn hook_point(self, layer: usize) -> HookPoint {
        match self {
            Site::ResidMid => HookPoint::ResidMid(layer),
            Site::ResidPost => HookPoint::ResidPost(layer),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Site {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resid_mid" | "attn" => Ok(Site::ResidMid),
            "resid_post" | "mlp" => Ok(Site::ResidPost),
            _ => Err(Error::Invalid(format!("unknown site `{s}` (expected resid_mid or resid_post)"))),
        }
    }
}

/// The file name of a run folder's directions (what `emo directions` writes into the run).
pub const DIRECTIONS_FILE: &str = "directions.safetensors";

/// Unit emotion directions per site, emotion and layer.
pub struct EmotionDirections {
    /// `[6, n_layers, d_model]` at `hook_resid_mid`, emotions in [`Emotion::ALL`] order.
    pub resid_mid: Tensor,
    /// `[6, n_layers, d_model]` at `hook_resid_post`.
    pub resid_post: Tensor,
}

/// A clone shares the tensors' storage: nothing in this crate edits directions in place.
impl Clone for EmotionDirections {
    fn clone(&self) -> Self {
        EmotionDirections { resid_mid: self.resid_mid.shallow_clone(), resid_post: self.resid_post.shallow_clone() }
    }
}

impl EmotionDirections {
    /// The directions of one site, `[6, n_layers, d_model]`.
    pub fn site(&self, site: Site) -> &Tensor {
        match site {
            Site::ResidMid => &self.resid_mid,
            Site::ResidPost => &self.resid_post,
        }
    }

    /// The direction of `emotion` at `site`, `[n_layers, d_model]`.
    pub fn get(&self, site: Site, emotion: Emotion) -> Tensor {
        self.site(site).get(emotion.index() as i64)
    }

    /// The directions of one site as an `ndarray` array of f32, `[6, n_layers, d_model]` (emotions in
    /// [`Emotion::ALL`] order), for work outside LibTorch.
    pub fn to_ndarray(&self, site: Site) -> Result<emo_model::ndarray::ArrayD<f32>> {
        Ok(emo_model::hooks::cache::to_ndarray(self.site(site))?)
    }

    /// `(n_layers, d_model)`.
    pub fn dims(&self) -> (usize, usize) {
        let s = self.resid_post.size();
        (s[1] as usize, s[2] as usize)
    }

    /// Every direction by its file name `{site}.{emotion}` (e.g. `resid_post.anger`), each `[n_layers, d_model]`.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        Site::ALL.iter().flat_map(|&s| Emotion::ALL.iter().map(move |&e| (format!("{}.{}", s.name(), e.name()), self.get(s, e)))).collect()
    }

    /// Saves as safetensors: tensors `resid_mid.{emotion}` and `resid_post.{emotion}`, each `[n_layers, d_model]`.
    ///
    /// ```
    /// use emo_steer::EmotionDirections;
    /// use tch::{Device, Kind, Tensor};
    /// let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2, [-1].as_slice(), true);
    /// let dirs = EmotionDirections {
    ///     resid_mid: unit(Tensor::randn([6, 4, 8], (Kind::Float, Device::Cpu))),
    ///     resid_post: unit(Tensor::randn([6, 4, 8], (Kind::Float, Device::Cpu))),
    /// };
    /// let path = std::env::temp_dir().join(format!("doc-directions-{}.safetensors", std::process::id()));
    /// dirs.save(&path, &[("model".to_string(), "tiny".to_string())].into())?;
    /// let back = EmotionDirections::load(&path)?;
    /// assert_eq!(back.dims(), (4, 8));
    /// assert!(back.resid_post.equal(&dirs.resid_post));
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), emo_steer::Error>(())
    /// ```
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        write_tensors(path, &self.named(), metadata)
    }

    /// Loads directions saved by [`EmotionDirections::save`] (or written by another tool with the same names).
    ///
    /// ```no_run
    /// use emo_data::Emotion;
    /// use emo_steer::{EmotionDirections, Site};
    /// let dirs = EmotionDirections::load("runs/smollm2/directions.safetensors".as_ref())?;
    /// let (n_layers, d_model) = dirs.dims();
    /// let anger = dirs.get(Site::ResidPost, Emotion::Anger); // [n_layers, d_model], unit rows
    /// assert_eq!(anger.size(), [n_layers as i64, d_model as i64]);
    /// # Ok::<(), emo_steer::Error>(())
    /// ```
    pub fn load(path: &Path) -> Result<EmotionDirections> {
        let mut file = read_tensors(path)?;
        let first = file.take(path, "resid_post.anger", None)?;
        let shape = first.size();
        if shape.len() != 2 {
            return Err(Error::Format {
                path: path.into(),
                msg: format!("tensor `resid_post.anger` has shape {shape:?}, expected [n_layers, d_model]"),
            });
        }
        file.tensors.insert("resid_post.anger".into(), first);
        let mut sites = Vec::new();
        for site in Site::ALL {
            let rows =
                Emotion::ALL.iter().map(|e| file.take(path, &format!("{}.{}", site.name(), e.name()), Some(&shape))).collect::<Result<Vec<_>>>()?;
            sites.push(Tensor::stack(&rows, 0));
        }
        let resid_post = sites.pop().expect("two sites");
        let resid_mid = sites.pop().expect("two sites");
        Ok(EmotionDirections { resid_mid, resid_post })
    }
}
