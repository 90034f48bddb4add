//! Causal validation of the local components (paper section 6.3, Fig. 3; spec section 7): on the test split,
//! zero (ablation, emotion prompt) or stimulate (enhancement, neutral prompt: add lambda * delta_mu) the
//! top-k neurons or heads of every layer, against the same k drawn at random per layer (seeded), and read
//! s = sum over layers of the last-token residual after the sublayer add, projected on that layer's
//! direction. Delta s = s' - s, mean and 95% confidence interval over prompts.
//!
//! Every last-token intervention runs through prefix branching ([`emo_run::Sweep`]); head ablation at all
//! positions pays a full forward per row. Each emotion's sweep is a resumable stage.
use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;

use emo_data::{Emotion, PromptItem, Split};
use emo_model::{Edit, HookPoint, Intervention, Model, Positions, TransformerConfig};
use emo_run::store::{sha256_file, write_atomic};
use emo_run::{run_stage, DatasetInfo, Metric, PrefixCache, Result, RunDir, RunError, Sweep, SweepStage, ELICIT};
use emo_steer::{EmotionDirections, Site};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::attribute::Attribution;
use crate::patching::Patching;
use crate::samples::SampleFilter;

/// Zero the units (emotion prompt) or add lambda * delta_mu to them (neutral prompt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepKind {
    /// Zero the units.
    Ablate,
    /// Add lambda * delta_mu at the units.
    Enhance,
}

/// Which units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Units {
    /// MLP neurons (`mlp.hook_post`), ranked by mean contribution.
    Neurons,
    /// Attention heads (`attn.hook_z`), ranked by mean importance.
    Heads,
}

/// Where the edit acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditPositions {
    /// The last prompt token (branches over a shared prefix).
    Last,
    /// Every token (full forwards).
    All,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:path => $s:literal),+) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $s),+ })
            }
        }
        impl FromStr for $t {
            type Err = RunError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(RunError::Invalid(format!(concat!("unknown ", $what, " `{}` (expected {})"), s, [$($s),+].join(" or ")))),
                }
            }
        }
    };
}
names!(SweepKind, "sweep kind", SweepKind::Ablate => "ablate", SweepKind::Enhance => "enhance");
names!(Units, "units", Units::Neurons => "neurons", Units::Heads => "heads");
names!(EditPositions, "positions", EditPositions::Last => "last", EditPositions::All => "all");
names!(Ranking, "ranking", Ranking::Analytic => "analytic", Ranking::AttributionPatching => "attribution-patching");

/// Which scores rank the target units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ranking {
    /// Section 6's analytic scores (`emo attribute`): the paper's method.
    #[default]
    Analytic,
    /// Attribution patching's estimates (`emo attribute --method attribution-patching`).
    AttributionPatching,
}

impl Ranking {
    fn is_analytic(&self) -> bool {
        *self == Ranking::Analytic
    }
}

/// How to run one sweep (one panel of Fig. 3).
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Ablation or enhancement.
    pub kind: SweepKind,
    /// Neurons or heads.
    pub units: Units,
    /// Where the edit acts.
    pub positions: EditPositions,
    /// The k values (0 is the unedited baseline, Delta s = 0).
    pub ks: Vec<usize>,
    /// Random controls per k (the paper: 10).
    pub seeds: usize,
    /// Enhancement scale (the paper: 1.0).
    pub lambda: f64,
    /// Test scenarios used (spread over the split), all when `None`.
    pub limit: Option<usize>,
    /// Which attribution ranks the units.
    pub samples: SampleFilter,
    /// Rows per forward pass.
    pub max_rows: usize,
    /// Prompts per committed batch.
    pub batch_prompts: usize,
    /// Draw a progress bar (one over every emotion).
    pub progress: bool,
    /// Full forwards instead of prefix branching (the same table, slower): to measure what branching saves.
    pub full_forwards: bool,
    /// Which scores choose the target units (random controls are the same either way).
    pub ranking: Ranking,
}

impl SweepOptions {
    /// The paper's settings for `kind` x `units`: its k grid capped at the model's units, 10 seeds, lambda 1,
    /// last token.
    pub fn paper(kind: SweepKind, units: Units, cfg: &TransformerConfig) -> Self {
        SweepOptions {
            kind,
            units,
            positions: EditPositions::Last,
            ks: default_ks(units, cfg),
            seeds: 10,
            lambda: 1.0,
            limit: None,
            samples: SampleFilter::Accepted,
            max_rows: 64,
            batch_prompts: 32,
            progress: true,
            full_forwards: false,
            ranking: Ranking::Analytic,
        }
    }
}

/// The paper's k grid: neurons {0, 2, 4, ..., 512}, heads {0, 1, ..., 8}, capped at the units per layer.
pub fn default_ks(units: Units, cfg: &TransformerConfig) -> Vec<usize> {
    match units {
        Units::Neurons => std::iter::once(0).chain((1..=9).map(|p| 1usize << p)).filter(|&k| k <= cfg.d_mlp).collect(),
        Units::Heads => (0..=8.min(cfg.n_heads)).collect(),
    }
}

/// What determines one emotion's sweep table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSettings {
    /// Ablation or enhancement.
    pub kind: SweepKind,
    /// Neurons or heads.
    pub units: Units,
    /// Where.
    pub positions: EditPositions,
    /// The emotion.
    pub emotion: Emotion,
    /// The k values.
    pub ks: Vec<usize>,
    /// Random seeds per k.
    pub seeds: usize,
    /// Enhancement scale.
    pub lambda: f64,
    /// The test scenarios.
    pub dataset: DatasetInfo,
    /// Which attribution ranked the units, and the sha256 of its tensors.
    pub attribution: (SampleFilter, String),
    /// sha256 of the directions the score reads.
    pub directions_sha256: String,
    /// Prompts per committed batch.
    pub batch_prompts: usize,
    /// Which scores chose the target units (absent for the paper's analytic ranking, as before it existed).
    #[serde(default, skip_serializing_if = "Ranking::is_analytic")]
    pub ranking: Ranking,
}

/// One row of a sweep's CSV: `emotion,k,control,seed,n,delta_s_mean,delta_s_ci95`.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    /// The emotion.
    pub emotion: Emotion,
    /// Units per layer.
    pub k: usize,
    /// `target` or `random`.
    pub control: &'static str,
    /// The random seed; `None` for target rows; the mean over seeds has `seed` = `mean` in the CSV (here
    /// `Some(usize::MAX)`).
    pub seed: Option<usize>,
    /// Prompts.
    pub n: usize,
    /// Mean Delta s.
    pub mean: f64,
    /// Half-width of the 95% confidence interval of the mean (1.96 standard errors).
    pub ci95: f64,
}

/// The seed value that marks the mean over random seeds.
pub const MEAN_OVER_SEEDS: usize = usize::MAX;

/// `k` distinct units of `0..n`, drawn by a SplitMix64 stream seeded from (seed, emotion, layer, k): the same
/// draw on every run and machine.
pub fn random_units(n: usize, k: usize, seed: usize, emotion: Emotion, layer: usize) -> Vec<usize> {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((emotion.index() as u64) << 48) ^ ((layer as u64) << 32) ^ k as u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut pool: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + (next() % (n - i) as u64) as usize;
        pool.swap(i, j);
    }
    let mut out = pool[..k].to_vec();
    out.sort_unstable();
    out
}

/// One column of a sweep: which units (per layer) and how they were chosen.
struct Column {
    k: usize,
    seed: Option<usize>,
    units: Vec<Vec<usize>>,
}

/// `sweeps/{kind}-{units}-{positions}.csv` in the run folder (`...-attribution-patching.csv` for that ranking).
pub fn csv_path(run: &RunDir, opts: &SweepOptions) -> PathBuf {
    let file = csv_file(run, opts.kind, opts.units, opts.positions);
    match opts.ranking {
        Ranking::Analytic => file,
        r => file.with_file_name(format!("{}-{r}.csv", file.file_stem().and_then(|s| s.to_str()).unwrap_or_default())),
    }
}

/// `sweeps/{kind}-{units}-{positions}.csv` in the run folder, from the three names.
pub fn csv_file(run: &RunDir, kind: SweepKind, units: Units, positions: EditPositions) -> PathBuf {
    run.path.join("sweeps").join(format!("{kind}-{units}-{positions}.csv"))
}

/// Runs (or resumes) one sweep for every emotion and writes its CSV; returns the rows.
pub fn run_sweep(run: &RunDir, model: &Model, opts: &SweepOptions) -> Result<Vec<SweepRow>> {
    run_sweep_with(run, model, opts, &PrefixCache::new(PrefixCache::DEFAULT_BYTES))
}

/// [`run_sweep`] with prefixes shared with other sweeps of the same model (`emo paper` runs the four
/// sweeps of Fig. 3 over one cache: the ablations of an emotion share its prompts, the enhancements of every
/// emotion the neutral ones).
pub fn run_sweep_with(run: &RunDir, model: &Model, opts: &SweepOptions, prefixes: &PrefixCache) -> Result<Vec<SweepRow>> {
    let cfg = model.transformer.config().clone();
    let (n_layers, n_units) = match opts.units {
        Units::Neurons => (cfg.n_layers, cfg.d_mlp),
        Units::Heads => (cfg.n_layers, cfg.n_heads),
    };
    if let Some(&k) = opts.ks.iter().find(|&&k| k > n_units) {
        return Err(RunError::Invalid(format!("k = {k} is more than the {n_units} {} per layer", opts.units)));
    }
    if opts.ks.is_empty() {
        return Err(RunError::Invalid("no k values".into()));
    }
    let manifest = run.require_manifest()?;
    let elicit = manifest.stages.get(ELICIT).ok_or_else(|| RunError::Invalid(format!("{}: no elicitation", run.path.display())))?;
    let source = elicit.dataset(ELICIT)?.source;
    let all = emo_data::sev::load_split((source != "builtin").then(|| std::path::Path::new(&source)), Split::Test)?;
    let scenarios = match opts.limit {
        Some(n) => emo_data::sev::spread(&all, n),
        None => all,
    };
    let dataset = DatasetInfo::of(&source, Split::Test, &scenarios);
    let attribution =
        Attribution::load(run, opts.samples).map_err(|e| RunError::Invalid(format!("{e} (run `emo attribute --samples {}` first)", opts.samples)))?;
    let (attribution_file, patching) = match opts.ranking {
        Ranking::Analytic => (
            Attribution::dir(run, opts.samples).join(match opts.units {
                Units::Neurons => "neurons.safetensors",
                Units::Heads => "heads.safetensors",
            }),
            None,
        ),
        Ranking::AttributionPatching => {
            let p = Patching::load(run, opts.samples).map_err(|e| {
                RunError::Invalid(format!("{e} (run `emo attribute --method attribution-patching --samples {}` first)", opts.samples))
            })?;
            (Patching::dir(run, opts.samples).join("scores.safetensors"), Some(p))
        }
    };
    let dirs = EmotionDirections::load(&run.directions())?;
    let site = match opts.units {
        Units::Neurons => Site::ResidPost,
        Units::Heads => Site::ResidMid,
    };
    let positions = match opts.positions {
        EditPositions::Last => Positions::LastPrompt,
        EditPositions::All => Positions::All,
    };
    let ranked = match opts.ranking {
        Ranking::Analytic => String::new(),
        r => format!("-{r}"),
    };
    let name = |emotion: Emotion| format!("sweep-{}-{}-{}{ranked}-{}", opts.kind, opts.units, opts.positions, emotion.name());
    let per_emotion: Vec<(Emotion, Vec<PromptItem>, Vec<Column>)> = Emotion::ALL
        .into_iter()
        .map(|e| {
            let items = PromptItem::all(&scenarios).into_iter().filter(|it| it.emotion == e).collect();
            (e, items, columns(&attribution, patching.as_ref(), opts, e, n_layers, n_units))
        })
        .collect();
    // One bar over every emotion's rows (the baseline and every column), started at the rows earlier sessions
    // committed.
    let stages: Vec<(String, usize)> = per_emotion.iter().map(|(e, items, columns)| (name(*e), items.len() * (1 + columns.len()))).collect();
    let bar = emo_run::stage::rows_bar(opts.progress, &format!("{} {} {}", opts.kind, opts.units, opts.positions), &manifest, &stages);
    let prompt_set = manifest.prompt_set();
    let mut rows = Vec::new();
    let mut pending = emo_run::Pending::default();
    for (emotion, items, columns) in per_emotion {
        bar.set_message(format!("{} {} {}: {}", opts.kind, opts.units, opts.positions, emotion.name()));
        let prompts = items
            .iter()
            .map(|it| {
                let s = &scenarios[it.scenario];
                let messages = match opts.kind {
                    SweepKind::Ablate => prompt_set.elicitation_prompt(emotion, s, it.valence),
                    SweepKind::Enhance => prompt_set.neutral_prompt(s, it.valence),
                };
                Ok(model.encode_chat(&messages)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let interventions: Vec<Intervention> =
            std::iter::once(Intervention::none()).chain(columns.iter().map(|c| intervention(&attribution, opts, emotion, c, &cfg))).collect();
        let points: Vec<HookPoint> = (0..n_layers).map(|l| site.hook_point(l)).collect();
        let metric = Metric::projection(points, dirs.get(site, emotion))?;
        let mut sweep = Sweep::new(&prompts, &interventions, positions.clone(), &metric);
        sweep.max_rows = opts.max_rows;
        sweep.bar = Some(bar.clone());
        sweep.full_forwards = opts.full_forwards;
        sweep.prefixes = Some(prefixes);
        let settings = SweepSettings {
            kind: opts.kind,
            units: opts.units,
            positions: opts.positions,
            emotion,
            ks: opts.ks.clone(),
            seeds: opts.seeds,
            lambda: opts.lambda,
            dataset: dataset.clone(),
            attribution: (opts.samples, sha256_file(&attribution_file)?),
            directions_sha256: sha256_file(&run.directions())?,
            batch_prompts: opts.batch_prompts,
            ranking: opts.ranking,
        };
        let mut stage = SweepStage { settings, model, sweep, batch_prompts: opts.batch_prompts };
        // A shard goes on with the other emotions' stages; what reads the tables waits for `emo merge`.
        if pending.take(run_stage(run, &name(emotion), &mut stage, false))?.is_none() {
            continue;
        }
        let table = SweepStage::<()>::load(run, &name(emotion))?.to_kind(Kind::Double);
        let delta = &table - table.select(1, 0).unsqueeze(1);
        rows.extend(summarise(emotion, &opts.ks, &columns, &delta)?);
    }
    bar.finish_and_clear();
    pending.check()?;
    write_atomic(&csv_path(run, opts), csv(&rows).as_bytes())?;
    Ok(rows)
}

/// The target column and `seeds` random columns of every k > 0, in k order.
fn columns(a: &Attribution, patching: Option<&Patching>, opts: &SweepOptions, emotion: Emotion, n_layers: usize, n_units: usize) -> Vec<Column> {
    let mut out = Vec::new();
    for &k in opts.ks.iter().filter(|&&k| k > 0) {
        let ranked = |l: usize| match (opts.units, patching) {
            (Units::Neurons, None) => a.neurons.ranking(emotion, l),
            (Units::Heads, None) => a.heads.ranking(emotion, l),
            (Units::Neurons, Some(p)) => p.neuron_ranking(emotion, l),
            (Units::Heads, Some(p)) => p.head_ranking(emotion, l),
        };
        out.push(Column { k, seed: None, units: (0..n_layers).map(|l| ranked(l)[..k].to_vec()).collect() });
        for seed in 0..opts.seeds {
            out.push(Column { k, seed: Some(seed), units: (0..n_layers).map(|l| random_units(n_units, k, seed, emotion, l)).collect() });
        }
    }
    out
}

/// The edits of one column at every layer.
fn intervention(a: &Attribution, opts: &SweepOptions, emotion: Emotion, c: &Column, cfg: &TransformerConfig) -> Intervention {
    let e = emotion.index() as i64;
    (0..cfg.n_layers).fold(Intervention::none(), |iv, l| {
        let units = &c.units[l];
        let point = match opts.units {
            Units::Neurons => HookPoint::MlpPost(l),
            Units::Heads => HookPoint::AttnZ(l),
        };
        let edit = match opts.kind {
            SweepKind::Ablate => Edit::Zero(units.iter().map(|&u| u as i64).collect()),
            SweepKind::Enhance => {
                let (mu, width) = match opts.units {
                    Units::Neurons => (a.delta_mu.mlp.get(e).get(l as i64), 1),
                    Units::Heads => (a.delta_mu.attn.get(e).get(l as i64), cfg.d_head),
                };
                let mut mask = vec![0f32; mu.size()[0] as usize];
                for &u in units {
                    mask[u * width..(u + 1) * width].fill(opts.lambda as f32);
                }
                Edit::Add(mu.to_kind(Kind::Float) * Tensor::from_slice(&mask))
            }
        };
        iv.with(point, edit)
    })
}

fn mean_ci(d: &Tensor) -> Result<(usize, f64, f64)> {
    let n = d.size()[0] as usize;
    let mean = f64::try_from(d.mean(Kind::Double))?;
    let ci = if n > 1 { 1.96 * f64::try_from(d.std(true))? / (n as f64).sqrt() } else { 0.0 };
    Ok((n, mean, ci))
}

/// CSV rows of one emotion from its Delta s table `[prompts, 1 + columns]` (column 0 the baseline).
fn summarise(emotion: Emotion, ks: &[usize], columns: &[Column], delta: &Tensor) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    let row = |k, control, seed, (n, mean, ci95): (usize, f64, f64)| SweepRow { emotion, k, control, seed, n, mean, ci95 };
    for &k in ks {
        if k == 0 {
            rows.push(row(0, "target", None, mean_ci(&delta.select(1, 0))?));
            continue;
        }
        let idx: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].k == k).collect();
        for &i in &idx {
            let d = delta.select(1, (i + 1) as i64);
            match columns[i].seed {
                None => rows.push(row(k, "target", None, mean_ci(&d)?)),
                Some(s) => rows.push(row(k, "random", Some(s), mean_ci(&d)?)),
            }
        }
        let random: Vec<i64> = idx.iter().filter(|&&i| columns[i].seed.is_some()).map(|&i| (i + 1) as i64).collect();
        if !random.is_empty() {
            // Per prompt, the mean over seeds; then the mean and interval over prompts.
            let d = delta.index_select(1, &Tensor::from_slice(&random)).mean_dim(1, false, Kind::Double);
            rows.push(row(k, "random", Some(MEAN_OVER_SEEDS), mean_ci(&d)?));
        }
    }
    Ok(rows)
}

/// Reads a sweep CSV written by [`run_sweep`]; a malformed line is an error naming the file and line.
pub fn read_csv(path: &std::path::Path) -> Result<Vec<SweepRow>> {
    let text = std::fs::read_to_string(path).map_err(emo_run::error::io(path))?;
    let bad = |line: usize, why: String| RunError::Invalid(format!("{}:{line}: {why}", path.display()));
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header == CSV_HEADER => {}
        other => return Err(bad(1, format!("expected the header `{CSV_HEADER}`, found {:?}", other.map(|(_, h)| h)))),
    }
    let mut rows = Vec::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 7 {
            return Err(bad(i + 1, format!("{} fields, expected 7", f.len())));
        }
        let num = |j: usize, what: &str| f[j].parse::<f64>().map_err(|_| bad(i + 1, format!("{what} `{}` is not a number", f[j])));
        let int = |j: usize, what: &str| f[j].parse::<usize>().map_err(|_| bad(i + 1, format!("{what} `{}` is not a count", f[j])));
        let control = match f[2] {
            "target" => "target",
            "random" => "random",
            other => return Err(bad(i + 1, format!("control `{other}` (expected target or random)"))),
        };
        let seed = match f[3] {
            "" => None,
            "mean" => Some(MEAN_OVER_SEEDS),
            _ => Some(int(3, "seed")?),
        };
        let emotion = f[0].parse::<Emotion>().map_err(|e| bad(i + 1, e.to_string()))?;
        rows.push(SweepRow {
            emotion,
            k: int(1, "k")?,
            control,
            seed,
            n: int(4, "n")?,
            mean: num(5, "delta_s_mean")?,
            ci95: num(6, "delta_s_ci95")?,
        });
    }
    Ok(rows)
}

/// The header of a sweep CSV.
pub const CSV_HEADER: &str = "emotion,k,control,seed,n,delta_s_mean,delta_s_ci95";

/// The CSV text of `rows`.
pub fn csv(rows: &[SweepRow]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        let seed = match r.seed {
            None => String::new(),
            Some(MEAN_OVER_SEEDS) => "mean".into(),
            Some(s) => s.to_string(),
        };
        let _ = writeln!(out, "{},{},{},{seed},{},{},{}", r.emotion.name(), r.k, r.control, r.n, r.mean, r.ci95);
    }
    out
}
