//! Steering validation (spec section 6): neutral prompt, `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post` of
//! a layer range, at the last prompt token and every generated token by default.
use emo_data::{Emotion, PromptItem, Scenario, Valence};
use emo_model::{GenerationConfig, Positions, TransformerConfig};

use crate::directions::{EmotionDirections, Site};
use crate::error::{DirectionsError, Result};
use crate::run::{DatasetInfo, GenerationSettings, PromptKind, Stage, StageSettings, Steering, SteeringSettings};

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
    /// Prompts per batch (a batch holds one emotion).
    pub batch_size: usize,
    /// Decoding (the paper: greedy, min 10, penalty 1.05, no repeated trigram).
    pub generation: GenerationConfig,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for SteerOptions {
    fn default() -> Self {
        SteerOptions {
            alpha: 8.0,
            layers: None,
            site: Site::ResidPost,
            positions: Positions::LastPromptAndGenerated,
            batch_size: 32,
            generation: GenerationConfig::steering(),
            progress: true,
        }
    }
}

/// The paper's steering layers, 11..=20 of 28, scaled to `cfg`'s depth.
pub fn default_layers(cfg: &TransformerConfig) -> (usize, usize) {
    (cfg.scale_layer(11, 28), cfg.scale_layer(20, 28))
}

/// Parses a positions mode: `last-prompt-and-generated` (default), `last-prompt`, `generated`, `prompt`, `all`.
pub fn parse_positions(s: &str) -> Result<Positions> {
    Ok(match s {
        "last-prompt-and-generated" => Positions::LastPromptAndGenerated,
        "last-prompt" => Positions::LastPrompt,
        "generated" => Positions::Generated,
        "prompt" => Positions::Prompt,
        "all" => Positions::All,
        _ => {
            return Err(DirectionsError::Invalid(format!(
                "unknown positions `{s}` (expected last-prompt-and-generated, last-prompt, generated, prompt or all)"
            )))
        }
    })
}

/// The name of a positions mode, as [`parse_positions`] reads it.
pub fn positions_name(p: &Positions) -> String {
    match p {
        Positions::LastPromptAndGenerated => "last-prompt-and-generated".into(),
        Positions::LastPrompt => "last-prompt".into(),
        Positions::Generated => "generated".into(),
        Positions::Prompt => "prompt".into(),
        Positions::All => "all".into(),
        Positions::Range(a, b) => format!("{a}..{b}"),
    }
}

/// The steering stage over `scenarios`: every scenario x valence for each emotion, emotion-major so that a
/// batch shares one steering vector.
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
    let mut batches = Vec::new();
    for emotion in Emotion::ALL {
        let items: Vec<PromptItem> = (0..scenarios.len())
            .flat_map(|scenario| Valence::ALL.map(|valence| PromptItem { scenario, valence, emotion }))
            .collect();
        batches.extend(items.chunks(opts.batch_size).map(<[_]>::to_vec));
    }
    Ok(Stage {
        settings: StageSettings {
            dataset,
            batch_size: opts.batch_size,
            generation: GenerationSettings::from(&opts.generation),
            judge: judge.to_string(),
            prompt: PromptKind::Neutral,
            capture: false,
            steering: Some(SteeringSettings { alpha: opts.alpha, layers, site: opts.site, positions: positions_name(&opts.positions) }),
        },
        name,
        scenarios,
        batches,
        steering: Some(Steering { directions: directions.site(opts.site).shallow_clone(), positions: opts.positions.clone() }),
        progress: opts.progress,
    })
}
