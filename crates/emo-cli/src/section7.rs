//! Paper section 7 commands: `emo importance`, `emo circuits`, `emo modulate`, and `emo paper` (sections 5-7
//! end to end).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use emo_attribution::{Attribution, SampleFilter};
use emo_circuits::importance::{read_csv, SublayerImportance};
use emo_circuits::report::circuits_dir;
use emo_circuits::{allocate, assemble, modulation_stage, sublayer_importance, Budget, ImportanceOptions, ModulateOptions};
use emo_data::{Emotion, Split};
use emo_directions::RunDir;
use emo_model::GenerationConfig;
use emo_modulate::{CircuitSet, Shape};
use emo_run::generation::run_stage;

use crate::args::{GenerateArgs, LoadArgs, ModelArgs, ProgressArgs, StageNameArgs};
use crate::emit;
use crate::section5::{DataArgs, JudgeArgs, PipelineArgs};
use crate::shard::{ShardArgs, Waves};

/// `emo importance`.
#[derive(Args, Clone, Debug)]
pub struct ImportanceArgs {
    /// A section-5 run folder (complete elicitation with activations, directions).
    pub run: PathBuf,
    /// Which elicitation samples give the neutral prompts: accepted (the paper) or all.
    #[arg(long, default_value = "accepted")]
    pub samples: String,
    /// Injection strengths alpha (times sigma), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = emo_run::paper::IMPORTANCE_ALPHAS.to_vec())]
    pub alphas: Vec<f64>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 256)]
    pub rows: usize,
    /// Prompts per committed batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Full forwards instead of prefix branching (same numbers, slower; use a fresh copy of the run folder).
    #[arg(long)]
    pub full_forwards: bool,
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

pub fn importance_cmd(a: &ImportanceArgs) -> Result<()> {
    let run = a.shard.run(&a.run);
    let model = a.model.load_run(&run)?;
    let opts = ImportanceOptions {
        samples: a.samples.parse()?,
        alphas: a.alphas.clone(),
        max_rows: a.rows,
        batch_prompts: a.batch,
        progress: a.progress.shown(),
        full_forwards: a.full_forwards,
    };
    let t = Instant::now();
    let imp = sublayer_importance(&run, &model, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let fig = emo_circuits::figures::write_importance_figure(&run, &imp)?;
    let mut text = format!("sublayer importance over {:?} prompts per emotion in {secs:.1} s\n", imp.prompts);
    for p in imp.profiles()? {
        let best = |v: &[f64]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(l, x)| format!("L{l} ({x:.3})")).unwrap_or_default();
        text.push_str(&format!("{}: top attention {}, top MLP {}\n", p.emotion, best(&p.attn), best(&p.mlp)));
    }
    let dir = SublayerImportance::dir(&run, imp.samples);
    text.push_str(&format!("wrote {} and {}\n", dir.join("importance.csv").display(), fig.png.display()));
    emit(text)
}

/// `emo circuits ...`.
#[derive(Subcommand, Clone, Debug)]
pub enum CircuitsCommand {
    /// The authors' budget rule on an importance CSV (`emotion,layer,kind,importance`): prints
    /// `{emotion: {"mlp_k": [...], "attn_k": [...]}}`.
    Allocate {
        /// The CSV (kind attn or mlp; importance = the alpha-mean I before any normalisation).
        #[arg(long)]
        importance: PathBuf,
        /// Layers of the model.
        #[arg(long)]
        n_layers: usize,
        /// Attention heads per layer.
        #[arg(long)]
        n_heads: usize,
        /// MLP neurons per layer.
        #[arg(long)]
        d_mlp: usize,
        /// Units in all (default: 10 per sublayer).
        #[arg(long)]
        k_total: Option<usize>,
    },
    /// Assemble a run's circuits from its sublayer importances and section-6 attribution; writes
    /// RUN/circuits/{samples}/{emotion}.json and delta_mu.safetensors.
    Build {
        /// The run folder (`emo importance` and `emo attribute` done with the same --samples).
        run: PathBuf,
        /// accepted or all.
        #[arg(long, default_value = "accepted")]
        samples: String,
        /// Units in all (default: 10 per sublayer).
        #[arg(long)]
        k_total: Option<usize>,
    },
    /// Import a circuits folder (ours or the authors' layout) for a model and print what it holds.
    Show {
        /// The folder.
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

pub fn circuits_cmd(c: &CircuitsCommand) -> Result<()> {
    match c {
        CircuitsCommand::Allocate { importance, n_layers, n_heads, d_mlp, k_total } => {
            let shape = Shape { n_layers: *n_layers, n_heads: *n_heads, d_mlp: *d_mlp };
            let mut budget = Budget::paper_for(shape);
            if let Some(k) = k_total {
                budget.k_total = *k;
            }
            let mut out = serde_json::Map::new();
            for p in read_csv(importance, *n_layers)? {
                let a = allocate(&p.attn, &p.mlp, shape, &budget).with_context(|| format!("allocating {}", p.emotion))?;
                out.insert(p.emotion.name().into(), serde_json::json!({ "mlp_k": a.mlp_k, "attn_k": a.attn_k }));
            }
            emit(format!("{}\n", serde_json::Value::Object(out)))
        }
        CircuitsCommand::Build { run, samples, k_total } => {
            let run = RunDir::new(run);
            let samples: SampleFilter = samples.parse()?;
            let manifest = run.require_manifest()?;
            let imp = SublayerImportance::load(&run, samples).with_context(|| format!("run `emo importance --samples {samples}` first"))?;
            let attribution = Attribution::load(&run, samples).with_context(|| format!("run `emo attribute --samples {samples}` first"))?;
            let (l, n_heads, d_mlp) = {
                let s = attribution.heads.mean.size();
                (manifest.model.n_layers, s[2] as usize, attribution.neurons.c_mean.size()[2] as usize)
            };
            let shape = Shape { n_layers: l, n_heads, d_mlp };
            let mut budget = Budget::paper_for(shape);
            if let Some(k) = k_total {
                budget.k_total = *k;
            }
            let set = assemble(&imp.profiles()?, &attribution, shape, &budget)?;
            let dir = circuits_dir(&run, samples);
            set.save(&dir)?;
            let ((nm, ns), (hm, hs)) = emo_circuits::circuit::overlap(&set.circuits);
            emit(format!(
                "{}\noverlap between emotions (Jaccard): neurons {nm:.3} ± {ns:.3}, heads {hm:.3} ± {hs:.3} (paper: 0.056 ± 0.033, 0.454 ± 0.047)\nwrote {}\n",
                emo_circuits::report::describe(&set),
                dir.display()
            ))
        }
        CircuitsCommand::Show { dir, model } => {
            let m = model.load()?;
            let cfg = m.transformer.config();
            let set = CircuitSet::load_for(dir, cfg)?;
            let ((nm, ns), (hm, hs)) = emo_circuits::circuit::overlap(&set.circuits);
            emit(format!("{}\noverlap (Jaccard): neurons {nm:.3} ± {ns:.3}, heads {hm:.3} ± {hs:.3}\n", emo_circuits::report::describe(&set)))
        }
    }
}

/// `emo modulate`.
#[derive(Args, Clone, Debug)]
pub struct ModulateArgs {
    /// The run folder (with circuits from `emo circuits build`, unless --circuits names others).
    pub run: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// The emotions modulated, comma-separated (default: all six).
    #[arg(long, value_delimiter = ',')]
    pub emotions: Vec<String>,
    /// Scale s for every emotion.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Per-emotion scales overriding --scale, e.g. anger=0.8 (the authors' choice).
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<String>,
    /// A circuits folder (ours or the authors' layout); default RUN/circuits/{samples}.
    #[arg(long)]
    pub circuits: Option<PathBuf>,
    /// Whose circuits are the default: accepted or all.
    #[arg(long, default_value = "accepted")]
    pub samples: String,
    #[command(flatten)]
    pub generate: GenerateArgs,
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub stage: StageNameArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

pub fn modulate_cmd(a: &ModulateArgs) -> Result<()> {
    let run = a.shard.run(&a.run);
    let model = a.model.load_run(&run)?;
    let cfg = model.transformer.config().clone();
    let samples: SampleFilter = a.samples.parse()?;
    let dir = a.circuits.clone().unwrap_or_else(|| circuits_dir(&run, samples));
    let set =
        CircuitSet::load_for(&dir, &cfg).with_context(|| format!("reading circuits from {} (run `emo circuits build` first)", dir.display()))?;
    let mut scales = [a.scale; 6];
    for s in &a.scales {
        let (e, v) = s.split_once('=').with_context(|| format!("--scales `{s}`: expected EMOTION=SCALE"))?;
        let e: Emotion = e.trim().parse()?;
        scales[e.index()] = v.trim().parse().with_context(|| format!("--scales `{s}`: `{v}` is not a number"))?;
    }
    let emotions =
        if a.emotions.is_empty() { Emotion::ALL.to_vec() } else { a.emotions.iter().map(|e| e.trim().parse()).collect::<Result<_, _>>()? };
    let (split, scenarios, info) = a.data.load(Split::Test)?;
    let mut judge = a.judge.load()?;
    let opts = ModulateOptions {
        emotions,
        scales,
        batch_size: a.generate.batch,
        generation: GenerationConfig { max_new_tokens: a.generate.max_new_tokens, ..GenerationConfig::modulation() },
        progress: a.progress.shown(),
    };
    let name = a.stage.name(&format!("modulation-{split}"))?;
    let stage = modulation_stage(name.clone(), &scenarios, info, &judge.name(), &set, &cfg, &opts)?;
    let stats = run_stage(&run, &model, judge.as_mut(), &stage)?;
    let fig1 = emo_circuits::figures::write_modulation_pca(&run, &model, &set, &emo_data::sev::spread(&scenarios, 8))?;
    let records = run.read_replies(&name)?;
    let acc = emo_directions::Accuracy::of(&records)?;
    let (ended, distinct) = emo_circuits::report::fluency(&records);
    emit(format!(
        "{name}: circuits {} at scales {:?}, {} prompts in {:.1} s of generation ({:.1} tokens/s)\nmodulation accuracy (judge {}):\n{}\nended before the limit: {:.0}%, distinct-2 {distinct:.3}\nwrote {} and {}\n",
        dir.display(),
        scales,
        stats.prompts,
        stats.generate_seconds,
        stats.new_tokens as f64 / stats.generate_seconds.max(1e-9),
        judge.name(),
        acc.markdown(),
        100.0 * ended,
        run.replies(&name).display(),
        fig1.png.display()
    ))
}

/// `emo paper`: sections 5, 6 and 7 end to end.
#[derive(Args, Clone, Debug)]
pub struct PaperArgs {
    /// The run folder (an unfinished run there is resumed).
    #[arg(long, default_value = "runs/paper")]
    pub out: PathBuf,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Which elicitation samples rank units and give importance prompts: accepted (the paper) or all (the
    /// default here: small models rarely pass the judge).
    #[arg(long, default_value = "all")]
    pub samples: String,
    /// Random controls per k in the section-6 sweeps.
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
}

pub fn paper(p: &PaperArgs) -> Result<()> {
    use emo_attribution::sweeps::{run_sweep_with, EditPositions, SweepKind, SweepOptions, Units};
    let a = &p.pipeline;
    let t = Instant::now();
    let mut times = Vec::new();
    // One model and one judge for every stage: a load of the 1.5B model is seconds of dequantizing.
    let model = a.model.load()?;
    let mut judge = a.judge.load()?;
    let run = a.shard.run(&p.out);
    let s5 = crate::section5::Section5Args { out: p.out.clone(), pipeline: a.clone(), groups: "auto".into() };
    // The pipeline in waves: each wave's stages read only what earlier waves wrote, so a shard (--shard I/N)
    // runs its part of a whole wave, and stops at its end until `emo merge` has combined every shard's.
    let mut waves = Waves::default();
    crate::section5::elicit_both(&s5, &model, judge.as_mut(), &mut waves)?;
    waves.check()?;
    crate::section5::directions_of(&s5)?;
    waves.take(crate::section5::steer_paper(&s5, &model, judge.as_mut()))?;
    times.push(("section 5", t.elapsed().as_secs_f64()));
    let samples: SampleFilter = p.samples.parse()?;
    let step = Instant::now();
    let opts = emo_attribution::AttributeOptions { samples, batch_size: a.batch, progress: a.progress.shown() };
    let attribution = waves.take(emo_attribution::attribute(&run, &model, &opts).map_err(Into::into))?;
    waves.check()?;
    let attribution = attribution.expect("a complete wave");
    emo_attribution::figures::write_figures(&run, &attribution)?;
    times.push(("attribution", step.elapsed().as_secs_f64()));
    let step = Instant::now();
    let cfg = model.transformer.config().clone();
    let prefixes = emo_run::PrefixCache::new(emo_run::PrefixCache::DEFAULT_BYTES);
    for kind in [SweepKind::Ablate, SweepKind::Enhance] {
        for units in [Units::Neurons, Units::Heads] {
            let mut opts = SweepOptions::paper(kind, units, &cfg);
            opts.positions = EditPositions::Last;
            opts.seeds = p.seeds;
            opts.samples = samples;
            opts.limit = a.limit();
            opts.progress = a.progress.shown();
            opts.batch_prompts = a.batch;
            if let Some(rows) = waves.take(run_sweep_with(&run, &model, &opts, &prefixes).map_err(Into::into))? {
                emo_attribution::figures::write_sweep_figure(&run, &opts, &rows)?;
            }
        }
    }
    times.push(("section 6 sweeps", step.elapsed().as_secs_f64()));
    let step = Instant::now();
    let importance = ImportanceOptions { samples, batch_prompts: a.batch, progress: a.progress.shown(), ..Default::default() };
    let imp = waves.take(sublayer_importance(&run, &model, &importance).map_err(Into::into))?;
    waves.check()?;
    let imp = imp.expect("a complete wave");
    emo_attribution::figures::write_fig3(&run)?;
    emo_circuits::figures::write_importance_figure(&run, &imp)?;
    times.push(("sublayer importance", step.elapsed().as_secs_f64()));
    let shape = Shape::of(&cfg);
    let set = assemble(&imp.profiles()?, &attribution, shape, &Budget::paper_for(shape))?;
    let dir = circuits_dir(&run, samples);
    set.save(&dir)?;
    let step = Instant::now();
    let (split, scenarios, info) = a.data("test").load(Split::Test)?;
    let generation = GenerationConfig { max_new_tokens: a.max_new_tokens, ..GenerationConfig::modulation() };
    let opts = ModulateOptions { batch_size: a.batch, generation, progress: a.progress.shown(), ..Default::default() };
    let name = format!("modulation-{split}");
    let stage = modulation_stage(name, &scenarios, info, &judge.name(), &set, &cfg, &opts)?;
    waves.take(run_stage(&run, &model, judge.as_mut(), &stage).map_err(Into::into))?;
    waves.check()?;
    emo_circuits::figures::write_modulation_pca(&run, &model, &set, &emo_data::sev::spread(&scenarios, 8))?;
    times.push(("circuit modulation", step.elapsed().as_secs_f64()));
    drop(model);
    if let Some(shard) = run.shard {
        // Shards writing one report at once would race for nothing: the run without --shard writes it.
        return emit(format!("shard {shard}: every stage is merged; run `emo paper` without --shard for the report\n"));
    }
    crate::section5::report(&crate::section5::ReportArgs { run: p.out.clone() })?;
    let lines: Vec<String> = times.iter().map(|(what, s)| format!("  {what}: {s:.0} s")).collect();
    emit(format!("paper (sections 5-7) done in {:.0} s:\n{}\nreport: {}\n", t.elapsed().as_secs_f64(), lines.join("\n"), run.report().display()))
}
