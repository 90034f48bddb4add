//! Circuit modulation during cached generation (paper section 7.3, spec section 8): with the neutral prompt,
//! `mlp.hook_post[.., ids] += s * delta_mu_mlp[L][ids]` at the last position of every forward call (the last
//! prompt token, then every generated token) and `attn.hook_z += s * delta_mu_attn[L]` masked to the circuit's
//! heads at every position. Every row of a batch carries its own emotion and scale, or none.
//!
//! ```no_run
//! use emo_circuits::Modulator;
//! use emo_data::Emotion;
//! use emo_model::{ChatMessage, LoadOptions, Model};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let modulator = Modulator::from_dir(&model, "runs/paper/circuits/all".as_ref())?;
//! let messages = vec![ChatMessage::user("My train was cancelled.")];
//! let reply = modulator.chat(&messages, Emotion::Anger, 1.0)?;
//! println!("{reply}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::path::Path;

use emo_data::{Emotion, PromptItem, Scenario, Valence};
use emo_directions::run::{DatasetInfo, ModulationSettings, PromptKind, RowEdits, Stage, StageSettings};
use emo_model::{
    ChatMessage, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, Model, Positions, RowControl, TransformerConfig,
};
use emo_run::store::sha256_bytes;
use emo_run::{Result, RunError};
use tch::Tensor;

use crate::allocate::Shape;
use crate::circuit::CircuitSet;

/// The model shape a circuit set must fit.
pub fn shape_of(cfg: &TransformerConfig) -> Shape {
    Shape { n_layers: cfg.n_layers, n_heads: cfg.n_heads, d_mlp: cfg.d_mlp }
}

impl CircuitSet {
    /// [`CircuitSet::load`] for a model of configuration `cfg`.
    pub fn load_for(dir: &Path, cfg: &TransformerConfig) -> Result<CircuitSet> {
        CircuitSet::load(dir, shape_of(cfg), cfg.n_heads * cfg.d_head)
    }
}

/// The edits of a circuit set, ready to build per-row hooks.
pub struct Modulation<'c> {
    /// The circuits and their delta_mu.
    pub circuits: &'c CircuitSet,
    /// Where neurons are stimulated (the authors: [`Positions::LastPromptAndGenerated`]).
    pub neuron_positions: Positions,
    /// Where heads are stimulated (the authors: [`Positions::All`]).
    pub head_positions: Positions,
    /// Scale per emotion, used by [`RowEdits::hooks`] (`Emotion::ALL` order).
    pub scales: [f64; 6],
}

impl<'c> Modulation<'c> {
    /// The authors' positions, scale 1 for every emotion.
    pub fn new(circuits: &'c CircuitSet) -> Self {
        Modulation { circuits, neuron_positions: Positions::LastPromptAndGenerated, head_positions: Positions::All, scales: [1.0; 6] }
    }

    /// The neuron edits and head edits of one row: emotion `e` at scale `s`.
    pub fn intervention(&self, emotion: Emotion, scale: f64) -> Result<(Intervention, Intervention)> {
        let c = self.circuits.get(emotion)?;
        let e = emotion.index() as i64;
        let (_, d_attn, d_mlp) = self.circuits.dims();
        let d_head = d_attn / self.circuits.n_heads.max(1);
        let (mut neurons, mut heads) = (Intervention::none(), Intervention::none());
        for layer in &c.layers {
            let l = layer.layer as i64;
            if !layer.mlp.neurons.is_empty() {
                let mut mask = vec![0f32; d_mlp];
                for &n in &layer.mlp.neurons {
                    mask[n] = scale as f32;
                }
                let v = self.circuits.delta_mu_mlp.get(e).get(l) * Tensor::from_slice(&mask);
                neurons = neurons.with(HookPoint::MlpPost(layer.layer), Edit::Add(v));
            }
            if !layer.attention.heads.is_empty() {
                let mut mask = vec![0f32; d_attn];
                for &h in &layer.attention.heads {
                    mask[h * d_head..(h + 1) * d_head].fill(scale as f32);
                }
                let v = self.circuits.delta_mu_attn.get(e).get(l) * Tensor::from_slice(&mask);
                heads = heads.with(HookPoint::AttnZ(layer.layer), Edit::Add(v));
            }
        }
        Ok((neurons, heads))
    }

    /// One row's modulation towards `emotion` at scale `scale`, ready for a continuous batch or
    /// [`emo_model::batcher::row_hooks`]: the neurons at [`Modulation::neuron_positions`], the heads at
    /// [`Modulation::head_positions`].
    pub fn control(&self, emotion: Emotion, scale: f64) -> Result<RowControl> {
        let (neurons, heads) = self.intervention(emotion, scale)?;
        Ok(RowControl::none().with(self.neuron_positions.clone(), neurons).with(self.head_positions.clone(), heads))
    }

    /// The two hooks (neurons, heads) of a batch whose row i is modulated towards `rows[i]` (emotion,
    /// scale) or left alone (`None`).
    pub fn hooks_for(&self, rows: &[Option<(Emotion, f64)>]) -> Result<Vec<Interventions>> {
        let (mut neurons, mut heads) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for row in rows {
            let (n, h) = match row {
                Some((e, s)) => self.intervention(*e, *s)?,
                None => (Intervention::none(), Intervention::none()),
            };
            neurons.push(n);
            heads.push(h);
        }
        Ok(vec![Interventions::new(neurons, self.neuron_positions.clone()), Interventions::new(heads, self.head_positions.clone())])
    }
}

impl RowEdits for Modulation<'_> {
    fn hooks(&self, batch: &[PromptItem]) -> Vec<Interventions> {
        let rows: Vec<Option<(Emotion, f64)>> = batch.iter().map(|it| Some((it.emotion, self.scales[it.emotion.index()]))).collect();
        // The stage checked that every emotion of its prompts has a circuit.
        self.hooks_for(&rows).expect("modulation stage checked its circuits")
    }
}

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
    if opts.batch_size == 0 {
        return Err(RunError::Invalid("batch size must be at least 1".into()));
    }
    let (l, d_attn, d_mlp) = circuits.dims();
    if (l, d_attn, d_mlp) != (cfg.n_layers, cfg.n_heads * cfg.d_head, cfg.d_mlp) {
        return Err(RunError::Invalid(format!(
            "the circuits' delta_mu are for {l} layers, attention width {d_attn}, {d_mlp} neurons; the model has {}, {}, {}",
            cfg.n_layers,
            cfg.n_heads * cfg.d_head,
            cfg.d_mlp
        )));
    }
    for &e in &opts.emotions {
        circuits.get(e)?;
    }
    if opts.emotions.is_empty() {
        return Err(RunError::Invalid("no emotion to modulate".into()));
    }
    let items: Vec<PromptItem> = opts
        .emotions
        .iter()
        .flat_map(|&emotion| (0..scenarios.len()).flat_map(move |scenario| Valence::ALL.map(|valence| PromptItem { scenario, valence, emotion })))
        .collect();
    let batches = items.chunks(opts.batch_size).map(<[_]>::to_vec).collect();
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

/// One conversation of [`Modulator::chat_batch`] and its `(emotion, scale)` (`None`: plain generation).
pub type ModulatedChat = (Vec<ChatMessage>, Option<(Emotion, f64)>);

/// The high-level entry point: a model with a circuit set, to chat modulated towards an emotion, or a batch
/// with a different emotion (or none) per row.
pub struct Modulator<'m> {
    model: &'m Model,
    circuits: CircuitSet,
    /// Decoding (the paper's modulation settings by default).
    pub generation: GenerationConfig,
}

impl<'m> Modulator<'m> {
    /// Loads a circuits folder (written by `emo circuits build`, or in the authors' layout) for `model`.
    pub fn from_dir(model: &'m Model, dir: &Path) -> Result<Self> {
        let cfg = model.transformer.config();
        let circuits = CircuitSet::load_for(dir, cfg)?;
        Ok(Modulator { model, circuits, generation: GenerationConfig::modulation() })
    }

    /// Wraps circuits already in memory.
    pub fn new(model: &'m Model, circuits: CircuitSet) -> Self {
        Modulator { model, circuits, generation: GenerationConfig::modulation() }
    }

    /// The circuits.
    pub fn circuits(&self) -> &CircuitSet {
        &self.circuits
    }

    /// The hooks (neurons, heads) for rows modulated as `rows` says, to combine with other hooks.
    pub fn hooks(&self, rows: &[Option<(Emotion, f64)>]) -> Result<Vec<Interventions>> {
        Modulation::new(&self.circuits).hooks_for(rows)
    }

    /// One reply to `messages`, modulated towards `emotion` at `scale`.
    pub fn chat(&self, messages: &[ChatMessage], emotion: Emotion, scale: f64) -> Result<String> {
        let mut out = self.chat_batch(&[(messages.to_vec(), Some((emotion, scale)))])?;
        Ok(out.remove(0))
    }

    /// One reply per row, each modulated as its own `(emotion, scale)` says (`None`: plain generation).
    pub fn chat_batch(&self, rows: &[ModulatedChat]) -> Result<Vec<String>> {
        let prompts = rows.iter().map(|(m, _)| self.model.encode_chat(m)).collect::<emo_model::Result<Vec<_>>>()?;
        let per_row: Vec<Option<(Emotion, f64)>> = rows.iter().map(|(_, r)| *r).collect();
        let mut hooks = HookSet::new();
        for h in self.hooks(&per_row)? {
            hooks.push_owned(h);
        }
        let generated = self.model.generate_ids(&prompts, &self.generation, &mut hooks)?;
        Ok(generated.iter().map(|g| self.model.tokenizer.decode(&g.tokens, true)).collect::<emo_model::Result<Vec<_>>>()?)
    }
}
