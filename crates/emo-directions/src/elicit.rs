//! Elicitation (spec sections 2-4): every scenario x valence x emotion with the elicitation prompt, greedy
//! batched generation, the last prompt token's `hook_resid_mid` and `hook_resid_post` of every layer captured in
//! the prefill of the same pass, every reply judged.
use emo_data::{PromptItem, Scenario, Split};
use emo_model::{GenerationConfig, Model};

use emo_run::generation::{batches, PromptKind, Stage, StageSettings};

use crate::error::Result;
use crate::run::{DatasetInfo, Manifest, ModelInfo, RunDir, ELICIT};

/// How to run an elicitation.
#[derive(Clone, Debug)]
pub struct ElicitOptions {
    /// Prompts per batch.
    pub batch_size: usize,
    /// Decoding (the paper: greedy, 100 new tokens).
    pub generation: GenerationConfig,
    /// Capture the residuals (off only to measure what capturing costs).
    pub capture: bool,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for ElicitOptions {
    fn default() -> Self {
        ElicitOptions { batch_size: 32, generation: GenerationConfig::elicitation(), capture: true, progress: true }
    }
}

/// Opens a run folder for `model`: writes a new manifest, or checks that an existing one was made with the same
/// model files.
pub fn open_run(run: &RunDir, model: &Model, reference: &str) -> Result<Manifest> {
    run.open(ModelInfo::of(model, reference)?, &[("emo-directions", env!("CARGO_PKG_VERSION"))])
}

/// The stage name of an elicitation on `split` in a run: `elicit` for the run's first (the one the directions
/// come from), `prompting-{split}` for another split (replies and verdicts only).
pub fn stage_name(manifest: &Manifest, split: Split) -> String {
    let elicit_split = manifest.stages.get(ELICIT).and_then(|info| info.dataset(ELICIT).ok()).map(|d| d.split);
    match elicit_split {
        Some(s) if s != split.to_string() => format!("prompting-{split}"),
        _ => ELICIT.to_string(),
    }
}

/// The elicitation stage over `scenarios` (prompt order: scenario, valence, emotion; fixed-size batches).
pub fn elicitation_stage<'a>(name: String, scenarios: &'a [Scenario], dataset: DatasetInfo, judge: &str, opts: &ElicitOptions) -> Result<Stage<'a>> {
    let items = PromptItem::all(scenarios);
    Ok(Stage {
        settings: StageSettings {
            // Only the run's own elicitation feeds the directions.
            capture: opts.capture && name == ELICIT,
            ..StageSettings::plain(dataset, opts.batch_size, &opts.generation, judge, PromptKind::Elicitation)
        },
        name,
        scenarios,
        batches: batches(&items, opts.batch_size)?,
        edits: None,
        progress: opts.progress,
    })
}
