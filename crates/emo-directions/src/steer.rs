//! Steering validation (spec section 6): neutral prompt, `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post` of
//! a layer range, at the last prompt token and every generated token by default — the edit and its checked
//! settings are `emo_steer::Steering`'s, the generating stage `emo_run::generation`'s.
use emo_data::{Emotion, PromptItem, Scenario};
use emo_model::GenerationConfig;
use emo_run::generation::{batches, PromptKind, Stage, StageSettings, SteeringSettings};
use emo_steer::Steering;

use crate::error::Result;
use crate::run::DatasetInfo;

/// How to run a steering stage (the steering itself is a [`Steering`]).
#[derive(Clone, Debug)]
pub struct SteerOptions {
    /// Prompts per batch (rows of one batch may steer towards different emotions).
    pub batch_size: usize,
    /// Decoding (the paper: greedy, min 10, penalty 1.05, no repeated trigram).
    pub generation: GenerationConfig,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for SteerOptions {
    fn default() -> Self {
        SteerOptions { batch_size: 32, generation: GenerationConfig::steering(), progress: true }
    }
}

/// The steering stage over `scenarios`: every scenario x valence for each emotion, emotion-major, in full
/// batches whose rows may hold different emotions, each steered as `steering` says.
pub fn steering_stage<'a>(
    name: String,
    scenarios: &'a [Scenario],
    dataset: DatasetInfo,
    judge: &str,
    steering: &Steering,
    opts: &SteerOptions,
) -> Result<Stage<'a>> {
    steering.check()?;
    let items = PromptItem::emotion_major(scenarios, &Emotion::ALL);
    Ok(Stage {
        settings: StageSettings {
            steering: Some(SteeringSettings::of(steering)),
            per_row_steering: true,
            ..StageSettings::plain(dataset, opts.batch_size, &opts.generation, judge, PromptKind::Neutral)
        },
        name,
        scenarios,
        batches: batches(&items, opts.batch_size)?,
        edits: Some(Box::new(steering.clone())),
        progress: opts.progress,
    })
}
