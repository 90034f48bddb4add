//! The generating stage every section runs (elicitation, prompting on another split, steering, circuit
//! modulation) on the resumable loop of [`crate::stage`]: prompts in fixed batches, each batch generated,
//! judged and committed as its own part files (activations first, replies last, both written then renamed),
//! so a run killed at any moment resumes at the first uncommitted batch and recomputes nothing finished.
//! A stage's per-row edits come as [`RowEdits`] (steering and circuit modulation, from `emo-steer`
//! and `emo-modulate`), described in its settings.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use emo_data::{Emotion, Judge, PromptItem, Scenario};
use emo_model::{Capture, ChatMessage, GenerationConfig, HookSet, Model, Positions, StopReason};
use emo_steer::{RowEdits, Site, Steering};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Result, RunError};
use crate::folder::{DatasetInfo, RunDir, StageStats, GENERATION};
use crate::records::{read_records, record_key, records_jsonl, JudgeRecord, ReplyRecord};
use crate::stage::{part_file, StageWork};
use crate::store::{write_atomic, write_tensors};

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

impl SteeringSettings {
    /// The settings of `steering`, as a stage records them.
    pub fn of(steering: &Steering) -> Self {
        SteeringSettings { alpha: steering.alpha, layers: steering.layers, site: steering.site, positions: steering.positions.to_string() }
    }
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
    /// Whether the run's elicitation prompt (the paper's: system `Always reply in {emotion}.`) or its neutral
    /// prompt is used.
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
    /// Circuit modulation, if any (section 7); absent from stages written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulation: Option<ModulationSettings>,
}

impl StageSettings {
    /// Plain generation over `dataset`: no capture, no edits (fill those in with struct update syntax).
    pub fn plain(dataset: DatasetInfo, batch_size: usize, generation: &GenerationConfig, judge: &str, prompt: PromptKind) -> Self {
        StageSettings {
            dataset,
            batch_size,
            generation: GenerationSettings::from(generation),
            judge: judge.to_string(),
            prompt,
            capture: false,
            steering: None,
            per_row_steering: false,
            modulation: None,
        }
    }
}

/// The circuit modulation of a generating stage (paper section 7; the edits themselves come from
/// `emo-modulate` as [`RowEdits`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModulationSettings {
    /// sha256 of every circuit file and the delta_mu tensors, in order.
    pub circuits: Vec<String>,
    /// Scale s per emotion, in `Emotion::ALL` order.
    pub scales: Vec<f64>,
    /// Where neurons are stimulated (the authors: the last position of every forward call).
    pub neuron_positions: String,
    /// Where heads are stimulated (the authors: every position).
    pub head_positions: String,
}

/// Which of the run's two system prompts a stage uses (spec section 2; the texts are the run's
/// [`emo_data::PromptSet`], the paper's unless chosen otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// `Always reply in {emotion}.\nKeep the reply to at most two sentences.`
    Elicitation,
    /// `Keep the reply to at most two sentences.`
    Neutral,
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
    /// The per-row edits of every batch (steering, circuit modulation); `None` for plain generation.
    pub edits: Option<Box<dyn RowEdits + 'a>>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// A stage's prompts in batches of `batch_size` (the last one may be shorter).
pub fn batches(items: &[PromptItem], batch_size: usize) -> Result<Vec<Vec<PromptItem>>> {
    if batch_size == 0 {
        return Err(RunError::Invalid("batch size must be at least 1".into()));
    }
    Ok(items.chunks(batch_size).map(<[_]>::to_vec).collect())
}

/// Runs (or resumes) a generating stage: generates, judges and commits every missing batch, then merges the
/// replies. Returns the stage's statistics.
pub fn run_stage(run: &RunDir, model: &Model, judge: &mut dyn Judge, stage: &Stage) -> Result<StageStats> {
    let described = stage.settings.steering.is_some() || stage.settings.modulation.is_some();
    if stage.edits.is_some() != described {
        return Err(RunError::Invalid(format!("stage `{}`: edits and their settings (steering or modulation) must come together", stage.name)));
    }
    let points = (0..model.transformer.config().n_layers).flat_map(|l| Site::ALL.map(|s| s.hook_point(l))).collect();
    // Every stage of a run uses the run's prompt set (RunDir::use_prompts keeps it from changing).
    let prompts = run.require_manifest()?.prompt_set();
    let mut work = Generation { run, model, judge, stage, points, prompts };
    crate::stage::run_stage(run, &stage.name, &mut work, stage.progress)
}

/// A [`Stage`] as the shared loop's work: per batch, the replies part `{b:05}.jsonl` is the commit marker,
/// written after the batch's activation shard.
struct Generation<'r, 'a> {
    run: &'r RunDir,
    model: &'r Model,
    judge: &'r mut dyn Judge,
    stage: &'r Stage<'a>,
    points: Vec<emo_model::HookPoint>,
    prompts: emo_data::PromptSet,
}

impl Generation<'_, '_> {
    fn shard(&self, b: usize) -> std::path::PathBuf {
        part_file(&self.run.activations(), b, "safetensors")
    }
}

impl StageWork for Generation<'_, '_> {
    type Settings = StageSettings;

    fn kind(&self) -> &str {
        GENERATION
    }

    fn settings(&self) -> &StageSettings {
        &self.stage.settings
    }

    fn batch_sizes(&self) -> Vec<usize> {
        self.stage.batches.iter().map(Vec::len).collect()
    }

    fn committed(&self, parts: &Path, b: usize) -> bool {
        part_file(parts, b, "jsonl").exists() && (!self.stage.settings.capture || self.shard(b).exists())
    }

    fn run_batch(&mut self, parts: &Path, b: usize, first_index: usize, stats: &mut StageStats) -> Result<()> {
        let (stage, model) = (self.stage, self.model);
        let batch = &stage.batches[b];
        let n_layers = model.transformer.config().n_layers;
        let messages: Vec<Vec<ChatMessage>> = batch
            .iter()
            .map(|it| {
                let s = &stage.scenarios[it.scenario];
                match stage.settings.prompt {
                    PromptKind::Elicitation => self.prompts.elicitation_prompt(it.emotion, s, it.valence),
                    PromptKind::Neutral => self.prompts.neutral_prompt(s, it.valence),
                }
            })
            .collect();
        let prompts = messages.iter().map(|m| model.encode_chat(m)).collect::<emo_model::Result<Vec<_>>>()?;
        let mut capture = Capture::new(self.points.iter().copied(), Positions::LastPrompt);
        let mut hooks = HookSet::new();
        if stage.settings.capture {
            hooks.push(&mut capture);
        }
        if let Some(edits) = &stage.edits {
            let emotions: Vec<Option<Emotion>> = batch.iter().map(|it| Some(it.emotion)).collect();
            for hook in edits.hooks(&emotions)? {
                hooks.push_owned(hook);
            }
        }
        let t = Instant::now();
        let generated = model.generate_ids(&prompts, &stage.settings.generation.config(), &mut hooks)?;
        drop(hooks);
        stats.generate_seconds += t.elapsed().as_secs_f64();
        let texts = generated.iter().map(|g| model.tokenizer.decode(&g.tokens, true)).collect::<emo_model::Result<Vec<_>>>()?;
        let t = Instant::now();
        let items: Vec<(Emotion, &str)> = batch.iter().zip(&texts).map(|(it, t)| (it.emotion, t.as_str())).collect();
        let verdicts = self.judge.judge(&items)?;
        stats.judge_seconds += t.elapsed().as_secs_f64();
        if stage.settings.capture {
            let tensors = Site::ALL
                .iter()
                .map(|&site| {
                    let per_layer = (0..n_layers).map(|l| capture.per_row(site.hook_point(l), batch.len())).collect::<emo_model::Result<Vec<_>>>()?;
                    Ok((site.name().to_string(), Tensor::stack(&per_layer, 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = BTreeMap::from([("first_index".to_string(), first_index.to_string())]);
            write_tensors(&self.shard(b), &tensors, &meta)?;
        }
        let judge_name = self.judge.name();
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
                            Some(f) => format!("{judge_name} failed: {f:?}"),
                            None => format!("{judge_name} judge, score {:.3}", v.score),
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
                        StopReason::NonFinite => "non_finite".into(),
                    },
                }
            })
            .collect();
        stats.new_tokens += records.iter().map(|r| r.new_tokens).sum::<usize>();
        stats.prompt_tokens += records.iter().map(|r| r.prompt_tokens).sum::<usize>();
        stats.prompts += records.len();
        // The replies part is the commit marker: written last, atomically.
        write_atomic(&part_file(parts, b, "jsonl"), records_jsonl(&records).as_bytes())
    }

    fn finish(&mut self, run: &RunDir, name: &str, parts: &Path, stats: &mut StageStats) -> Result<()> {
        merge_replies(run, name, parts, self.stage.batches.len(), stats)
    }
}

/// A generating stage's merge (whole or sharded, see [`crate::shard`]): the replies of its `n_batches`
/// batches in `parts`, in batch order, into the stage's reply file; the counts in `stats` are taken from the
/// committed records themselves (a kill between a commit and the manifest update must not lose a batch).
pub fn merge_replies(run: &RunDir, name: &str, parts: &Path, n_batches: usize, stats: &mut StageStats) -> Result<()> {
    let mut all = Vec::new();
    for b in 0..n_batches {
        all.extend(read_records(&part_file(parts, b, "jsonl"))?);
    }
    write_atomic(&run.replies(name), records_jsonl(&all).as_bytes())?;
    stats.prompts = all.len();
    stats.new_tokens = all.iter().map(|r| r.new_tokens).sum();
    stats.prompt_tokens = all.iter().map(|r| r.prompt_tokens).sum();
    Ok(())
}
