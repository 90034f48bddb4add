//! Attribution patching (Nanda 2023; Syed, Rager and Conmy 2023): the first-order estimate of every unit's
//! zero-ablation effect, `(0 - a) · ∂s/∂a`, from one forward and one backward per batch, where s is the metric
//! section 6's sweeps measure (the sum over layers of the last-token residual after the sublayer add,
//! projected on that layer's emotion direction: `hook_resid_post` for neurons, `hook_resid_mid` for heads).
//!
//! A unit's score is `a · ∂s/∂a` at the last prompt token (a neuron's `mlp.hook_post` value; a head's
//! `attn.hook_z` slice, summed over `d_head`): the part of s the unit is estimated to carry, so that ranking
//! by it is ranking by estimated ablation drop, the convention of section 6's contributions. Unlike the
//! analytic scores (each unit's *direct* write into its own layer's projection), it includes what the unit
//! does to s through every later layer, to first order.
//!
//! [`attribution_patching`] runs it as a resumable pass over a section-5 run's samples, beside
//! [`crate::attribute`]'s, into `RUN/attribution/{samples}/patching/`.
use std::ops::Range;
use std::path::PathBuf;

use emo_data::Emotion;
use emo_model::{HookPoint, HookSet, Input, Model};
use emo_run::store::{read_json, read_tensors_exact, write_json, write_tensors_exact};
use emo_run::{run_stage, GroupedSums, ReduceStage, Reduction, Result, RunDir, StageStats};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::attribute::{inputs, Attribution, Inputs};
use crate::neurons::rank_desc;
use crate::samples::{Sample, SampleFilter};

/// Per-sample attribution-patching scores: `(neurons [n, L, d_mlp], heads [n, L, n_heads])`, f32 on the CPU,
/// for prompts whose metric reads `v_mlp` (at `hook_resid_post`) and `v_attn` (at `hook_resid_mid`), each
/// `[n, L, d_model]` (row i's emotion's direction per layer). One forward with autograd and two backward
/// passes over the batch; the model's weights must be dequantized.
pub fn scores(model: &Model, prompts: &[Vec<u32>], v_mlp: &Tensor, v_attn: &Tensor) -> Result<(Tensor, Tensor)> {
    let n_layers = model.transformer.config().n_layers;
    let keep = |p: HookPoint| matches!(p, HookPoint::MlpPost(_) | HookPoint::AttnZ(_) | HookPoint::ResidPost(_) | HookPoint::ResidMid(_));
    let (_, cache) = model.run_with_cache_grad(Input::Ids(prompts.to_vec()), keep, &mut HookSet::new())?;
    let device = model.transformer.device();
    // Rows are left-padded, so every prompt's last token is the last position. Moved to the first device:
    // a model placed across devices caches each layer on its own, and the layers are stacked here.
    let last = |p: HookPoint| -> Result<Tensor> { Ok(cache.require(p)?.select(1, -1).to_kind(Kind::Float).to_device(device)) };
    let metric = |site: fn(usize) -> HookPoint, v: &Tensor| -> Result<Tensor> {
        let h = (0..n_layers).map(|l| last(site(l))).collect::<Result<Vec<_>>>()?; // L x [n, d]
        let v = v.to_device(device).to_kind(Kind::Float);
        Ok((Tensor::stack(&h, 1) * v).sum(Kind::Float))
    };
    let g_mlp = cache.gradients_keeping_graph(&metric(HookPoint::ResidPost, v_mlp)?)?;
    let g_attn = cache.gradients(&metric(HookPoint::ResidMid, v_attn)?)?;
    let per_unit = |point: fn(usize) -> HookPoint, grads: &emo_model::ActivationCache| -> Result<Tensor> {
        let layers = (0..n_layers)
            .map(|l| {
                let a = last(point(l))?;
                let g = grads.require(point(l))?.select(1, -1).to_kind(Kind::Float).to_device(device);
                let s = (a * g).detach();
                // Heads: [n, H, d_head] summed over d_head.
                Ok(if s.dim() == 3 { s.sum_dim_intlist(-1, false, Kind::Float) } else { s })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&layers, 1).to_device(tch::Device::Cpu))
    };
    Ok((per_unit(HookPoint::MlpPost, &g_mlp)?, per_unit(HookPoint::AttnZ, &g_attn)?))
}

/// How to run the attribution-patching pass.
#[derive(Clone, Debug)]
pub struct PatchingOptions {
    /// Which samples (as the analytic attribution: accepted by default).
    pub samples: SampleFilter,
    /// Prompts per forward and backward pass (memory grows with it: the graph is kept for the backward).
    pub batch_size: usize,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for PatchingOptions {
    fn default() -> Self {
        PatchingOptions { samples: SampleFilter::Accepted, batch_size: 8, progress: true }
    }
}

/// Mean attribution-patching scores per emotion, layer and unit (f64): `neurons [6, L, d_mlp]`,
/// `heads [6, L, n_heads]`.
#[derive(Debug)]
pub struct Patching {
    /// Which samples.
    pub samples: SampleFilter,
    /// Mean neuron scores.
    pub neurons: Tensor,
    /// Mean head scores.
    pub heads: Tensor,
    /// Samples per emotion.
    pub counts: [u64; 6],
}

#[derive(Serialize, Deserialize)]
struct Summary {
    samples: SampleFilter,
    samples_per_emotion: [u64; 6],
}

impl Patching {
    /// `RUN/attribution/{samples}/patching/`.
    pub fn dir(run: &RunDir, samples: SampleFilter) -> PathBuf {
        Attribution::dir(run, samples).join("patching")
    }

    /// Neurons of `layer` ranked for `emotion` by mean score, descending.
    pub fn neuron_ranking(&self, emotion: Emotion, layer: usize) -> Vec<usize> {
        rank_desc(&self.neurons.get(emotion.index() as i64).get(layer as i64))
    }

    /// Heads of `layer` ranked for `emotion` by mean score, descending.
    pub fn head_ranking(&self, emotion: Emotion, layer: usize) -> Vec<usize> {
        rank_desc(&self.heads.get(emotion.index() as i64).get(layer as i64))
    }

    /// Writes `scores.safetensors` and `summary.json` into [`Patching::dir`].
    pub fn save(&self, run: &RunDir) -> Result<()> {
        let dir = Self::dir(run, self.samples);
        let meta = [("samples".to_string(), self.samples.to_string())].into();
        let tensors = [("neurons".to_string(), self.neurons.shallow_clone()), ("heads".to_string(), self.heads.shallow_clone())];
        write_tensors_exact(&dir.join("scores.safetensors"), &tensors, &meta)?;
        write_json(&dir.join("summary.json"), &Summary { samples: self.samples, samples_per_emotion: self.counts })
    }

    /// Reads what [`Patching::save`] wrote for `samples`.
    pub fn load(run: &RunDir, samples: SampleFilter) -> Result<Patching> {
        let dir = Self::dir(run, samples);
        let summary: Summary = read_json(&dir.join("summary.json"))?;
        let path = dir.join("scores.safetensors");
        let mut f = read_tensors_exact(&path)?;
        Ok(Patching {
            samples: summary.samples,
            neurons: f.take(&path, "neurons", None)?,
            heads: f.take(&path, "heads", None)?,
            counts: summary.samples_per_emotion,
        })
    }
}

/// The stage's name in the manifest: `patching-accepted` or `patching-all`.
pub fn stage_name(samples: SampleFilter) -> String {
    format!("patching-{samples}")
}

/// Runs (or resumes) attribution patching over `run`'s elicitation samples and writes [`Patching::dir`].
pub fn attribution_patching(run: &RunDir, model: &Model, opts: &PatchingOptions) -> Result<Patching> {
    let Inputs { samples, prompts, dirs, settings } = inputs(run, model, opts.samples, opts.batch_size)?;
    let cfg = model.transformer.config();
    let (l, dm, nh) = (cfg.n_layers as i64, cfg.d_mlp as i64, cfg.n_heads as i64);
    let state =
        Reduction::new([("neurons".to_string(), GroupedSums::new(6, &[l, dm], false)), ("heads".to_string(), GroupedSums::new(6, &[l, nh], false))]);
    let reduce = |items: Range<usize>, state: &mut Reduction, _: &mut StageStats| -> Result<()> {
        let batch: &[Sample] = &samples[items.clone()];
        let e = Tensor::from_slice(&batch.iter().map(|s| s.emotion.index() as i64).collect::<Vec<_>>());
        let (neurons, heads) = scores(model, &prompts[items], &dirs.resid_post.index_select(0, &e), &dirs.resid_mid.index_select(0, &e))?;
        let keys: Vec<usize> = batch.iter().map(|s| s.emotion.index()).collect();
        state.get_mut("neurons")?.add(&keys, &neurons)?;
        Ok(state.get_mut("heads")?.add(&keys, &heads)?)
    };
    let mut stage = ReduceStage { settings, items: samples.len(), batch_items: opts.batch_size, state, reduce };
    let name = stage_name(opts.samples);
    run_stage(run, &name, &mut stage, opts.progress)?;
    let r = ReduceStage::<(), ()>::load(run, &name)?;
    let neurons = r.get("neurons")?;
    let patching = Patching {
        samples: opts.samples,
        neurons: neurons.means(),
        heads: r.get("heads")?.means(),
        counts: std::array::from_fn(|k| neurons.count(k)),
    };
    patching.save(run)?;
    Ok(patching)
}

/// How far two rankings of the same units agree, averaged over emotions and layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Mean Spearman rank correlation of the two scores over every unit of a layer.
    pub spearman: f64,
    /// Mean share of the top `k` units of one ranking that are in the other's top `k`.
    pub top_k_overlap: f64,
    /// The k of `top_k_overlap`.
    pub k: usize,
}

/// [`Agreement`] of two `[6, L, units]` score tensors, over the emotions with samples in both.
pub fn agreement(a: &Tensor, b: &Tensor, k: usize, emotions: &[Emotion]) -> Agreement {
    let (mut rho, mut overlap, mut n) = (0.0, 0.0, 0usize);
    let layers = a.size()[1];
    for e in emotions {
        for l in 0..layers {
            let (x, y) = (a.get(e.index() as i64).get(l), b.get(e.index() as i64).get(l));
            let (rx, ry) = (rank_desc(&x), rank_desc(&y));
            rho += spearman(&rx, &ry);
            let top: std::collections::HashSet<usize> = rx[..k.min(rx.len())].iter().copied().collect();
            overlap += ry[..k.min(ry.len())].iter().filter(|u| top.contains(u)).count() as f64 / k.min(rx.len()).max(1) as f64;
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    Agreement { spearman: rho / n, top_k_overlap: overlap / n, k }
}

/// Spearman's rho of two rankings (each a permutation of the same units, best first; no ties).
fn spearman(rx: &[usize], ry: &[usize]) -> f64 {
    let n = rx.len();
    if n < 2 {
        return 1.0;
    }
    let mut pos_y = vec![0usize; n];
    for (r, &u) in ry.iter().enumerate() {
        pos_y[u] = r;
    }
    let d2: f64 = rx.iter().enumerate().map(|(r, &u)| (r as f64 - pos_y[u] as f64).powi(2)).sum();
    let n = n as f64;
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}
