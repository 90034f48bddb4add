//! Sublayer importance (paper section 7.1, spec section 8): how much nudging one sublayer's output along its
//! emotion direction moves the model's final state along the emotion's reference direction.
//!
//! - sigma[site, L]: the mean over the elicitation samples of the RMS of that site's last-token residual.
//! - v_ref[e]: the unit directions of both sites over the paper's layers 21-25 of 28 (scaled to the depth),
//!   each sign-aligned to the first, summed, L2-normalised.
//! - Neutral prompt; for each sublayer add alpha * sigma * v_local (the site's unit direction, sign-aligned to
//!   v_ref) to its output (`hook_attn_out` / `hook_mlp_out`) at the last prompt token; s = <`ln_final`'s
//!   output at the last token, v_ref>; I = (mean s_injected - mean s_base) / (alpha * sigma), then the mean
//!   over alpha.
//!
//! Every injection acts at the last prompt token, so all of them run through prefix branching (exact): one
//! resumable sweep stage per emotion.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use emo_attribution::samples::{select, SampleFilter};
use emo_data::Emotion;
use emo_directions::directions::Activations;
use emo_model::{Edit, HookPoint, Intervention, Model, Positions};
use emo_run::paper::{scaled_range, IMPORTANCE_ALPHAS, REFERENCE_DIRECTION_LAYERS};
use emo_run::store::{sha256_file, write_atomic};
use emo_run::{run_stage, DatasetInfo, Metric, PrefixCache, Result, RunDir, RunError, Sweep, SweepStage, ELICIT};
use emo_steer::tensor_file::{read_tensors_exact, write_tensors_exact};
use emo_steer::{EmotionDirections, Site};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The two sublayer kinds, in the order of every `[.., 2]` axis here: attention, then MLP.
pub const SUBLAYERS: [Sublayer; 2] = [Sublayer::Attn, Sublayer::Mlp];

/// A sublayer kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sublayer {
    /// The attention block: its output is `hook_attn_out`, its residual site `hook_resid_mid`.
    Attn,
    /// The MLP: output `hook_mlp_out`, site `hook_resid_post`.
    Mlp,
}

impl Sublayer {
    /// `attn` or `mlp`, as in the importance CSV.
    pub fn name(self) -> &'static str {
        match self {
            Sublayer::Attn => "attn",
            Sublayer::Mlp => "mlp",
        }
    }

    /// The residual site whose direction it is nudged along.
    pub fn site(self) -> Site {
        match self {
            Sublayer::Attn => Site::ResidMid,
            Sublayer::Mlp => Site::ResidPost,
        }
    }

    /// Its output, where the injection is added (before the residual add).
    pub fn output(self, layer: usize) -> HookPoint {
        match self {
            Sublayer::Attn => HookPoint::AttnOut(layer),
            Sublayer::Mlp => HookPoint::MlpOut(layer),
        }
    }
}

/// sigma `[2, n_layers]` (attention site, MLP site): the mean over samples of the RMS of the last-token
/// residual.
pub fn sigma(acts: &Activations) -> Tensor {
    // Per-sample RMS in f32 (a full split's site is 0.2 GB; in f64 it would double), then the mean in f64.
    let rms = |t: &Tensor| t.square().mean_dim(2, false, Kind::Float).sqrt().to_kind(Kind::Double).mean_dim(0, false, Kind::Double);
    Tensor::stack(&SUBLAYERS.map(|s| rms(acts.site(s.site()))), 0)
}

/// v_ref of `emotion` `[d_model]`: the unit directions of both sites over the paper's layers 21..=25 (scaled
/// to the depth), attention site first at each layer, each sign-aligned to the first, summed, normalised.
pub fn reference_direction(dirs: &EmotionDirections, emotion: Emotion) -> Tensor {
    let (n_layers, _) = dirs.dims();
    let (lo, hi) = scaled_range(REFERENCE_DIRECTION_LAYERS, n_layers);
    let parts: Vec<Tensor> = (lo..=hi.min(n_layers - 1)).flat_map(|l| SUBLAYERS.map(|s| dirs.get(s.site(), emotion).get(l as i64))).collect();
    let first = parts[0].to_kind(Kind::Double);
    let sum = parts.iter().fold(Tensor::zeros_like(&first), |acc, v| {
        let v = v.to_kind(Kind::Double);
        let sign = if f64::try_from(v.dot(&first)).unwrap_or(1.0) < 0.0 { -1.0 } else { 1.0 };
        acc + v * sign
    });
    (&sum / (sum.norm().clamp_min(1e-12))).to_kind(Kind::Float)
}

/// How to measure the importances.
#[derive(Clone, Debug)]
pub struct ImportanceOptions {
    /// Which elicitation samples give the prompts (the paper: accepted ones).
    pub samples: SampleFilter,
    /// Injection strengths (the paper: 0.1, 0.3, 0.5, 0.7).
    pub alphas: Vec<f64>,
    /// Rows per forward pass.
    pub max_rows: usize,
    /// Prompts per committed batch.
    pub batch_prompts: usize,
    /// Draw a progress bar (one over every emotion).
    pub progress: bool,
    /// Full forwards instead of prefix branching (same numbers, slower).
    pub full_forwards: bool,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        ImportanceOptions {
            samples: SampleFilter::Accepted,
            alphas: IMPORTANCE_ALPHAS.to_vec(),
            // One-token branch rows are cheap: large chunks amortise each layer's launch (611 rows/s at 256
            // in the engine's measurement).
            max_rows: 256,
            batch_prompts: 32,
            progress: true,
            full_forwards: false,
        }
    }
}

/// What determines one emotion's importance table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceSettings {
    /// The emotion.
    pub emotion: Emotion,
    /// Injection strengths.
    pub alphas: Vec<f64>,
    /// Which samples.
    pub samples: SampleFilter,
    /// Their elicitation indices.
    pub sample_indices: Vec<usize>,
    /// The SEV scenarios.
    pub dataset: DatasetInfo,
    /// sha256 of the directions.
    pub directions_sha256: String,
    /// sigma, `[site][layer]`.
    pub sigma: Vec<Vec<f64>>,
    /// Prompts per committed batch.
    pub batch_prompts: usize,
}

/// One emotion's alpha-mean importance per layer, as the allocation reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The emotion.
    pub emotion: Emotion,
    /// Attention sublayers, per layer.
    pub attn: Vec<f64>,
    /// MLP sublayers, per layer.
    pub mlp: Vec<f64>,
}

/// Every emotion's sublayer importances.
#[derive(Debug)]
pub struct SublayerImportance {
    /// Which samples gave the prompts.
    pub samples: SampleFilter,
    /// Injection strengths.
    pub alphas: Vec<f64>,
    /// I per alpha: `[6, alphas, n_layers, 2]` f64 (attention, MLP).
    pub per_alpha: Tensor,
    /// sigma `[2, n_layers]` f64.
    pub sigma: Tensor,
    /// Prompts per emotion.
    pub prompts: [usize; 6],
}

/// The header of the importance CSV (then one `I_alpha_{alpha}` column per alpha).
pub const CSV_HEADER: &str = "emotion,layer,kind,importance";

impl SublayerImportance {
    /// The alpha-mean importance `[6, n_layers, 2]`.
    pub fn mean(&self) -> Tensor {
        self.per_alpha.mean_dim(1, false, Kind::Double)
    }

    /// Every emotion's profile.
    pub fn profiles(&self) -> Result<Vec<Profile>> {
        let m = self.mean();
        Emotion::ALL
            .into_iter()
            .map(|e| {
                let per = m.get(e.index() as i64);
                Ok(Profile { emotion: e, attn: Vec::<f64>::try_from(per.select(1, 0))?, mlp: Vec::<f64>::try_from(per.select(1, 1))? })
            })
            .collect()
    }

    /// `RUN/importance/{samples}/`.
    pub fn dir(run: &RunDir, samples: SampleFilter) -> PathBuf {
        run.path.join("importance").join(samples.to_string())
    }

    /// The CSV text: `emotion,layer,kind,importance,I_alpha_0.1,...`.
    pub fn csv(&self) -> Result<String> {
        let mut out = String::from(CSV_HEADER);
        for a in &self.alphas {
            let _ = write!(out, ",I_alpha_{a}");
        }
        out.push('\n');
        let mean = self.mean();
        let n_layers = mean.size()[1];
        for e in Emotion::ALL {
            for l in 0..n_layers {
                for (s, kind) in SUBLAYERS.iter().enumerate() {
                    let _ = write!(out, "{},{l},{},{}", e.name(), kind.name(), f64::try_from(mean.get(e.index() as i64).get(l).get(s as i64))?);
                    for a in 0..self.alphas.len() as i64 {
                        let v = f64::try_from(self.per_alpha.get(e.index() as i64).get(a).get(l).get(s as i64))?;
                        let _ = write!(out, ",{v}");
                    }
                    out.push('\n');
                }
            }
        }
        Ok(out)
    }

    /// Writes `importance.csv` and `importance.safetensors` into [`SublayerImportance::dir`].
    pub fn save(&self, run: &RunDir) -> Result<()> {
        let dir = Self::dir(run, self.samples);
        write_atomic(&dir.join("importance.csv"), self.csv()?.as_bytes())?;
        let meta = BTreeMap::from([
            ("samples".to_string(), self.samples.to_string()),
            ("alphas".to_string(), serde_json::to_string(&self.alphas).expect("numbers serialise")),
            ("prompts".to_string(), serde_json::to_string(&self.prompts).expect("numbers serialise")),
        ]);
        let tensors = [("per_alpha".to_string(), self.per_alpha.shallow_clone()), ("sigma".to_string(), self.sigma.shallow_clone())];
        write_tensors_exact(&dir.join("importance.safetensors"), &tensors, &meta)
    }

    /// Reads what [`SublayerImportance::save`] wrote.
    pub fn load(run: &RunDir, samples: SampleFilter) -> Result<SublayerImportance> {
        let path = Self::dir(run, samples).join("importance.safetensors");
        let mut f = read_tensors_exact(&path)?;
        let meta =
            |k: &str| f.metadata.get(k).cloned().ok_or_else(|| RunError::Format { path: path.clone(), msg: format!("missing metadata `{k}`") });
        let parse = |k: &str, v: String| RunError::Format { path: path.clone(), msg: format!("metadata `{k}` = `{v}`") };
        let alphas_s = meta("alphas")?;
        let prompts_s = meta("prompts")?;
        let alphas: Vec<f64> = serde_json::from_str(&alphas_s).map_err(|_| parse("alphas", alphas_s.clone()))?;
        let prompts: [usize; 6] = serde_json::from_str(&prompts_s).map_err(|_| parse("prompts", prompts_s.clone()))?;
        Ok(SublayerImportance { samples, alphas, per_alpha: f.take(&path, "per_alpha", None)?, sigma: f.take(&path, "sigma", None)?, prompts })
    }
}

/// Reads an importance CSV (`emotion,layer,kind,importance`, further columns ignored) for a model of
/// `n_layers` layers: one profile per emotion present, in `Emotion::ALL` order. Errors name the file and line.
pub fn read_csv(path: &Path, n_layers: usize) -> Result<Vec<Profile>> {
    let text = std::fs::read_to_string(path).map_err(emo_run::error::io(path))?;
    let bad = |line: usize, why: String| RunError::Invalid(format!("{}:{line}: {why}", path.display()));
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end() == CSV_HEADER || h.starts_with(&format!("{CSV_HEADER},")) => {}
        other => return Err(bad(1, format!("expected a header starting `{CSV_HEADER}`, found {:?}", other.map(|(_, h)| h)))),
    }
    let mut values: Vec<[Vec<Option<f64>>; 2]> = (0..6).map(|_| [vec![None; n_layers], vec![None; n_layers]]).collect();
    let mut present = [false; 6];
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 4 {
            return Err(bad(i + 1, format!("{} fields, expected at least 4", f.len())));
        }
        let e: Emotion = f[0].parse().map_err(|e: emo_data::DataError| bad(i + 1, e.to_string()))?;
        let layer: usize = f[1].parse().map_err(|_| bad(i + 1, format!("layer `{}` is not a layer number", f[1])))?;
        if layer >= n_layers {
            return Err(bad(i + 1, format!("layer {layer} is out of range 0..{n_layers}")));
        }
        let kind = match f[2] {
            "attn" => 0,
            "mlp" => 1,
            other => return Err(bad(i + 1, format!("kind `{other}` (expected attn or mlp)"))),
        };
        let v: f64 = f[3].parse().map_err(|_| bad(i + 1, format!("importance `{}` is not a number", f[3])))?;
        if !v.is_finite() {
            return Err(bad(i + 1, format!("importance `{}` is not finite", f[3])));
        }
        if values[e.index()][kind][layer].replace(v).is_some() {
            return Err(bad(i + 1, format!("{e} layer {layer} {} is given twice", f[2])));
        }
        present[e.index()] = true;
    }
    let mut out = Vec::new();
    for e in Emotion::ALL.into_iter().filter(|e| present[e.index()]) {
        let [attn, mlp] = &values[e.index()];
        let full = |v: &[Option<f64>], kind: &str| -> Result<Vec<f64>> {
            v.iter()
                .enumerate()
                .map(|(l, x)| x.ok_or_else(|| RunError::Invalid(format!("{}: no {kind} importance for {e} layer {l}", path.display()))))
                .collect()
        };
        out.push(Profile { emotion: e, attn: full(attn, "attn")?, mlp: full(mlp, "mlp")? });
    }
    if out.is_empty() {
        return Err(RunError::Invalid(format!("{}: no importance rows", path.display())));
    }
    Ok(out)
}

fn stage_name(samples: SampleFilter, emotion: Emotion) -> String {
    format!("importance-{samples}-{}", emotion.name())
}

/// Measures (or resumes) every emotion's sublayer importances on a section-5 run (complete elicitation with
/// activations, directions) and writes them into the run folder.
pub fn sublayer_importance(run: &RunDir, model: &Model, opts: &ImportanceOptions) -> Result<SublayerImportance> {
    if opts.alphas.is_empty() || opts.alphas.iter().any(|a| !a.is_finite() || *a == 0.0) {
        return Err(RunError::Invalid(format!("injection strengths {:?}: give at least one, none zero", opts.alphas)));
    }
    let cfg = model.transformer.config().clone();
    let manifest = run.require_manifest()?;
    let info = manifest.complete_elicitation(&run.path)?;
    let dataset = info.dataset(ELICIT)?;
    let scenarios = dataset.scenarios()?;
    let dirs = EmotionDirections::load(&run.directions()).map_err(|e| RunError::Invalid(format!("{e} (run `emo directions` first)")))?;
    if dirs.dims() != (cfg.n_layers, cfg.d_model) {
        return Err(RunError::Invalid(format!("directions are {:?}, the model is ({}, {})", dirs.dims(), cfg.n_layers, cfg.d_model)));
    }
    let acts = emo_directions::run::load_activations(run).map_err(|e| RunError::Invalid(e.to_string()))?;
    let sigma = sigma(&acts);
    drop(acts);
    let sigma_rows: Vec<Vec<f64>> = (0..2).map(|s| Vec::<f64>::try_from(sigma.get(s))).collect::<std::result::Result<_, _>>()?;
    let samples = select(&run.read_replies(ELICIT)?, opts.samples)?;
    let directions_sha256 = sha256_file(&run.directions())?;
    let n_layers = cfg.n_layers;
    let per_emotion: Vec<(Emotion, Vec<usize>)> = Emotion::ALL
        .into_iter()
        .map(|e| {
            let picked: Vec<usize> = samples.iter().enumerate().filter(|(_, s)| s.emotion == e).map(|(i, _)| i).collect();
            if picked.is_empty() {
                return Err(RunError::Invalid(format!(
                    "{}: no {} elicitation sample of {e} was judged a match; use all samples (`--samples all`)",
                    run.path.display(),
                    opts.samples
                )));
            }
            Ok((e, picked))
        })
        .collect::<Result<_>>()?;
    let columns = 1 + opts.alphas.len() * n_layers * 2;
    let stages: Vec<(String, usize)> = per_emotion.iter().map(|(e, p)| (stage_name(opts.samples, *e), p.len() * columns)).collect();
    let bar = emo_run::stage::rows_bar(opts.progress, "sublayer importance", &manifest, &stages);
    let prompt_set = manifest.prompt_set();
    let mut per_alpha = Vec::new();
    let mut prompts_per_emotion = [0usize; 6];
    // Neutral prompts do not name the emotion: with every sample, all six sweeps run the same prompts.
    let prefixes = PrefixCache::new(PrefixCache::DEFAULT_BYTES);
    let mut pending = emo_run::Pending::default();
    for (emotion, picked) in per_emotion {
        bar.set_message(format!("sublayer importance: {}", emotion.name()));
        let prompts = picked
            .iter()
            .map(|&i| {
                let s = &samples[i];
                let scenario = scenarios
                    .get(s.scenario)
                    .ok_or_else(|| RunError::Invalid(format!("sample {} names scenario {}, beyond the split", s.index, s.scenario)))?;
                Ok(model.encode_chat(&prompt_set.neutral_prompt(scenario, s.valence))?)
            })
            .collect::<Result<Vec<_>>>()?;
        prompts_per_emotion[emotion.index()] = prompts.len();
        let v_ref = reference_direction(&dirs, emotion);
        let mut interventions = vec![Intervention::none()];
        for &alpha in &opts.alphas {
            #[allow(clippy::needless_range_loop)] // l indexes the layers of sigma, the directions and the hook points alike
            for l in 0..n_layers {
                for (s, sub) in SUBLAYERS.iter().enumerate() {
                    let v = dirs.get(sub.site(), emotion).get(l as i64);
                    let sign = if f64::try_from(v.dot(&v_ref))? < 0.0 { -1.0 } else { 1.0 };
                    let scale = alpha * sigma_rows[s][l] * sign;
                    interventions.push(Intervention::none().with(sub.output(l), Edit::Add(&v * scale)));
                }
            }
        }
        let metric = Metric::final_state(&v_ref)?;
        let mut sweep = Sweep::new(&prompts, &interventions, Positions::LastPrompt, &metric);
        sweep.max_rows = opts.max_rows;
        sweep.bar = Some(bar.clone());
        sweep.full_forwards = opts.full_forwards;
        sweep.prefixes = Some(&prefixes);
        let settings = ImportanceSettings {
            emotion,
            alphas: opts.alphas.clone(),
            samples: opts.samples,
            sample_indices: picked.iter().map(|&i| samples[i].index).collect(),
            dataset: dataset.clone(),
            directions_sha256: directions_sha256.clone(),
            sigma: sigma_rows.clone(),
            batch_prompts: opts.batch_prompts,
        };
        let name = stage_name(opts.samples, emotion);
        let mut stage = SweepStage { settings, model, sweep, batch_prompts: opts.batch_prompts };
        // A shard goes on with the other emotions' stages; what reads the tables waits for `emo merge`.
        if pending.take(run_stage(run, &name, &mut stage, false))?.is_none() {
            continue;
        }
        let table = SweepStage::<()>::load(run, &name)?.to_kind(Kind::Double);
        // Mean over prompts of s_injected - s_base, per column, then / (alpha * sigma).
        let delta = (&table - table.select(1, 0).unsqueeze(1)).mean_dim(0, false, Kind::Double);
        let shifts = delta.narrow(0, 1, (columns - 1) as i64).reshape([opts.alphas.len() as i64, n_layers as i64, 2]);
        let alphas = Tensor::from_slice(&opts.alphas).to_kind(Kind::Double).reshape([-1, 1, 1]);
        let sig = sigma.transpose(0, 1).unsqueeze(0); // [1, L, 2]
        per_alpha.push(shifts / (alphas * sig));
    }
    bar.finish_and_clear();
    pending.check()?;
    let got = SublayerImportance {
        samples: opts.samples,
        alphas: opts.alphas.clone(),
        per_alpha: Tensor::stack(&per_alpha, 0),
        sigma,
        prompts: prompts_per_emotion,
    };
    got.save(run)?;
    Ok(got)
}
