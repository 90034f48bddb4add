//! A run folder and its manifest: what produced every file in it (model files by sha256, data, code
//! versions, prompt templates) and the state of each stage, so that a result can be traced and a killed run
//! resumed.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use emo_data::{PromptSet, Scenario};
use emo_model::Model;
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, RunError};
use crate::records::ReplyRecord;
use crate::shard::Shard;
use crate::store::{read_json, sha256_bytes, sha256_file, write_json};

/// The stage whose activations give the directions.
pub const ELICIT: &str = "elicit";

/// Manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// The files of a run folder.
///
/// Reading what a finished run holds (`emo paper` writes `runs/paper`):
///
/// ```no_run
/// use emo_run::RunDir;
/// let run = RunDir::new("runs/paper");
/// let manifest = run.require_manifest()?;
/// for (name, stage) in &manifest.stages {
///     println!("{name}: {}, {} prompts, complete: {}", stage.kind, stage.stats.prompts, stage.stats.complete);
/// }
/// let replies = run.read_replies("steering-test")?;
/// let matched = replies.iter().filter(|r| r.matched()).count();
/// println!("steering: {matched} of {} replies judged on target", replies.len());
/// let directions = emo_steer::EmotionDirections::load(&run.directions())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
    /// The shard of every stage this process runs in the folder (`--shard I/N`), or `None` for all batches.
    pub shard: Option<Shard>,
}

impl RunDir {
    /// A run folder (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into(), shard: None }
    }

    /// The same folder, its stages run as shard `shard` (see [`crate::shard`]); `None` runs them whole.
    pub fn sharded(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// Reads the manifest, lets `change` edit it and writes it back, all under the run's lock
    /// (`.manifest.lock`), so that processes sharing the folder (shards) never lose each other's changes.
    pub fn update_manifest<T>(&self, change: impl FnOnce(&mut Manifest) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let before = self.require_manifest()?;
        let mut manifest = before.clone();
        let out = change(&mut manifest)?;
        // Most calls (a stage resumed, a complete stage met again) change nothing: no write then.
        if manifest != before {
            write_json(&self.manifest(), &manifest)?;
        }
        Ok(out)
    }

    /// An exclusive lock on the run folder, released when dropped.
    fn lock(&self) -> Result<RunLock> {
        let path = self.path.join(".manifest.lock");
        fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        // SAFETY: flock on a file descriptor this function owns; the lock goes with the descriptor.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(RunLock { _file: file })
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

    /// A stage's merged output `{stage}.{ext}` (a forward-only stage's table or statistics).
    pub fn output(&self, stage: &str, ext: &str) -> PathBuf {
        self.path.join(format!("{stage}.{ext}"))
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
        self.path.join(emo_steer::directions::DIRECTIONS_FILE)
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
            RunError::Invalid(format!("{} is not a run folder (no manifest.json); start one with `emo elicit --out`", self.path.display()))
        })
    }

    /// Reads the committed replies of a complete stage.
    pub fn read_replies(&self, stage: &str) -> Result<Vec<ReplyRecord>> {
        crate::records::read_records(&self.replies(stage))
    }

    /// Opens the run folder for `model`: writes a new manifest (recording `versions` beside this crate's and
    /// the model layer's), or checks that the existing one was made with the same model files.
    pub fn open(&self, model: ModelInfo, versions: &[(&str, &str)]) -> Result<Manifest> {
        // Under the lock: shards starting together on a new folder must agree on one manifest.
        let _lock = self.lock()?;
        match self.read_manifest()? {
            Some(m) => {
                m.model.check_same(&model, &self.path)?;
                Ok(m)
            }
            None => {
                let mut m = Manifest::new(model);
                m.versions.extend(versions.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                write_json(&self.manifest(), &m)?;
                Ok(m)
            }
        }
    }
}

impl RunDir {
    /// Makes `set` the run's prompt set: recorded in a run without stages, accepted when it is already the
    /// run's, refused otherwise (a run never mixes prompt sets; the error names both).
    pub fn use_prompts(&self, manifest: &mut Manifest, set: &PromptSet) -> Result<()> {
        let same = |m: &Manifest| {
            let current = m.prompt_set();
            current.elicitation_system == set.elicitation_system && current.neutral_system == set.neutral_system
        };
        if same(manifest) {
            return Ok(());
        }
        *manifest = self.update_manifest(|m| {
            if !same(m) && m.stages.is_empty() {
                m.record_prompts(set);
            }
            Ok(m.clone())
        })?;
        if !same(manifest) {
            let current = manifest.prompt_set();
            return Err(RunError::Invalid(format!(
                "{}: the run uses prompt set `{}` (elicitation {:?}, neutral {:?}); `{}` differs: use another run folder",
                self.path.display(),
                current.name,
                current.elicitation_system,
                current.neutral_system,
                set.name
            )));
        }
        Ok(())
    }
}

/// The run folder's lock, held while the descriptor is open.
struct RunLock {
    _file: fs::File,
}

/// The model a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The reference given (alias, file or folder).
    pub reference: String,
    /// The file or folder loaded.
    pub path: String,
    /// sha256 of the file; for a Hugging Face folder, of the lines `{name} {sha256}` of its
    /// [`ModelInfo::files`] in name order. (Runs written before version 0.1.0's weight hashing held the sha256
    /// of `config.json` alone and no `files`.)
    pub sha256: String,
    /// sha256 of each file that identifies the model: the file itself, or a folder's `config.json`,
    /// tokenizer files and weight shards.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// Number of layers.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// The weights' dtype and format as loaded (`bf16, dequantized`, `f32, packed`): a resumed run must use
    /// the same, or its stages would mix numerics. Absent from runs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<String>,
}

impl ModelInfo {
    /// Describes a loaded model, hashing every file that identifies it (two fine-tunes of one base differ in
    /// their weight shards, not in `config.json`).
    pub fn of(model: &Model, reference: &str) -> Result<ModelInfo> {
        let cfg = model.transformer.config();
        let (sha256, files) = model_identity(&model.path)?;
        Ok(ModelInfo {
            reference: reference.to_string(),
            path: model.path.display().to_string(),
            sha256,
            files,
            architecture: format!("{:?}", cfg.arch).to_lowercase(),
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            numerics: Some(numerics(model)),
        })
    }

    /// Ok when `other` is the same model; else an error saying what differs and what to do. `run` names the
    /// folder in the message.
    pub fn check_same(&self, other: &ModelInfo, run: &Path) -> Result<()> {
        if self.sha256 == other.sha256 {
            return match (&self.numerics, &other.numerics) {
                (Some(was), Some(now)) if was != now => Err(RunError::Invalid(format!(
                    "{} was made with the model's weights as {was}, not {now}: pass the same --dtype and --weights, or use a new run folder",
                    run.display()
                ))),
                _ => Ok(()),
            };
        }
        if self.files.is_empty() && other.files.get("config.json") == Some(&self.sha256) {
            return Err(RunError::Invalid(format!(
                "{} was made by an older version that identified the model folder {} by its config.json alone, so \
                 its weights cannot be checked; finish it with that version, or start a new run folder",
                run.display(),
                self.path
            )));
        }
        Err(RunError::Invalid(format!(
            "{} was made with model {} (sha256 {}), not {} (sha256 {}); use a new run folder",
            run.display(),
            self.path,
            self.sha256,
            other.path,
            other.sha256
        )))
    }
}

/// `{dtype}, {packed|dequantized}`: how `model`'s weights are held.
fn numerics(model: &Model) -> String {
    let (_, packed, _) = model.transformer.weight_bytes();
    let format = if packed > 0 { "packed" } else { "dequantized" };
    format!("{}, {format}", emo_model::device::kind_name(model.transformer.kind()))
}

/// The sha256 that identifies the model file or folder at `path`, and the per-file hashes it is made of: a
/// file's own hash, or for a Hugging Face folder the hash of the lines `{name} {sha256}` of its
/// `config.json`, tokenizer files and weight shards.
pub fn model_identity(path: &Path) -> Result<(String, BTreeMap<String, String>)> {
    if !path.is_dir() {
        let sha = sha256_file(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok((sha.clone(), BTreeMap::from([(name, sha)])));
    }
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let identifies = matches!(name.as_str(), "config.json" | "tokenizer.json" | "tokenizer_config.json")
            || name.ends_with(".safetensors")
            || name.ends_with(".gguf");
        if identifies && entry.path().is_file() {
            files.insert(name, sha256_file(&entry.path())?);
        }
    }
    if !files.contains_key("config.json") {
        return Err(RunError::Invalid(format!("{}: a model folder without config.json", path.display())));
    }
    let lines: String = files.iter().map(|(n, s)| format!("{n} {s}\n")).collect();
    Ok((sha256_bytes(lines.as_bytes()), files))
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
    /// The scenarios this stage ran on, loaded again from their source (the built-in data or the file or
    /// folder given, spread to the count used) and checked against the recorded sha256: a later stage on the
    /// same prompts can rely on them.
    pub fn scenarios(&self) -> Result<Vec<Scenario>> {
        let split: emo_data::Split = self.split.parse()?;
        let source = (self.source != "builtin").then(|| Path::new(&self.source));
        let all = emo_data::sev::load_split(source, split)?;
        let used = emo_data::sev::spread(&all, self.scenarios);
        let sha = sha256_bytes(emo_data::sev::to_jsonl(&used).as_bytes());
        if used.len() != self.scenarios || sha != self.sha256 {
            return Err(RunError::Invalid(format!(
                "the {} split from {} has changed since the run used it ({} scenarios, sha256 {}; now {}, {}); use the \
                 data the run was made with",
                self.split,
                self.source,
                self.scenarios,
                self.sha256,
                used.len(),
                sha
            )));
        }
        Ok(used)
    }

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

/// What a stage did, filled as it runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageStats {
    /// Whether every batch is committed and the stage's outputs merged.
    pub complete: bool,
    /// Prompts done (all committed batches).
    pub prompts: usize,
    /// Forward rows evaluated by a forward-only stage (prompts x interventions for a sweep).
    pub rows: usize,
    /// New tokens generated (all committed batches).
    pub new_tokens: usize,
    /// Prompt tokens (all committed batches).
    pub prompt_tokens: usize,
    /// Seconds spent in the model (forward passes and generation, all sessions).
    pub generate_seconds: f64,
    /// Seconds spent judging.
    pub judge_seconds: f64,
    /// Seconds in all, all sessions.
    pub seconds: f64,
    /// Peak resident memory seen, MB.
    pub peak_rss_mb: f64,
}

/// The kind of the stages written before stages had kinds: generation (and judging) of replies.
pub const GENERATION: &str = "generation";

fn generation_kind() -> String {
    GENERATION.to_string()
}

/// One stage of a run: its kind, its settings (the kind's own type, kept as JSON here) and its progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageInfo {
    /// What kind of work: [`GENERATION`], `sweep`, `reduce`, ...
    #[serde(default = "generation_kind")]
    pub kind: String,
    /// Its identity, in its kind's settings type.
    pub settings: serde_json::Value,
    /// Its progress and costs (for a sharded stage not yet merged, in its shards' progress files instead).
    pub stats: StageStats,
    /// Into how many shards the stage was split (`--shard I/N`); absent for a stage run whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}

impl StageInfo {
    /// The settings as `S`, or an error naming the stage.
    pub fn settings_as<S: serde::de::DeserializeOwned>(&self, name: &str) -> Result<S> {
        serde_json::from_value(self.settings.clone())
            .map_err(|e| RunError::Invalid(format!("stage `{name}` ({}) has settings this version cannot read: {e}", self.kind)))
    }
}

impl StageInfo {
    /// The scenarios a generating stage ran on (every generating stage records `dataset` in its settings).
    pub fn dataset(&self, name: &str) -> Result<DatasetInfo> {
        #[derive(Deserialize)]
        struct WithDataset {
            dataset: DatasetInfo,
        }
        Ok(self.settings_as::<WithDataset>(name)?.dataset)
    }
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
    /// The run's elicitation, which sections 6 and 7 read: an error naming `run` when it is missing or not
    /// complete.
    pub fn complete_elicitation(&self, run: &Path) -> Result<&StageInfo> {
        self.stages
            .get(ELICIT)
            .filter(|i| i.stats.complete)
            .ok_or_else(|| RunError::Invalid(format!("{}: no complete elicitation; run `emo elicit` first", run.display())))
    }
}

impl Manifest {
    /// A manifest for a new run with `model`, recording the versions of the crates below the section crates,
    /// of tch and of the LibTorch linked.
    pub fn new(model: ModelInfo) -> Manifest {
        let versions = BTreeMap::from([
            ("emo-model".to_string(), emo_model::VERSION.to_string()),
            ("emo-data".to_string(), emo_data::VERSION.to_string()),
            ("emo-steer".to_string(), emo_steer::VERSION.to_string()),
            ("emo-run".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("tch".to_string(), emo_model::TCH_VERSION.to_string()),
            ("libtorch".to_string(), emo_model::LIBTORCH_VERSION.to_string()),
        ]);
        let mut m = Manifest { format_version: FORMAT_VERSION, model, versions, prompts: BTreeMap::new(), stages: BTreeMap::new() };
        m.record_prompts(&PromptSet::paper());
        m
    }

    /// The prompt set every stage of the run uses. Manifests written before prompt sets existed hold the
    /// paper's texts without a `prompt_set` key and read as `paper`.
    pub fn prompt_set(&self) -> PromptSet {
        let paper = PromptSet::paper();
        let text = |key: &str, default: &str| self.prompts.get(key).cloned().unwrap_or_else(|| default.to_string());
        let elicitation_system = text("elicitation_system", &paper.elicitation_system);
        let neutral_system = text("neutral_system", &paper.neutral_system);
        let same = elicitation_system == paper.elicitation_system && neutral_system == paper.neutral_system;
        let name = self.prompts.get("prompt_set").cloned().unwrap_or_else(|| if same { paper.name.clone() } else { "custom".into() });
        PromptSet { name, elicitation_system, neutral_system }
    }

    fn record_prompts(&mut self, set: &PromptSet) {
        self.prompts.insert("prompt_set".into(), set.name.clone());
        self.prompts.insert("elicitation_system".into(), set.elicitation_system.clone());
        self.prompts.insert("neutral_system".into(), set.neutral_system.clone());
        self.prompts.insert("user".into(), "{scenario}\n{event}".into());
    }
}
