//! Paper section 6 commands: `emo attribute`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use emo_attribution::{attribute, AttributeOptions};
use emo_directions::RunDir;

use crate::args::{LoadArgs, ProgressArgs};
use crate::emit;
use crate::shard::ShardArgs;

/// `emo attribute`.
#[derive(Args, Clone, Debug)]
pub struct AttributeArgs {
    /// A section-5 run folder (complete elicitation and directions).
    pub run: PathBuf,
    /// Which elicitation samples: accepted (the paper: replies the judge accepted) or all (for models whose
    /// replies rarely pass the judge).
    #[arg(long, default_value = "accepted")]
    pub samples: String,
    /// Prompts per forward pass (and per committed batch); attribution patching keeps each batch's graph for
    /// its backward pass, so it runs at most 8 per pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// analytic (the paper: each unit's direct write into its layer's emotion projection) or
    /// attribution-patching (the gradient estimate of each unit's ablation effect on the sweeps' metric,
    /// through every later layer; compared with the analytic ranking when one exists).
    #[arg(long, default_value = "analytic")]
    pub method: String,
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

pub fn attribute_cmd(a: &AttributeArgs) -> Result<()> {
    let run = a.shard.run(&a.run);
    match a.method.as_str() {
        "analytic" => {}
        "attribution-patching" => return patching_cmd(a, &run),
        other => anyhow::bail!("unknown --method `{other}` (expected analytic or attribution-patching)"),
    }
    let model = a.model.load_run(&run)?;
    let opts = AttributeOptions { samples: a.samples.parse()?, batch_size: a.batch, progress: a.progress.shown() };
    let t = Instant::now();
    let got = attribute(&run, &model, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let figures = emo_attribution::figures::write_figures(&run, &got)?;
    emit(format!(
        "attribution over {} samples ({:?} per emotion; delta_mu from {} complete groups) in {secs:.1} s\nwrote {} and {} figures\n",
        got.samples,
        got.neurons.samples,
        got.delta_mu.groups,
        emo_attribution::attribute::Attribution::dir(&run, got.samples).display(),
        figures.len()
    ))
}

/// `emo attribute --method attribution-patching`: the scores, and their agreement with the analytic ones.
fn patching_cmd(a: &AttributeArgs, run: &RunDir) -> Result<()> {
    use emo_attribution::patching::{agreement, attribution_patching, Patching, PatchingOptions};
    let model = a.model.load_run(run)?;
    let opts = PatchingOptions { samples: a.samples.parse()?, batch_size: a.batch.min(8), progress: a.progress.shown() };
    let t = Instant::now();
    let got = attribution_patching(run, &model, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let dir = Patching::dir(run, got.samples);
    let mut text = format!("attribution patching over {} samples ({:?} per emotion) in {secs:.1} s\n", got.samples, got.counts);
    if let Ok(analytic) = emo_attribution::attribute::Attribution::load(run, got.samples) {
        let emotions: Vec<_> = emo_data::Emotion::ALL.into_iter().filter(|e| got.counts[e.index()] > 0).collect();
        let neurons = agreement(&analytic.neurons.c_mean, &got.neurons, 32, &emotions);
        let heads = agreement(&analytic.heads.mean, &got.heads, 2, &emotions);
        emo_run::store::write_json(&dir.join("agreement.json"), &serde_json::json!({ "neurons": neurons, "heads": heads, "seconds": secs }))?;
        text.push_str(&format!(
            "against the analytic ranking (mean over emotions and layers): neurons Spearman {:.3}, top-{} overlap {:.3}; heads Spearman {:.3}, top-{} overlap {:.3}\n",
            neurons.spearman, neurons.k, neurons.top_k_overlap, heads.spearman, heads.k, heads.top_k_overlap
        ));
    }
    text.push_str(&format!("wrote {}\n", dir.display()));
    emit(text)
}

/// `emo sweep`.
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// A run folder with an attribution (`emo attribute`).
    pub run: PathBuf,
    /// ablate (zero the units, emotion prompt) or enhance (add lambda * delta_mu, neutral prompt).
    #[arg(long)]
    pub kind: String,
    /// neurons or heads.
    #[arg(long)]
    pub units: String,
    /// last (the last prompt token, branched) or all (every token, full forwards).
    #[arg(long, default_value = "last")]
    pub positions: String,
    /// The k values, comma-separated (default: the paper's grid, capped at the model's units).
    #[arg(long, value_delimiter = ',')]
    pub k: Vec<usize>,
    /// Random controls per k.
    #[arg(long, default_value_t = 10)]
    pub seeds: usize,
    /// Enhancement scale.
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Test scenarios (spread over the split); all by default.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Which attribution ranks the units: accepted or all.
    #[arg(long, default_value = "accepted")]
    pub samples: String,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 64)]
    pub rows: usize,
    /// Run every row as a full forward instead of branching at the last token: the same table, slower by
    /// about the prompt length; for measuring what branching saves (use a fresh copy of the run folder, as
    /// a finished sweep is not run again).
    #[arg(long)]
    pub full_forwards: bool,
    /// Which scores choose the target units: analytic (`emo attribute`, the paper) or attribution-patching
    /// (`emo attribute --method attribution-patching`); its CSV gets the suffix `-attribution-patching`.
    #[arg(long, default_value = "analytic")]
    pub ranking: String,
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

pub fn sweep_cmd(a: &SweepArgs) -> Result<()> {
    use emo_attribution::sweeps::{run_sweep, SweepOptions, MEAN_OVER_SEEDS};
    let run = a.shard.run(&a.run);
    let model = a.model.load_run(&run)?;
    let mut opts = SweepOptions::paper(a.kind.parse()?, a.units.parse()?, model.transformer.config());
    opts.positions = a.positions.parse()?;
    if !a.k.is_empty() {
        opts.ks = a.k.clone();
    }
    opts.seeds = a.seeds;
    opts.lambda = a.lambda;
    opts.limit = a.limit;
    opts.samples = a.samples.parse()?;
    opts.max_rows = a.rows;
    opts.progress = a.progress.shown();
    opts.full_forwards = a.full_forwards;
    opts.ranking = a.ranking.parse()?;
    let t = Instant::now();
    let rows = run_sweep(&run, &model, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let fig = emo_attribution::figures::write_sweep_figure(&run, &opts, &rows)?;
    let fig3 = emo_attribution::figures::write_fig3(&run)?;
    let mut text = format!(
        "{} of {} at {} positions in {secs:.1} s\n| emotion | k | target Delta s | random Delta s |\n|---|---:|---:|---:|\n",
        opts.kind, opts.units, opts.positions
    );
    for r in rows.iter().filter(|r| r.control == "target") {
        let random = rows.iter().find(|x| x.emotion == r.emotion && x.k == r.k && x.seed == Some(MEAN_OVER_SEEDS));
        text.push_str(&format!(
            "| {} | {} | {:.3} ± {:.3} | {} |\n",
            r.emotion,
            r.k,
            r.mean,
            r.ci95,
            random.map_or("".into(), |x| format!("{:.3} ± {:.3}", x.mean, x.ci95))
        ));
    }
    text.push_str(&format!("wrote {} and {}\n", emo_attribution::sweeps::csv_path(&run, &opts).display(), fig.png.display()));
    if let Some(f) = fig3 {
        text.push_str(&format!("updated {} (every sweep of the run)\n", f.png.display()));
    }
    emit(text)
}
