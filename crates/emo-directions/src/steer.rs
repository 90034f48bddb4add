//! Steering validation (spec section 6): neutral prompt, `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post` of
//! a layer range, at the last prompt token and every generated token by default.
use emo_data::{Emotion, PromptItem, Scenario, Valence};
use emo_model::{GenerationConfig, Positions, TransformerConfig};

use crate::directions::{EmotionDirections, Site};
use crate::error::{DirectionsError, Result};
use crate::run::{DatasetInfo, PromptKind, Stage, StageSettings, Steering, SteeringSettings};

/// How to steer.
#[derive(Clone, Debug)]
pub struct SteerOptions {
    /// The paper's alpha (8).
    pub alpha: f64,
    /// Inclusive layer range; `None` = the paper's 11..=20 of 28 scaled to the model's depth.
    pub layers: Option<(usize, usize)>,
    /// Whose directions are added (the paper: the MLP site, `resid_post`).
    pub site: Site,
    /// Which tokens are edited (default: the authors' last position of every forward call).
    pub positions: Positions,
    /// Prompts per batch (rows of one batch may steer towards different emotions).
    pub batch_size: usize,
    /// Decoding (the paper: greedy, min 10, penalty 1.05, no repeated trigram).
    pub generation: GenerationConfig,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for SteerOptions {
    fn default() -> Self {
        SteerOptions {
            alpha: emo_run::paper::STEERING_ALPHA,
            layers: None,
            site: Site::ResidPost,
            positions: Positions::LastPromptAndGenerated,
            batch_size: 32,
            generation: GenerationConfig::steering(),
            progress: true,
        }
    }
}

pub use emo_steer::steer::{default_layers, steering_control, steering_edit};

/// The steering stage over `scenarios`: every scenario x valence for each emotion, emotion-major, in full
/// batches whose rows may hold different emotions.
pub fn steering_stage<'a>(
    name: String,
    scenarios: &'a [Scenario],
    dataset: DatasetInfo,
    judge: &str,
    directions: &EmotionDirections,
    cfg: &TransformerConfig,
    opts: &SteerOptions,
) -> Result<Stage<'a>> {
    if opts.batch_size == 0 {
        return Err(DirectionsError::Invalid("batch size must be at least 1".into()));
    }
    let (l, d) = directions.dims();
    if (l, d) != (cfg.n_layers, cfg.d_model) {
        return Err(DirectionsError::Invalid(format!(
            "directions are [{l} layers, {d}] but the model has {} layers of width {}",
            cfg.n_layers, cfg.d_model
        )));
    }
    let layers = opts.layers.unwrap_or_else(|| default_layers(cfg));
    if layers.0 > layers.1 || layers.1 >= l {
        return Err(DirectionsError::Invalid(format!("layer range {}..={} is not within 0..{l}", layers.0, layers.1)));
    }
    // Emotion-major order, packed into full batches: each row carries its own emotion's vectors.
    let items: Vec<PromptItem> = Emotion::ALL
        .into_iter()
        .flat_map(|emotion| (0..scenarios.len()).flat_map(move |scenario| Valence::ALL.map(|valence| PromptItem { scenario, valence, emotion })))
        .collect();
    let batches = items.chunks(opts.batch_size).map(<[_]>::to_vec).collect();
    let settings = SteeringSettings { alpha: opts.alpha, layers, site: opts.site, positions: opts.positions.to_string() };
    Ok(Stage {
        settings: StageSettings {
            steering: Some(settings.clone()),
            per_row_steering: true,
            ..StageSettings::plain(dataset, opts.batch_size, &opts.generation, judge, PromptKind::Neutral)
        },
        name,
        scenarios,
        batches,
        edits: Some(Box::new(Steering { directions: directions.site(opts.site).shallow_clone(), positions: opts.positions.clone(), settings })),
        progress: opts.progress,
    })
}
