//! The modulation stage (paper section 7.3): circuit modulation of replies to neutral prompts on the generating
//! stage of `emo-run`, every row of a batch modulated towards its own emotion. The modulation itself
//! (circuits, hooks, `Modulator`) is `emo-modulate`'s.
use emo_data::{Emotion, PromptItem, Scenario};
use emo_model::{GenerationConfig, TransformerConfig};
use emo_modulate::{CircuitSet, Modulation};
use emo_run::generation::{batches, ModulationSettings, PromptKind, Stage, StageSettings};
use emo_run::store::sha256_bytes;
use emo_run::{DatasetInfo, Result, RunError};

/// How to run a modulation stage.
#[derive(Clone, Debug)]
pub struct ModulateOptions {
    /// The emotions modulated (each over every scenario x valence).
    pub emotions: Vec<Emotion>,
    /// Scale s per emotion (the paper: 1.0; the authors used 0.8 for anger).
    pub scales: [f64; 6],
    /// Prompts per batch (rows of one batch may modulate different emotions).
    pub batch_size: usize,
    /// Decoding (the paper: greedy, min 10, repetition penalty 1.1, no repeated trigram, 100 tokens).
    pub generation: GenerationConfig,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for ModulateOptions {
    fn default() -> Self {
        ModulateOptions {
            emotions: Emotion::ALL.to_vec(),
            scales: [1.0; 6],
            batch_size: 32,
            generation: GenerationConfig::modulation(),
            progress: true,
        }
    }
}

/// The identity of a circuit set as a modulation stage records it: the sha256 of each circuit (its JSON) and
/// of the delta_mu values, whatever layout they were read from, so a resumed stage notices any change.
pub fn circuits_identity(set: &CircuitSet) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in &set.circuits {
        let json = serde_json::to_vec(c).map_err(|e| RunError::Invalid(format!("circuit of {}: {e}", c.emotion)))?;
        out.push(format!("{}: {}", c.emotion, sha256_bytes(&json)));
    }
    for (name, t) in [("delta_mu attn", &set.delta_mu_attn), ("delta_mu mlp", &set.delta_mu_mlp)] {
        let values = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).reshape([-1]))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.push(format!("{name}: {}", sha256_bytes(&bytes)));
    }
    Ok(out)
}

/// The modulation stage over `scenarios`: every scenario x valence for each emotion of `opts`, emotion-major,
/// in full batches whose rows may hold different emotions; the settings record [`circuits_identity`].
pub fn modulation_stage<'a>(
    name: String,
    scenarios: &'a [Scenario],
    dataset: DatasetInfo,
    judge: &str,
    circuits: &'a CircuitSet,
    cfg: &TransformerConfig,
    opts: &ModulateOptions,
) -> Result<Stage<'a>> {
    circuits.check_fits(cfg)?;
    for &e in &opts.emotions {
        circuits.get(e)?;
    }
    if opts.emotions.is_empty() {
        return Err(RunError::Invalid("no emotion to modulate".into()));
    }
    let items = PromptItem::emotion_major(scenarios, &opts.emotions);
    let batches = batches(&items, opts.batch_size)?;
    let mut modulation = Modulation::new(circuits);
    modulation.scales = opts.scales;
    let settings = ModulationSettings {
        circuits: circuits_identity(circuits)?,
        scales: opts.scales.to_vec(),
        neuron_positions: modulation.neuron_positions.to_string(),
        head_positions: modulation.head_positions.to_string(),
    };
    Ok(Stage {
        settings: StageSettings {
            modulation: Some(settings),
            ..StageSettings::plain(dataset, opts.batch_size, &opts.generation, judge, PromptKind::Neutral)
        },
        name,
        scenarios,
        batches,
        edits: Some(Box::new(modulation)),
        progress: opts.progress,
    })
}
