//! A run folder and the resumable batch loop every generating step shares (elicitation, prompting on another
//! split, steering): prompts in fixed batches, each batch generated, judged and committed as its own part
//! files (activations first, replies last, both written then renamed), so a run killed at any moment resumes
//! at the first uncommitted batch and recomputes nothing finished.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use emo_data::{Emotion, Judge, PromptItem, Scenario, Valence};
use emo_model::bench::peak_rss_mb;
use emo_model::{Capture, ChatMessage, Edit, GenerationConfig, HookSet, Intervention, Interventions, Model, Positions, StopReason};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::directions::Site;
use crate::error::{io, DirectionsError, Result};
use crate::store::{read_json, read_tensors, sha256_bytes, sha256_file, write_atomic, write_json, write_tensors};

/// Manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// The files of a run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
}

impl RunDir {
    /// A run folder (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// `manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.path.join("manifest.json")
    }

    /// The replies of a stage: `replies.jsonl` for the elicitation the directions come from,
    /// `prompting-{split}.jsonl` for prompting on another split, `steering-{split}.jsonl` for steering.
    pub fn replies(&self, stage: &str) -> PathBuf {
        if stage == ELICIT {
            self.path.join("replies.jsonl")
        } else {
            self.path.join(format!("{stage}.jsonl"))
        }
    }

    /// Where a stage keeps its committed batches until it is complete.
    pub fn parts(&self, stage: &str) -> PathBuf {
        self.path.join("parts").join(stage)
    }

    /// The elicitation's last-prompt-token activations, one safetensors file per batch.
    pub fn activations(&self) -> PathBuf {
        self.path.join("activations")
    }

    /// `directions.safetensors`.
    pub fn directions(&self) -> PathBuf {
        self.path.join("directions.safetensors")
    }

    /// `directions.json`, the summary beside the directions.
    pub fn directions_summary(&self) -> PathBuf {
        self.path.join("directions.json")
    }

    /// `control_vectors/`, one llama.cpp control vector per emotion.
    pub fn control_vectors(&self) -> PathBuf {
        self.path.join("control_vectors")
    }

    /// `figures/`.
    pub fn figures(&self) -> PathBuf {
        self.path.join("figures")
    }

    /// `analysis.json`: probe scores and cosine structure.
    pub fn analysis(&self) -> PathBuf {
        self.path.join("analysis.json")
    }

    /// `report.md`.
    pub fn report(&self) -> PathBuf {
        self.path.join("report.md")
    }

    /// Reads the manifest, if the run has one.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        let p = self.manifest();
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// Reads the manifest, or explains that this is not a run folder.
    pub fn require_manifest(&self) -> Result<Manifest> {
        self.read_manifest()?.ok_or_else(|| {
            DirectionsError::Invalid(format!("{} is not a run folder (no manifest.json); start one with `emo elicit --out`", self.path.display()))
        })
    }

    /// Reads the committed replies of a complete stage.
    pub fn read_replies(&self, stage: &str) -> Result<Vec<ReplyRecord>> {
        read_records(&self.replies(stage))
    }
}

/// The stage whose activations give the directions.
pub const ELICIT: &str = "elicit";

/// The model a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The reference given (alias, file or folder).
    pub reference: String,
    /// The file or folder loaded.
    pub path: String,
    /// sha256 of the file (of `config.json` for a folder).
    pub sha256: String,
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// Number of layers.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
}

impl ModelInfo {
    /// Describes a loaded model (hashes its file).
    pub fn of(model: &Model, reference: &str) -> Result<ModelInfo> {
        let file = if model.path.is_dir() { model.path.join("config.json") } else { model.path.clone() };
        let cfg = model.transformer.config();
        Ok(ModelInfo {
            reference: reference.to_string(),
            path: model.path.display().to_string(),
            sha256: sha256_file(&file)?,
            architecture: format!("{:?}", cfg.arch).to_lowercase(),
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
        })
    }
}

/// The scenarios a stage ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// `builtin` or the folder/file given.
    pub source: String,
    /// `sev` or `test`.
    pub split: String,
    /// Number of scenarios used (after `--limit`).
    pub scenarios: usize,
    /// sha256 of the scenarios used, as canonical JSONL.
    pub sha256: String,
}

impl DatasetInfo {
    /// Describes the scenarios used.
    pub fn of(source: &str, split: emo_data::Split, scenarios: &[Scenario]) -> DatasetInfo {
        DatasetInfo {
            source: source.to_string(),
            split: split.to_string(),
            scenarios: scenarios.len(),
            sha256: sha256_bytes(emo_data::sev::to_jsonl(scenarios).as_bytes()),
        }
    }
}

/// Decoding settings as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSettings {
    /// Maximum new tokens.
    pub max_new_tokens: usize,
    /// Minimum new tokens.
    pub min_new_tokens: usize,
    /// Repetition penalty (1 = off).
    pub repetition_penalty: f32,
    /// No-repeat n-gram size (0 = off).
    pub no_repeat_ngram_size: usize,
}

impl From<&GenerationConfig> for GenerationSettings {
    fn from(c: &GenerationConfig) -> Self {
        GenerationSettings {
            max_new_tokens: c.max_new_tokens,
            min_new_tokens: c.min_new_tokens,
            repetition_penalty: c.repetition_penalty,
            no_repeat_ngram_size: c.no_repeat_ngram_size,
        }
    }
}

impl GenerationSettings {
    /// The generation config these settings describe (greedy, KV cache, the model's end tokens).
    pub fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            ..Default::default()
        }
    }
}

/// The steering edit of a steering stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SteeringSettings {
    /// `h += alpha * RMS(h) * v`.
    pub alpha: f64,
    /// Layers steered (inclusive range).
    pub layers: (usize, usize),
    /// The site whose directions are added at `hook_resid_post` (the paper: the MLP site's).
    pub site: Site,
    /// Which tokens are edited.
    pub positions: String,
}

/// Everything that determines a stage's output: a resumed stage must match it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSettings {
    /// The scenarios.
    pub dataset: DatasetInfo,
    /// Prompts per batch (batch composition changes padding, so it is part of the identity).
    pub batch_size: usize,
    /// Decoding.
    pub generation: GenerationSettings,
    /// The judge's name.
    pub judge: String,
    /// Whether the elicitation prompt (system `Always reply in {emotion}.`) or the neutral prompt is used.
    pub prompt: PromptKind,
    /// Whether last-prompt-token residuals are captured.
    pub capture: bool,
    /// The steering edit, if any.
    pub steering: Option<SteeringSettings>,
    /// Whether steering rows carry their own emotion's vectors, so that a batch may mix emotions. Steering
    /// stages written before per-row interventions held one emotion per batch and read as `false` (resuming
    /// one then asks for a new run folder); stages without steering keep `false`.
    #[serde(default)]
    pub per_row_steering: bool,
}

/// Which system prompt a stage uses (spec section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// `Always reply in {emotion}.\nKeep the reply to at most two sentences.`
    Elicitation,
    /// `Keep the reply to at most two sentences.`
    Neutral,
}

/// What a stage did, filled as it runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Whether every batch is committed and the replies merged.
    pub complete: bool,
    /// Prompts done.
    pub prompts: usize,
    /// New tokens generated (all committed batches).
    pub new_tokens: usize,
    /// Prompt tokens (all committed batches).
    pub prompt_tokens: usize,
    /// Seconds spent generating (model forward passes, all sessions).
    pub generate_seconds: f64,
    /// Seconds spent judging.
    pub judge_seconds: f64,
    /// Seconds in all, all sessions.
    pub seconds: f64,
    /// Peak resident memory seen, MB.
    pub peak_rss_mb: f64,
}

/// One stage of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageInfo {
    /// Its identity.
    pub settings: StageSettings,
    /// Its progress and costs.
    pub stats: StageStats,
}

/// `manifest.json`: what produced the run, so that a result can be traced to model, data and code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model.
    pub model: ModelInfo,
    /// Crate and LibTorch versions.
    pub versions: BTreeMap<String, String>,
    /// The exact prompt templates.
    pub prompts: BTreeMap<String, String>,
    /// Stages by name (`elicit`, `prompting-test`, `steering-test`, ...).
    pub stages: BTreeMap<String, StageInfo>,
}

impl Manifest {
    /// A manifest for a new run with `model`.
    pub fn new(model: ModelInfo) -> Manifest {
        let versions = BTreeMap::from([
            ("emo-directions".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("emo-model".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("emo-data".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("tch".to_string(), "0.24.0".to_string()),
            ("libtorch".to_string(), "2.11.0".to_string()),
        ]);
        let prompts = BTreeMap::from([
            ("elicitation_system".to_string(), emo_data::prompts::elicitation_system(Emotion::Anger).replace("anger", "{emotion}")),
            ("neutral_system".to_string(), emo_data::prompts::NEUTRAL_SYSTEM.to_string()),
            ("user".to_string(), "{scenario}\n{event}".to_string()),
        ]);
        Manifest { format_version: FORMAT_VERSION, model, versions, prompts, stages: BTreeMap::new() }
    }
}

/// The judge's verdict in a reply record: the paper's `{match, reason}` plus our score and failure flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// 1 when the reply expresses the target emotion (0 also when the judge failed, as upstream counted it).
    #[serde(rename = "match")]
    pub matched: u8,
    /// Why (the judge's name and score for local judges).
    pub reason: String,
    /// The judge's confidence in a match, 0..=1.
    pub score: f64,
    /// Whether the judge failed to decide (then `match` is 0).
    pub failed: bool,
}

/// One reply in the paper's record schema (`key`, `skeleton_id`, `theme`, `valence`, `emotion`, `gen_text`,
/// `judge`), plus where it sits in the run and how generation stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyRecord {
    /// `{skeleton_id}__{valence}__{emotion}`.
    pub key: String,
    /// The scenario's id.
    pub skeleton_id: String,
    /// The scenario's theme.
    pub theme: String,
    /// `positive`, `neutral` or `negative`.
    pub valence: String,
    /// The target emotion.
    pub emotion: String,
    /// The reply.
    pub gen_text: String,
    /// The verdict.
    pub judge: JudgeRecord,
    /// Index of the prompt in the stage's order.
    pub index: usize,
    /// Index of the scenario in the split.
    pub scenario: usize,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Reply length in tokens.
    pub new_tokens: usize,
    /// `eos` or `length`.
    pub stop: String,
}

impl ReplyRecord {
    /// The target emotion, parsed.
    pub fn emotion(&self) -> Result<Emotion> {
        Ok(self.emotion.parse()?)
    }

    /// The valence, parsed.
    pub fn valence(&self) -> Result<Valence> {
        Ok(self.valence.parse()?)
    }

    /// Whether the judge said it matches.
    pub fn matched(&self) -> bool {
        self.judge.matched == 1
    }
}

/// Reads reply records, naming the file and line of a bad one.
pub fn read_records(path: &Path) -> Result<Vec<ReplyRecord>> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| DirectionsError::Format { path: path.into(), msg: format!("line {}: {e}", i + 1) })
        })
        .collect()
}

fn records_jsonl(records: &[ReplyRecord]) -> String {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r).expect("records serialise"));
        s.push('\n');
    }
    s
}

/// One generating stage to run: its prompts in batches, and what to do to each batch.
pub struct Stage<'a> {
    /// Stage name (see [`RunDir::replies`]).
    pub name: String,
    /// The split's scenarios.
    pub scenarios: &'a [Scenario],
    /// Batches of prompts; each prompt's index in the stage is its position in the concatenation.
    pub batches: Vec<Vec<PromptItem>>,
    /// Identity of the stage.
    pub settings: StageSettings,
    /// For steering: the direction rows `[n_layers, d_model]` of each emotion, added at `hook_resid_post`.
    pub steering: Option<Steering>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// What a steering stage adds beyond its [`SteeringSettings`] (alpha and layers live there).
pub struct Steering {
    /// Directions per emotion, `[6, n_layers, d_model]`.
    pub directions: Tensor,
    /// Which tokens (its name is `SteeringSettings::positions`).
    pub positions: Positions,
}

impl Steering {
    /// One row per prompt of the batch, each adding its own emotion's directions.
    fn hook(&self, batch: &[PromptItem], edit: &SteeringSettings) -> Interventions {
        let rows = batch
            .iter()
            .map(|it| {
                let v = self.directions.get(it.emotion.index() as i64);
                (edit.layers.0..=edit.layers.1).fold(Intervention::none(), |row, l| {
                    row.with(Site::ResidPost.hook_point(l), Edit::AddRms(v.get(l as i64), edit.alpha))
                })
            })
            .collect();
        Interventions::new(rows, self.positions.clone())
    }
}

/// The key of a prompt in the paper's schema.
pub fn record_key(s: &Scenario, v: Valence, e: Emotion) -> String {
    format!("{}__{}__{}", s.skeleton_id, v.name(), e.name())
}

/// Runs (or resumes) a stage: generates, judges and commits every missing batch, then merges the replies.
/// Returns the stage's statistics.
pub fn run_stage(run: &RunDir, model: &Model, judge: &mut dyn Judge, stage: &Stage) -> Result<StageStats> {
    let total_start = Instant::now();
    let mut manifest = run.require_manifest()?;
    let mut stats = match manifest.stages.get(&stage.name) {
        Some(info) if info.settings != stage.settings => {
            return Err(DirectionsError::Invalid(format!(
                "{}: stage `{}` was started with other settings ({}); use a new run folder",
                run.path.display(),
                stage.name,
                settings_diff(&info.settings, &stage.settings),
            )))
        }
        Some(info) => info.stats.clone(),
        None => StageStats::default(),
    };
    if stage.steering.is_some() != stage.settings.steering.is_some() {
        return Err(DirectionsError::Invalid(format!(
            "stage `{}`: steering directions and steering settings must come together",
            stage.name
        )));
    }
    // Time of earlier sessions of a resumed stage; this session's is added batch by batch.
    let earlier_seconds = stats.seconds;
    let parts = run.parts(&stage.name);
    fs::create_dir_all(&parts).map_err(io(&parts))?;
    let n_layers = model.transformer.config().n_layers;
    let points: Vec<_> = (0..n_layers).flat_map(|l| Site::ALL.map(|s| s.hook_point(l))).collect();
    let total: usize = stage.batches.iter().map(Vec::len).sum();
    let bar = progress_bar(stage, total);
    let cfg = stage.settings.generation.config();
    let mut first_index = 0;
    let mut done_batches = 0;
    for (b, batch) in stage.batches.iter().enumerate() {
        let part = parts.join(format!("{b:05}.jsonl"));
        let shard = run.activations().join(format!("{b:05}.safetensors"));
        let committed = part.exists() && (!stage.settings.capture || shard.exists());
        if committed {
            bar.inc(batch.len() as u64);
            first_index += batch.len();
            done_batches += 1;
            continue;
        }
        let messages: Vec<Vec<ChatMessage>> = batch
            .iter()
            .map(|it| {
                let s = &stage.scenarios[it.scenario];
                match stage.settings.prompt {
                    PromptKind::Elicitation => emo_data::elicitation_prompt(it.emotion, s, it.valence),
                    PromptKind::Neutral => emo_data::neutral_prompt(s, it.valence),
                }
            })
            .collect();
        let prompts = messages.iter().map(|m| model.encode_chat(m)).collect::<emo_model::Result<Vec<_>>>()?;
        let mut capture = Capture::new(points.iter().copied(), Positions::LastPrompt);
        let mut hooks = HookSet::new();
        if stage.settings.capture {
            hooks.push(&mut capture);
        }
        if let (Some(steering), Some(edit)) = (&stage.steering, &stage.settings.steering) {
            hooks.push_owned(steering.hook(batch, edit));
        }
        let t = Instant::now();
        let generated = model.generate_ids(&prompts, &cfg, &mut hooks)?;
        drop(hooks);
        stats.generate_seconds += t.elapsed().as_secs_f64();
        let texts = generated.iter().map(|g| model.tokenizer.decode(&g.tokens, true)).collect::<emo_model::Result<Vec<_>>>()?;
        let t = Instant::now();
        let items: Vec<(Emotion, &str)> = batch.iter().zip(&texts).map(|(it, t)| (it.emotion, t.as_str())).collect();
        let verdicts = judge.judge(&items)?;
        stats.judge_seconds += t.elapsed().as_secs_f64();
        if stage.settings.capture {
            let tensors = Site::ALL
                .iter()
                .map(|&site| {
                    let per_layer = (0..n_layers)
                        .map(|l| capture.per_row(site.hook_point(l), batch.len()))
                        .collect::<emo_model::Result<Vec<_>>>()?;
                    Ok((site.name().to_string(), Tensor::stack(&per_layer, 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = BTreeMap::from([("first_index".to_string(), first_index.to_string())]);
            write_tensors(&shard, &tensors, &meta)?;
        }
        let records: Vec<ReplyRecord> = batch
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let s = &stage.scenarios[it.scenario];
                let v = &verdicts[i];
                ReplyRecord {
                    key: record_key(s, it.valence, it.emotion),
                    skeleton_id: s.skeleton_id.clone(),
                    theme: s.theme.clone(),
                    valence: it.valence.name().into(),
                    emotion: it.emotion.name().into(),
                    gen_text: texts[i].clone(),
                    judge: JudgeRecord {
                        matched: u8::from(v.matched == Some(true)),
                        reason: match &v.failure {
                            Some(f) => format!("{} failed: {f:?}", judge.name()),
                            None => format!("{} judge, score {:.3}", judge.name(), v.score),
                        },
                        score: v.score,
                        failed: v.matched.is_none(),
                    },
                    index: first_index + i,
                    scenario: it.scenario,
                    prompt_tokens: prompts[i].len(),
                    new_tokens: generated[i].tokens.len(),
                    stop: match generated[i].stop {
                        StopReason::Eos => "eos".into(),
                        StopReason::Length => "length".into(),
                    },
                }
            })
            .collect();
        stats.new_tokens += records.iter().map(|r| r.new_tokens).sum::<usize>();
        stats.prompt_tokens += records.iter().map(|r| r.prompt_tokens).sum::<usize>();
        stats.prompts += records.len();
        // The replies part is the commit marker: written last, atomically.
        write_atomic(&part, records_jsonl(&records).as_bytes())?;
        first_index += batch.len();
        done_batches += 1;
        bar.inc(batch.len() as u64);
        stats.peak_rss_mb = stats.peak_rss_mb.max(peak_rss_mb().unwrap_or(0.0));
        stats.seconds = earlier_seconds + total_start.elapsed().as_secs_f64();
        save_stage(run, &mut manifest, stage, &stats)?;
    }
    bar.finish_and_clear();
    if done_batches == stage.batches.len() {
        let mut all = Vec::with_capacity(total);
        for b in 0..stage.batches.len() {
            all.extend(read_records(&parts.join(format!("{b:05}.jsonl")))?);
        }
        write_atomic(&run.replies(&stage.name), records_jsonl(&all).as_bytes())?;
        // Counts from the committed records themselves: a kill between a commit and the manifest update
        // must not lose a batch from them.
        stats.prompts = all.len();
        stats.new_tokens = all.iter().map(|r| r.new_tokens).sum();
        stats.prompt_tokens = all.iter().map(|r| r.prompt_tokens).sum();
        stats.complete = true;
        stats.peak_rss_mb = stats.peak_rss_mb.max(peak_rss_mb().unwrap_or(0.0));
        save_stage(run, &mut manifest, stage, &stats)?;
    }
    Ok(stats)
}

fn save_stage(run: &RunDir, manifest: &mut Manifest, stage: &Stage, stats: &StageStats) -> Result<()> {
    manifest.stages.insert(stage.name.clone(), StageInfo { settings: stage.settings.clone(), stats: stats.clone() });
    write_json(&run.manifest(), manifest)
}

fn settings_diff(a: &StageSettings, b: &StageSettings) -> String {
    let (ja, jb) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let mut diffs = Vec::new();
    if let (Some(oa), Some(ob)) = (ja.as_object(), jb.as_object()) {
        for (k, va) in oa {
            if ob.get(k) != Some(va) {
                diffs.push(format!("{k}: was {va}, now {}", ob.get(k).cloned().unwrap_or_default()));
            }
        }
    }
    diffs.join("; ")
}

fn progress_bar(stage: &Stage, total: usize) -> ProgressBar {
    let bar = if stage.progress {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {bar:30} {pos}/{len} prompts, {per_sec}, ETA {eta}")
            .expect("valid template"),
    );
    bar.set_message(stage.name.clone());
    bar
}

/// The elicitation's activations and labels, in prompt order, read from the run folder.
pub fn load_activations(run: &RunDir) -> Result<crate::directions::Activations> {
    let manifest = run.require_manifest()?;
    let stage = manifest.stages.get(ELICIT).ok_or_else(|| DirectionsError::Invalid(format!("{}: no elicitation in this run", run.path.display())))?;
    if !stage.stats.complete {
        return Err(DirectionsError::Invalid(format!(
            "{}: the elicitation is not complete ({} prompts done); rerun the same `emo elicit` to finish it",
            run.path.display(),
            stage.stats.prompts
        )));
    }
    if !stage.settings.capture {
        return Err(DirectionsError::Invalid(format!("{}: the elicitation ran without capturing activations", run.path.display())));
    }
    let records = run.read_replies(ELICIT)?;
    let mut mids = Vec::new();
    let mut posts = Vec::new();
    let mut b = 0;
    let mut seen = 0;
    while seen < records.len() {
        let path = run.activations().join(format!("{b:05}.safetensors"));
        let mut f = read_tensors(&path)?;
        let first: usize = f.metadata.get("first_index").and_then(|v| v.parse().ok()).ok_or_else(|| DirectionsError::Format {
            path: path.clone(),
            msg: "missing first_index metadata".into(),
        })?;
        if first != seen {
            return Err(DirectionsError::Format { path, msg: format!("starts at prompt {first}, expected {seen}") });
        }
        let mid = f.take(&path, Site::ResidMid.name(), None)?;
        let post = f.take(&path, Site::ResidPost.name(), Some(&mid.size()))?;
        seen += mid.size()[0] as usize;
        mids.push(mid);
        posts.push(post);
        b += 1;
    }
    let (l, d) = (manifest.model.n_layers as i64, manifest.model.d_model as i64);
    let resid_mid = Tensor::cat(&mids, 0);
    if resid_mid.size() != [records.len() as i64, l, d] {
        return Err(DirectionsError::Format {
            path: run.activations(),
            msg: format!("activations have shape {:?}, expected [{}, {l}, {d}]", resid_mid.size(), records.len()),
        });
    }
    let emotion = records.iter().map(|r| r.emotion()).collect::<Result<Vec<_>>>()?;
    let group = records
        .iter()
        .map(|r| Ok(r.scenario * 3 + r.valence()?.index()))
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::directions::Activations {
        resid_mid,
        resid_post: Tensor::cat(&posts, 0),
        emotion,
        group,
        matched: records.iter().map(ReplyRecord::matched).collect(),
    })
}
