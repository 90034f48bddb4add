//! The paper's section 5 from the shell: `emo elicit`, `emo directions`, `emo steer`, `emo report`, and
//! `emo section5`, which runs them all.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use emo_data::{Judge, Split};
use emo_directions::directions::GroupFilter;
use emo_directions::elicit::{elicitation_stage, open_run, stage_name};
use emo_directions::run::{DatasetInfo, RunDir};
use emo_directions::steer::steering_stage;
use emo_directions::{ElicitOptions, EmotionDirections, SteerOptions};
use emo_model::{GenerationConfig, Model};
use emo_run::generation::run_stage;
use emo_steer::Steering;

use crate::args::{GenerateArgs, LoadArgs, ModelArgs, ProgressArgs, StageNameArgs};
use crate::emit;
use crate::shard::{ShardArgs, Waves};

/// Where the prompts come from.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// A JSONL file in the paper's schema, or a folder with sev.jsonl and test_set.jsonl; default: built-in.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// sev (discovery) or test [default: sev for elicit, test for steer].
    #[arg(long)]
    pub split: Option<String>,
    /// Use only this many scenarios, spread evenly over the split (every theme); 18 prompts each.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl DataArgs {
    pub(crate) fn load(&self, default_split: Split) -> Result<(Split, Vec<emo_data::Scenario>, DatasetInfo)> {
        let split: Split = self.split.as_deref().map_or(Ok(default_split), str::parse)?;
        let mut scenarios = emo_data::sev::load_split(self.dataset.as_deref(), split)?;
        if let Some(n) = self.limit {
            anyhow::ensure!(n > 0, "--limit must be at least 1");
            scenarios = emo_data::sev::spread(&scenarios, n);
        }
        let source = self.dataset.as_ref().map_or("builtin".to_string(), |p| p.display().to_string());
        let info = DatasetInfo::of(&source, split, &scenarios);
        Ok((split, scenarios, info))
    }
}

/// Which judge decides whether a reply expresses its emotion.
#[derive(Args, Clone, Debug)]
pub struct JudgeArgs {
    /// embedding (default; all-MiniLM-L6-v2 + the project's classifier), lexicon (NRC), or openai (the paper's
    /// GPT-4o-mini judge on an OpenAI-compatible endpoint: $OPENAI_BASE_URL, $OPENAI_API_KEY); several joined
    /// by `+` (embedding+lexicon) match when any of them matches.
    #[arg(long, default_value = "embedding")]
    pub judge: String,
}

impl JudgeArgs {
    pub fn load(&self) -> Result<Box<dyn Judge>> {
        make_judge(&self.judge, emo_data::OpenAiConfig::from_env())
    }
}

/// The judges that need no chat model: `embedding`, `lexicon`, `openai`.
pub fn make_judge(name: &str, openai: emo_data::OpenAiConfig) -> Result<Box<dyn Judge>> {
    if name.contains('+') {
        let members = name.split('+').map(|m| make_judge(m, openai.clone())).collect::<Result<Vec<_>>>()?;
        return Ok(Box::new(emo_data::AnyOfJudge::new(members)?));
    }
    Ok(match name {
        "embedding" => Box::new(emo_data::EmbeddingJudge::load_default().context("loading the sentence encoder (run scripts/setup.sh)")?),
        "lexicon" => {
            Box::new(emo_data::LexiconJudge::load(&emo_data::LexiconJudge::default_path()).context("loading the NRC lexicon (run scripts/setup.sh)")?)
        }
        "openai" => Box::new(emo_data::OpenAiJudge::new(openai)),
        other => anyhow::bail!(
            "unknown judge `{other}` (embedding, lexicon, openai, or several joined by `+`, matching when any matches; judge-eval also takes chat)"
        ),
    })
}

/// `emo elicit`.
#[derive(Args, Clone, Debug)]
pub struct ElicitArgs {
    /// The run folder (created; an unfinished run there is resumed).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// The run's prompt set: paper (the default for a new run), strong, or a JSON file with
    /// `elicitation_system` (containing `{emotion}`) and `neutral_system`. Every later stage of the run uses
    /// it; asking an existing run for another set is an error.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Generate and judge without capturing activations (to measure what capturing costs).
    #[arg(long)]
    pub no_capture: bool,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

pub fn elicit(a: &ElicitArgs) -> Result<()> {
    let model = a.model.load()?;
    let mut judge = a.judge.load()?;
    elicit_with(a, &model, judge.as_mut())
}

/// `emo elicit` with a model and a judge already loaded (a pipeline loads each once).
fn elicit_with(a: &ElicitArgs, model: &Model, judge: &mut dyn Judge) -> Result<()> {
    let (split, scenarios, info) = a.data.load(Split::Sev)?;
    let run = a.shard.run(&a.out);
    let mut manifest = open_run(&run, model, &a.model.model)?;
    if let Some(p) = &a.prompt {
        run.use_prompts(&mut manifest, &emo_data::PromptSet::parse(p)?)?;
    }
    let opts = ElicitOptions {
        batch_size: a.generate.batch,
        generation: GenerationConfig::greedy(a.generate.max_new_tokens),
        capture: !a.no_capture,
        progress: a.progress.shown(),
    };
    let name = stage_name(&manifest, split);
    let stage = elicitation_stage(name.clone(), &scenarios, info, &judge.name(), &opts)?;
    let stats = run_stage(&run, model, judge, &stage)?;
    let acc = emo_directions::Accuracy::of(&run.read_replies(&name)?)?;
    emit(format!(
        "{name}: {} prompts (prompt set {}), {} new tokens in {:.1} s of generation ({:.2} prompts/s, {:.1} tokens/s), judged in {:.1} s; peak RSS {:.0} MB\nprompting accuracy (judge {}):\n{}\nwrote {}\n",
        stats.prompts,
        manifest.prompt_set().name,
        stats.new_tokens,
        stats.generate_seconds,
        stats.prompts as f64 / stats.generate_seconds,
        stats.new_tokens as f64 / stats.generate_seconds,
        stats.judge_seconds,
        stats.peak_rss_mb,
        judge.name(),
        acc.markdown(),
        run.replies(&name).display()
    ))
}

/// `emo directions`.
#[derive(Args, Clone, Debug)]
pub struct DirectionsArgs {
    /// The run folder of an `emo elicit`.
    pub run: PathBuf,
    /// Use every scenario-event group, not only those whose six replies all matched (for models whose
    /// replies rarely pass the judge).
    #[arg(long)]
    pub all_groups: bool,
    /// Group filter: complete (the paper), all, or auto (complete when at least a quarter of the groups are
    /// complete, else all).
    #[arg(long, default_value = "complete", conflicts_with = "all_groups")]
    pub groups: String,
    /// Also write directions.npz (arrays `resid_mid.{emotion}`, `resid_post.{emotion}`).
    #[arg(long)]
    pub npz: bool,
    /// Skip the probes, PCA and figures.
    #[arg(long)]
    pub no_analysis: bool,
}

pub fn directions(a: &DirectionsArgs) -> Result<()> {
    let run = RunDir::new(&a.run);
    let t = Instant::now();
    let filter = if a.all_groups { GroupFilter::All } else { a.groups.parse()? };
    // Read once: both the directions and the analyses need every activation of the run.
    let acts = emo_directions::run::load_activations(&run)?;
    let summary = emo_directions::extract::extract(&run, &acts, filter, a.npz)?;
    if filter == GroupFilter::Auto && summary.filter == GroupFilter::All {
        emit(format!("only {} of {} groups have all six replies matched: using all groups\n", summary.groups_complete, summary.groups_total))?;
    }
    emit(format!(
        "directions from {} of {} scenario-event groups ({:?}) in {:.1} s: {}\ncontrol vectors: {}\n",
        summary.groups_used,
        summary.groups_total,
        summary.filter,
        t.elapsed().as_secs_f64(),
        run.directions().display(),
        run.control_vectors().display()
    ))?;
    if !a.no_analysis {
        let t = Instant::now();
        emo_directions::analysis::analyze(&run, &acts)?;
        emit(format!("probes, PCA and cosine structure in {:.1} s: {}\n", t.elapsed().as_secs_f64(), run.analysis().display()))?;
    }
    Ok(())
}

/// `emo steer`.
#[derive(Args, Clone, Debug)]
pub struct SteerArgs {
    /// The run folder holding directions.safetensors.
    pub run: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Directions from elsewhere: .safetensors or .npz (`resid_post.{emotion}` arrays), .npy ([6, n_layers,
    /// d_model] resid_post), or a folder of llama.cpp control vectors `{emotion}.gguf`.
    #[arg(long)]
    pub directions: Option<PathBuf>,
    /// `h += alpha * RMS(h) * v`.
    #[arg(long, default_value_t = emo_steer::paper::STEERING_ALPHA)]
    pub alpha: f64,
    /// Inclusive layer range FIRST-LAST (default: the paper's 11-20 of 28 scaled to the model).
    #[arg(long)]
    pub layers: Option<String>,
    /// last-prompt-and-generated (the authors'), last-prompt, generated, prompt, all.
    #[arg(long, default_value = "last-prompt-and-generated")]
    pub positions: String,
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

pub(crate) fn parse_layers(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once('-').with_context(|| format!("--layers `{s}`: expected FIRST-LAST, e.g. 11-20"))?;
    Ok((a.trim().parse().with_context(|| format!("--layers `{s}`"))?, b.trim().parse().with_context(|| format!("--layers `{s}`"))?))
}

pub fn steer(a: &SteerArgs) -> Result<()> {
    let model = a.model.load_run(&RunDir::new(&a.run))?;
    let mut judge = a.judge.load()?;
    steer_with(a, &model, judge.as_mut())
}

/// `emo steer` with the run's model (checked against the run) and a judge already loaded.
fn steer_with(a: &SteerArgs, model: &Model, judge: &mut dyn Judge) -> Result<()> {
    let run = a.shard.run(&a.run);
    let manifest = run.require_manifest()?;
    let directions = match &a.directions {
        Some(p) => emo_steer::import::import_directions(p, manifest.model.n_layers, manifest.model.d_model)?,
        None => EmotionDirections::load(&run.directions())
            .with_context(|| format!("reading the directions of {} (run `emo directions` first)", run.path.display()))?,
    };
    let (split, scenarios, info) = a.data.load(Split::Test)?;
    let mut steering = Steering::new(directions, model.transformer.config())?;
    steering.alpha = a.alpha;
    if let Some(layers) = a.layers.as_deref().map(parse_layers).transpose()? {
        steering.layers = layers;
    }
    steering.positions = a.positions.parse()?;
    let opts = SteerOptions {
        batch_size: a.generate.batch,
        generation: GenerationConfig { max_new_tokens: a.generate.max_new_tokens, ..GenerationConfig::steering() },
        progress: a.progress.shown(),
    };
    let name = a.stage.name(&format!("steering-{split}"))?;
    let stage = steering_stage(name.clone(), &scenarios, info, &judge.name(), &steering, &opts)?;
    let stats = run_stage(&run, model, judge, &stage)?;
    let acc = emo_directions::Accuracy::of(&run.read_replies(&name)?)?;
    let s = stage.settings.steering.as_ref().expect("a steering stage");
    emit(format!(
        "{name}: alpha {} on layers {}-{} at {}, {} prompts in {:.1} s of generation ({:.1} tokens/s)\nsteering accuracy (judge {}):\n{}\nwrote {}\n",
        s.alpha,
        s.layers.0,
        s.layers.1,
        s.positions,
        stats.prompts,
        stats.generate_seconds,
        stats.new_tokens as f64 / stats.generate_seconds,
        judge.name(),
        acc.markdown(),
        run.replies(&name).display()
    ))
}

/// `emo report`.
#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// The run folder.
    pub run: PathBuf,
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let run = RunDir::new(&a.run);
    let mut report = emo_directions::report::build_report(&run)?;
    emo_attribution::report::section6(&run, &mut report)?;
    emo_circuits::report::section7(&run, &mut report)?;
    let path = report.write(&run.report())?;
    emit(format!("wrote {}\n", path.display()))
}

/// What a whole-pipeline command (`emo section5`, `emo paper`) runs on: model, data, judge, batch.
#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A folder with sev.jsonl and test_set.jsonl (the paper's files); default: built-in.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Scenarios per split, spread over the themes (the default finishes in minutes on a laptop CPU).
    #[arg(long, default_value_t = 8)]
    pub limit: usize,
    /// Every scenario of both splits (2,880 prompts per split and step; hours on a 2-core CPU).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Prompts per batch, in every stage (32: the best throughput per prompt on a 2-core CPU within 2 GB);
    /// also the unit a shard takes (--shard).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// New tokens per reply in every generating stage (the paper: 100); fewer for a quick look at the
    /// pipeline, whose replies then say little.
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// The run's prompt set: paper (the default for a new run), strong, or a JSON file with
    /// `elicitation_system` (containing `{emotion}`) and `neutral_system`. Every later stage of the run uses
    /// it; asking an existing run for another set is an error.
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

impl PipelineArgs {
    /// `--limit`, or none with `--full`.
    pub fn limit(&self) -> Option<usize> {
        (!self.full).then_some(self.limit)
    }

    /// The data of `split` these arguments select.
    pub fn data(&self, split: &str) -> DataArgs {
        DataArgs { dataset: self.dataset.clone(), split: Some(split.into()), limit: self.limit() }
    }

    /// The device options for commands that run the run's own model.
    pub fn run_model(&self) -> LoadArgs {
        self.model.load.clone()
    }
}

/// `emo section5`: the whole of paper section 5 on one model.
#[derive(Args, Clone, Debug)]
pub struct Section5Args {
    /// The run folder (an unfinished run there is resumed).
    #[arg(long, default_value = "runs/section5")]
    pub out: PathBuf,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Group filter for the directions: complete (the paper), all, or auto (complete when at least a quarter
    /// of the groups are complete, else all: small models rarely follow the emotion instruction).
    #[arg(long, default_value = "auto")]
    pub groups: String,
}

pub fn section5(s5: &Section5Args) -> Result<()> {
    let model = s5.pipeline.model.load()?;
    let mut judge = s5.pipeline.judge.load()?;
    section5_with(s5, &model, judge.as_mut())
}

/// `emo section5` with the model and the judge loaded once for all its stages.
pub(crate) fn section5_with(s5: &Section5Args, model: &Model, judge: &mut dyn Judge) -> Result<()> {
    let t = Instant::now();
    let mut waves = Waves::default();
    elicit_both(s5, model, judge, &mut waves)?;
    waves.check()?;
    directions_of(s5)?;
    steer_paper(s5, model, judge)?;
    let run = RunDir::new(&s5.out);
    report(&ReportArgs { run: s5.out.clone() })?;
    emit(format!("section 5 done in {:.0} s; report: {}\n", t.elapsed().as_secs_f64(), run.report().display()))
}

/// Section 5's elicitations, on the discovery split (the directions' activations) and on the test split
/// (prompting accuracy); a shard runs its part of both before stopping.
pub(crate) fn elicit_both(s5: &Section5Args, model: &Model, judge: &mut dyn Judge, waves: &mut Waves) -> Result<()> {
    let a = &s5.pipeline;
    for split in ["sev", "test"] {
        let args = ElicitArgs {
            out: s5.out.clone(),
            model: a.model.clone(),
            data: a.data(split),
            judge: a.judge.clone(),
            generate: GenerateArgs { batch: a.batch, max_new_tokens: a.max_new_tokens },
            prompt: a.prompt.clone(),
            no_capture: false,
            shard: a.shard.clone(),
            progress: a.progress.clone(),
        };
        waves.take(elicit_with(&args, model, judge))?;
    }
    Ok(())
}

/// The directions of a complete elicitation, with their exports and analyses.
pub(crate) fn directions_of(s5: &Section5Args) -> Result<()> {
    // A shard needs the directions only: the probes and PCA are the report's, which the run without --shard
    // writes (and each of many shards would redo them, seconds each).
    let no_analysis = s5.pipeline.shard.shard.is_some();
    directions(&DirectionsArgs { run: s5.out.clone(), all_groups: false, groups: s5.groups.clone(), npz: true, no_analysis })
}

/// Steering on the test split with the paper's settings.
pub(crate) fn steer_paper(s5: &Section5Args, model: &Model, judge: &mut dyn Judge) -> Result<()> {
    let a = &s5.pipeline;
    let args = SteerArgs {
        run: s5.out.clone(),
        data: a.data("test"),
        judge: a.judge.clone(),
        directions: None,
        alpha: emo_steer::paper::STEERING_ALPHA,
        layers: None,
        positions: "last-prompt-and-generated".into(),
        generate: GenerateArgs { batch: a.batch, max_new_tokens: a.max_new_tokens },
        model: a.run_model(),
        stage: StageNameArgs::default(),
        shard: a.shard.clone(),
        progress: a.progress.clone(),
    };
    steer_with(&args, model, judge)
}
