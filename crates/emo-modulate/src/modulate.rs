//! Circuit modulation during cached generation (paper section 7.3, spec section 8): with the neutral prompt,
//! `mlp.hook_post[.., ids] += s * delta_mu_mlp[L][ids]` at the last position of every forward call (the last
//! prompt token, then every generated token) and `attn.hook_z += s * delta_mu_attn[L]` masked to the circuit's
//! heads at every position. Every row of a batch carries its own emotion and scale, or none.
//!
//! ```no_run
//! use emo_modulate::Modulator;
//! use emo_data::Emotion;
//! use emo_model::{ChatMessage, LoadOptions, Model};
//! let model = Model::load("smollm2-135m", LoadOptions::default())?;
//! let modulator = Modulator::from_dir(&model, "runs/paper/circuits/all".as_ref())?;
//! let messages = vec![ChatMessage::user("My train was cancelled.")];
//! let reply = modulator.emotion(Emotion::Anger).scale(1.0).chat(&messages)?;
//! println!("{reply}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::path::Path;

use emo_data::Emotion;
use emo_model::{ChatMessage, Edit, GenerationConfig, HookPoint, Intervention, Interventions, Model, Positions, RowControl};
use emo_steer::steer::{chat_rows, chat_rows_traced};
use emo_steer::{EmotionTrace, EmotionTracer, Result, RowEdits, SteeredChat};
use tch::Tensor;

use crate::circuit::CircuitSet;

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
    /// Each row at its emotion's scale in [`Modulation::scales`].
    fn hooks(&self, rows: &[Option<Emotion>]) -> Result<Vec<Interventions>> {
        let rows: Vec<Option<(Emotion, f64)>> = rows.iter().map(|e| e.map(|e| (e, self.scales[e.index()]))).collect();
        self.hooks_for(&rows)
    }
}

/// Modulates a model's chat replies with emotion circuits, in the builder style of `emo_steer::Steerer`:
/// every setting defaults to the paper's (scale 1, the authors' positions, the modulation decoding), each
/// builder method returns a new `Modulator`, and without an emotion it replies unmodulated.
#[derive(Clone)]
pub struct Modulator<'m> {
    model: &'m Model,
    circuits: CircuitSet,
    emotion: Option<Emotion>,
    scales: [f64; 6],
    generation: GenerationConfig,
}

impl<'m> Modulator<'m> {
    /// A modulator of `model` with circuits already in memory, which must fit the model's shape.
    pub fn new(model: &'m Model, circuits: CircuitSet) -> Result<Self> {
        circuits.check_fits(model.transformer.config())?;
        Ok(Modulator { model, circuits, emotion: None, scales: [1.0; 6], generation: GenerationConfig::modulation() })
    }

    /// A modulator with the circuits of a folder (written by `emo circuits build`, or in the authors' layout).
    pub fn from_dir(model: &'m Model, dir: &Path) -> Result<Self> {
        Self::new(model, CircuitSet::load_for(dir, model.transformer.config())?)
    }

    /// Modulates towards `emotion`.
    pub fn emotion(mut self, emotion: Emotion) -> Self {
        self.emotion = Some(emotion);
        self
    }

    /// The scale s of every emotion (the paper: 1).
    pub fn scale(mut self, scale: f64) -> Self {
        self.scales = [scale; 6];
        self
    }

    /// The scale s per emotion, in `Emotion::ALL` order (the authors used 0.8 for anger).
    pub fn scales(mut self, scales: [f64; 6]) -> Self {
        self.scales = scales;
        self
    }

    /// The decoding settings (`eos_token_ids` default to the model's).
    pub fn generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }

    /// The circuits.
    pub fn circuits(&self) -> &CircuitSet {
        &self.circuits
    }

    /// The hooks (neurons, heads) of a batch whose row i is modulated towards `emotions[i]` at its scale
    /// (none: left alone), to combine with other hooks.
    pub fn hooks(&self, emotions: &[Option<Emotion>]) -> Result<Vec<Interventions>> {
        self.modulation().hooks(emotions)
    }

    /// The reply to one conversation, modulated towards the emotion set with [`Modulator::emotion`].
    pub fn chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut replies = self.chat_batch(&[(messages.to_vec(), self.emotion)])?;
        Ok(replies.remove(0))
    }

    /// Replies to several conversations in one batch, each modulated towards its own emotion (`None`:
    /// plain generation) — rows as `emo_steer::Steerer::chat_batch` takes them.
    pub fn chat_batch(&self, rows: &[SteeredChat]) -> Result<Vec<String>> {
        chat_rows(self.model, &self.modulation(), &self.generation, rows)
    }

    /// [`Modulator::chat`] with the reply's per-token emotion readout by `tracer` (a circuit set has no
    /// directions of its own: build the tracer from the run's, [`EmotionTracer::reference`]).
    pub fn chat_traced(&self, messages: &[ChatMessage], tracer: &EmotionTracer) -> Result<(String, EmotionTrace)> {
        let rows = [(messages.to_vec(), self.emotion)];
        let mut out = chat_rows_traced(self.model, &self.modulation(), &self.generation, &rows, tracer)?;
        Ok(out.remove(0))
    }

    fn modulation(&self) -> Modulation<'_> {
        Modulation { scales: self.scales, ..Modulation::new(&self.circuits) }
    }
}
