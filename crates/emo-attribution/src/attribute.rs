//! One resumable pass over a section-5 run's elicitation samples (the elicitation prompt, last prompt token,
//! no generation) that reduces, batch by batch, everything section 6 ranks by: neuron contributions, head
//! importances and the sums behind delta_mu. The results go to `RUN/attribution/{accepted|all}/`: full
//! tensors as safetensors, the authors' CSVs per emotion, and `summary.json`.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use emo_data::Emotion;
use emo_model::{Capture, HookPoint, HookSet, LogitsFor, Model, Positions};
use emo_run::store::{read_tensors_exact, sha256_file, write_json, write_tensors_exact};
use emo_run::{run_stage, DatasetInfo, GroupedSums, ReduceStage, Reduction, Result, RunDir, RunError, StageStats, ELICIT};
use emo_steer::EmotionDirections;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::delta_mu::{centre, DeltaMu};
use crate::heads::{self, HeadStats};
use crate::neurons::{self, NeuronStats};
use crate::samples::{select, Sample, SampleFilter};

/// The stage's name in the manifest: `attribution-accepted` or `attribution-all`.
pub fn stage_name(samples: SampleFilter) -> String {
    format!("attribution-{samples}")
}

/// How to run the attribution pass.
#[derive(Clone, Debug)]
pub struct AttributeOptions {
    /// Which samples (the paper: accepted ones).
    pub samples: SampleFilter,
    /// Prompts per forward pass and per committed batch.
    pub batch_size: usize,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for AttributeOptions {
    fn default() -> Self {
        AttributeOptions { samples: SampleFilter::Accepted, batch_size: 32, progress: true }
    }
}

/// What determines the attribution's output; a resumed pass must match it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributionSettings {
    /// Which samples.
    pub samples: SampleFilter,
    /// How many.
    pub n_samples: usize,
    /// Prompts per batch (padding depends on it).
    pub batch_size: usize,
    /// sha256 of the run's `directions.safetensors`.
    pub directions_sha256: String,
    /// The elicitation's scenarios.
    pub dataset: DatasetInfo,
}

/// Section 6's local components of one run.
#[derive(Debug)]
pub struct Attribution {
    /// Which samples were used.
    pub samples: SampleFilter,
    /// Neuron contributions.
    pub neurons: NeuronStats,
    /// Head importances.
    pub heads: HeadStats,
    /// Emotion difference vectors.
    pub delta_mu: DeltaMu,
}

/// `summary.json` beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributionSummary {
    /// Which samples were used.
    pub samples: SampleFilter,
    /// Samples per emotion, in [`Emotion::ALL`] order.
    pub samples_per_emotion: [u64; 6],
    /// Complete (scenario, valence) groups behind delta_mu.
    pub delta_mu_groups: u64,
}

/// Runs (or resumes) the attribution pass over `run`'s elicitation samples and writes [`Attribution::dir`].
pub fn attribute(run: &RunDir, model: &Model, opts: &AttributeOptions) -> Result<Attribution> {
    let Inputs { samples, prompts, dirs, settings } = inputs(run, model, opts.samples, opts.batch_size)?;
    let cfg = model.transformer.config();
    let beta = neurons::alignment(&model.transformer, &dirs.resid_post)?;
    let readout = heads::readout(&model.transformer, &dirs.resid_mid)?;
    let (l, dm, nh, hd) = (cfg.n_layers as i64, cfg.d_mlp as i64, cfg.n_heads as i64, cfg.d_head as i64);
    let sums = |name: &str, shape: &[i64], squares: bool| (name.to_string(), GroupedSums::new(6, shape, squares));
    let state = Reduction::new([
        sums("c", &[l, dm], false),
        sums("c_pos", &[l, dm], false),
        sums("c_neg", &[l, dm], false),
        sums("act", &[l, dm], false),
        sums("head", &[l, nh], true),
        sums("baseline", &[l], false),
        sums("dmu_attn", &[l, nh * hd], false),
        sums("dmu_mlp", &[l, dm], false),
    ]);
    let ctx = Pass { model, samples: &samples, prompts: &prompts, beta: &beta, readout: &readout, v_attn: &dirs.resid_mid };
    let mut stage = ReduceStage {
        settings,
        items: samples.len(),
        batch_items: opts.batch_size,
        state,
        reduce: |items: Range<usize>, state: &mut Reduction, _: &mut StageStats| ctx.reduce(items, state),
    };
    let name = stage_name(opts.samples);
    run_stage(run, &name, &mut stage, opts.progress)?;
    let reduced = ReduceStage::<(), ()>::load(run, &name)?;
    let attribution = Attribution::from_reduction(opts.samples, &reduced, beta)?;
    attribution.save(run)?;
    Ok(attribution)
}

/// What a pass over a run's elicitation samples reads: the samples, their prompts as the elicitation ran
/// them (so the activations are the ones the directions came from), the directions, and the settings that
/// identify the pass.
pub(crate) struct Inputs {
    pub samples: Vec<Sample>,
    pub prompts: Vec<Vec<u32>>,
    pub dirs: EmotionDirections,
    pub settings: AttributionSettings,
}

/// Checks `run` against `model` and gathers the [`Inputs`] of a pass over the `filter` samples.
pub(crate) fn inputs(run: &RunDir, model: &Model, filter: SampleFilter, batch_size: usize) -> Result<Inputs> {
    if batch_size == 0 {
        return Err(RunError::Invalid("batch size must be at least 1".into()));
    }
    let manifest = run.require_manifest()?;
    let info = manifest.complete_elicitation(&run.path)?;
    let dataset = info.dataset(ELICIT)?;
    let cfg = model.transformer.config();
    if (cfg.n_layers, cfg.d_model) != (manifest.model.n_layers, manifest.model.d_model) {
        return Err(RunError::Invalid(format!(
            "{}: the run's model has {} layers of width {}, this one {} of {}",
            run.path.display(),
            manifest.model.n_layers,
            manifest.model.d_model,
            cfg.n_layers,
            cfg.d_model
        )));
    }
    let samples = select(&run.read_replies(ELICIT)?, filter)?;
    if samples.is_empty() {
        return Err(RunError::Invalid(format!("{}: no elicitation reply was judged a match; use all samples (`--samples all`)", run.path.display())));
    }
    let scenarios = dataset.scenarios()?;
    let dir_path = run.directions();
    let dirs = EmotionDirections::load(&dir_path).map_err(|e| RunError::Invalid(format!("{e} (run `emo directions` first)")))?;
    if dirs.dims() != (cfg.n_layers, cfg.d_model) {
        return Err(RunError::Format {
            path: dir_path,
            msg: format!("directions are {:?}, the model is ({}, {})", dirs.dims(), cfg.n_layers, cfg.d_model),
        });
    }
    let settings = AttributionSettings { samples: filter, n_samples: samples.len(), batch_size, directions_sha256: sha256_file(&dir_path)?, dataset };
    let prompt_set = manifest.prompt_set();
    let prompts = samples
        .iter()
        .map(|s| {
            let scenario = scenarios
                .get(s.scenario)
                .ok_or_else(|| RunError::Invalid(format!("sample {} names scenario {}, beyond the split", s.index, s.scenario)))?;
            Ok(model.encode_chat(&prompt_set.elicitation_prompt(s.emotion, scenario, s.valence))?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Inputs { samples, prompts, dirs, settings })
}

/// What every batch of the pass reads.
struct Pass<'a> {
    model: &'a Model,
    samples: &'a [Sample],
    prompts: &'a [Vec<u32>],
    beta: &'a Tensor,
    readout: &'a Tensor,
    v_attn: &'a Tensor,
}

impl Pass<'_> {
    fn reduce(&self, items: Range<usize>, state: &mut Reduction) -> Result<()> {
        let t = &self.model.transformer;
        let n_layers = t.config().n_layers;
        let n = items.len();
        let samples = &self.samples[items.clone()];
        let points: Vec<HookPoint> = (0..n_layers).flat_map(|l| [HookPoint::MlpPost(l), HookPoint::AttnZ(l), HookPoint::ResidMid(l)]).collect();
        let mut cap = Capture::new(points, Positions::LastPrompt);
        let _ = t.forward_rows(&self.prompts[items], self.model.pad_token_id(), &mut HookSet::new().with(&mut cap), LogitsFor::Skip)?;
        let stack = |f: fn(usize) -> HookPoint| -> Result<Tensor> {
            let per_layer = (0..n_layers).map(|l| cap.per_row(f(l), n)).collect::<emo_model::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&per_layer, 1).to_device(tch::Device::Cpu).to_kind(Kind::Float))
        };
        let a = stack(HookPoint::MlpPost)?; // [n, L, d_mlp]
        let z = stack(HookPoint::AttnZ)?; // [n, L, H, d_head]
        let resid_mid = stack(HookPoint::ResidMid)?; // [n, L, d_model]
        let keys: Vec<usize> = samples.iter().map(|s| s.emotion.index()).collect();
        let e = Tensor::from_slice(&keys.iter().map(|&k| k as i64).collect::<Vec<_>>());
        let c = &a * self.beta.index_select(0, &e);
        state.get_mut("c")?.add(&keys, &c)?;
        state.get_mut("c_pos")?.add(&keys, &c.clamp_min(0.0))?;
        state.get_mut("c_neg")?.add(&keys, &c.clamp_max(0.0))?;
        state.get_mut("act")?.add(&keys, &a)?;
        state.get_mut("head")?.add(&keys, &heads::importance(&z, &self.readout.index_select(0, &e)))?;
        let baseline = (&resid_mid * self.v_attn.index_select(0, &e)).sum_dim_intlist(-1, false, Kind::Double);
        state.get_mut("baseline")?.add(&keys, &baseline)?;
        let complete: Vec<usize> = (0..n).filter(|&i| samples[i].complete_group).collect();
        if !complete.is_empty() {
            let rows = Tensor::from_slice(&complete.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let ck: Vec<usize> = complete.iter().map(|&i| keys[i]).collect();
            state.get_mut("dmu_attn")?.add(&ck, &z.flatten(2, 3).index_select(0, &rows))?;
            state.get_mut("dmu_mlp")?.add(&ck, &a.index_select(0, &rows))?;
        }
        Ok(())
    }
}

impl Attribution {
    fn from_reduction(samples: SampleFilter, r: &Reduction, beta: Tensor) -> Result<Attribution> {
        let counts = |name: &str| -> Result<[u64; 6]> {
            let s = r.get(name)?;
            Ok(std::array::from_fn(|k| s.count(k)))
        };
        let head = r.get("head")?;
        let std = Tensor::stack(
            &(0..6).map(|k| head.std(k).unwrap_or_else(|| Tensor::zeros(head.shape(), (Kind::Double, tch::Device::Cpu)))).collect::<Vec<_>>(),
            0,
        );
        Ok(Attribution {
            samples,
            neurons: NeuronStats {
                c_mean: r.get("c")?.means(),
                c_pos: r.get("c_pos")?.means(),
                c_neg: r.get("c_neg")?.means(),
                beta: beta.to_kind(Kind::Double),
                h_mean: r.get("act")?.means(),
                samples: counts("c")?,
            },
            heads: HeadStats { mean: head.means(), std, samples: counts("head")?, baseline_mean: r.get("baseline")?.means() },
            delta_mu: DeltaMu {
                attn: centre(&r.get("dmu_attn")?.means()),
                mlp: centre(&r.get("dmu_mlp")?.means()),
                groups: counts("dmu_attn")?.into_iter().min().unwrap_or(0),
            },
        })
    }

    /// `RUN/attribution/{accepted|all}/`.
    pub fn dir(run: &RunDir, samples: SampleFilter) -> PathBuf {
        run.path.join("attribution").join(samples.to_string())
    }

    /// Writes `neurons.safetensors`, `heads.safetensors`, `delta_mu.safetensors`, `neurons/{emotion}.csv`,
    /// `heads/{emotion}.csv` and `summary.json` into [`Attribution::dir`].
    pub fn save(&self, run: &RunDir) -> Result<()> {
        let dir = Self::dir(run, self.samples);
        let meta = BTreeMap::from([("samples".to_string(), self.samples.to_string())]);
        let n = &self.neurons;
        let named = |pairs: &[(&str, &Tensor)]| pairs.iter().map(|(k, t)| (k.to_string(), t.shallow_clone())).collect::<Vec<_>>();
        write_tensors_exact(
            &dir.join("neurons.safetensors"),
            &named(&[("C_mean", &n.c_mean), ("C_pos", &n.c_pos), ("C_neg", &n.c_neg), ("beta", &n.beta), ("H_mean", &n.h_mean)]),
            &meta,
        )?;
        let h = &self.heads;
        write_tensors_exact(
            &dir.join("heads.safetensors"),
            &named(&[("mean_importance", &h.mean), ("std_importance", &h.std), ("baseline_mean", &h.baseline_mean)]),
            &meta,
        )?;
        let d = &self.delta_mu;
        write_tensors_exact(&dir.join("delta_mu.safetensors"), &named(&[("attn", &d.attn), ("mlp", &d.mlp)]), &meta)?;
        for e in Emotion::ALL {
            n.write_csv(e, &dir.join("neurons").join(format!("{}.csv", e.name())))?;
            h.write_csv(e, &dir.join("heads").join(format!("{}.csv", e.name())))?;
        }
        let summary = AttributionSummary { samples: self.samples, samples_per_emotion: n.samples, delta_mu_groups: d.groups };
        write_json(&dir.join("summary.json"), &summary)
    }

    /// Reads what [`Attribution::save`] wrote for `samples`.
    pub fn load(run: &RunDir, samples: SampleFilter) -> Result<Attribution> {
        let dir = Self::dir(run, samples);
        let summary: AttributionSummary = emo_run::store::read_json(&dir.join("summary.json"))?;
        let file = |name: &str| {
            let path = dir.join(name);
            read_tensors_exact(&path).map(|f| (path, f))
        };
        let (np, mut nf) = file("neurons.safetensors")?;
        let (hp, mut hf) = file("heads.safetensors")?;
        let (dp, mut df) = file("delta_mu.safetensors")?;
        let samples = summary.samples_per_emotion;
        Ok(Attribution {
            samples: summary.samples,
            neurons: NeuronStats {
                c_mean: nf.take(&np, "C_mean", None)?,
                c_pos: nf.take(&np, "C_pos", None)?,
                c_neg: nf.take(&np, "C_neg", None)?,
                beta: nf.take(&np, "beta", None)?,
                h_mean: nf.take(&np, "H_mean", None)?,
                samples,
            },
            heads: HeadStats {
                mean: hf.take(&hp, "mean_importance", None)?,
                std: hf.take(&hp, "std_importance", None)?,
                samples,
                baseline_mean: hf.take(&hp, "baseline_mean", None)?,
            },
            delta_mu: DeltaMu { attn: df.take(&dp, "attn", None)?, mlp: df.take(&dp, "mlp", None)?, groups: summary.delta_mu_groups },
        })
    }
}
