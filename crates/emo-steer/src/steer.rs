//! Residual steering (paper section 5, spec section 6): `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post`
//! of a layer range, at the last prompt token and every generated token by default.
//!
//! [`steering_edit`] is the edit itself, as an [`Intervention`] to combine with other hooks; [`Steering`] is
//! the one checked construction of its settings (per row of a batch, or one row of a continuous batch);
//! [`Steerer`] wraps it behind a builder that replies to chats, one emotion for all or one per conversation.
use std::path::Path;

use emo_data::Emotion;
use emo_model::{
    ChatMessage, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, Model, Positions, Readouts, RowControl, TransformerConfig,
};
use tch::Tensor;

use crate::directions::{EmotionDirections, Site};
use crate::edits::RowEdits;
use crate::error::{Error, Result};
use crate::paper::{scaled_range, STEERING_ALPHA, STEERING_LAYERS};
use crate::trace::{EmotionTrace, EmotionTracer};

/// The paper's steering layers, 11..=20 of 28, scaled to `cfg`'s depth.
pub fn default_layers(cfg: &TransformerConfig) -> (usize, usize) {
    scaled_range(STEERING_LAYERS, cfg.n_layers)
}

/// One row's steering edit: `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post` of every layer in the
/// inclusive range `layers`, whichever site `directions` (one site's `[6, n_layers, d_model]` tensor) comes from.
pub fn steering_edit(directions: &Tensor, emotion: Emotion, alpha: f64, layers: (usize, usize)) -> Intervention {
    let v = directions.get(emotion.index() as i64);
    (layers.0..=layers.1).fold(Intervention::none(), |row, l| row.with(HookPoint::ResidPost(l), Edit::AddRms(v.get(l as i64), alpha)))
}

/// Residual steering with checked settings, the one construction behind `emo steer`'s stage, [`Steerer`] and
/// the server's per-request steering: [`Steering::new`] checks the directions against the model and starts
/// from the paper's settings (alpha 8, the `resid_post` directions, layers 11-20 of 28 scaled to the model's
/// depth, the last prompt token and every generated token); every edit built from it checks the settings
/// changed since ([`Steering::check`]).
#[derive(Clone)]
pub struct Steering {
    directions: EmotionDirections,
    /// The strength alpha, in units of the residual's RMS.
    pub alpha: f64,
    /// Whose directions are added (both are added at `hook_resid_post`).
    pub site: Site,
    /// The inclusive layer range edited.
    pub layers: (usize, usize),
    /// Which tokens are edited.
    pub positions: Positions,
}

impl Steering {
    /// Steering of a model of configuration `cfg` with `directions`, which must match its depth and width,
    /// at the paper's settings.
    pub fn new(directions: EmotionDirections, cfg: &TransformerConfig) -> Result<Self> {
        let (l, d) = directions.dims();
        if (l, d) != (cfg.n_layers, cfg.d_model) {
            return Err(Error::Invalid(format!(
                "directions are [{l} layers, {d}] but the model has {} layers of width {}",
                cfg.n_layers, cfg.d_model
            )));
        }
        Ok(Steering {
            directions,
            alpha: STEERING_ALPHA,
            site: Site::ResidPost,
            layers: default_layers(cfg),
            positions: Positions::LastPromptAndGenerated,
        })
    }

    /// The directions in use.
    pub fn directions(&self) -> &EmotionDirections {
        &self.directions
    }

    /// Checks the settings: the layer range lies within the model and alpha is a finite number.
    pub fn check(&self) -> Result<()> {
        let (n_layers, _) = self.directions.dims();
        if self.layers.0 > self.layers.1 || self.layers.1 >= n_layers {
            return Err(Error::Invalid(format!("layer range {}..={} is not within 0..{n_layers}", self.layers.0, self.layers.1)));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Invalid(format!("steering strength alpha {} is not a finite number", self.alpha)));
        }
        Ok(())
    }

    /// The edit of one row steered towards `emotion`, to combine with other hooks.
    pub fn edit(&self, emotion: Emotion) -> Result<Intervention> {
        self.check()?;
        Ok(steering_edit(self.directions.site(self.site), emotion, self.alpha, self.layers))
    }

    /// The hook of a batch whose row i is steered towards `emotions[i]` (none: left alone).
    pub fn hook(&self, emotions: &[Option<Emotion>]) -> Result<Interventions> {
        self.check()?;
        let rows = emotions
            .iter()
            .map(|e| e.map_or_else(Intervention::none, |e| steering_edit(self.directions.site(self.site), e, self.alpha, self.layers)));
        Ok(Interventions::new(rows.collect(), self.positions.clone()))
    }

    /// One row's steering towards `emotion` at [`Steering::positions`], ready for a continuous batch or
    /// [`emo_model::batcher::row_hooks`].
    pub fn control(&self, emotion: Emotion) -> Result<RowControl> {
        Ok(RowControl::none().with(self.positions.clone(), self.edit(emotion)?))
    }
}

impl RowEdits for Steering {
    fn hooks(&self, rows: &[Option<Emotion>]) -> Result<Vec<Interventions>> {
        Ok(vec![self.hook(rows)?])
    }
}

/// One conversation of [`Steerer::chat_batch`] (or `Modulator::chat_batch`) and the emotion it is pushed
/// towards (`None`: left alone).
pub type SteeredChat = (Vec<ChatMessage>, Option<Emotion>);

/// Steers a model's chat replies with emotion directions; every setting defaults to the paper's (alpha 8,
/// the `resid_post` directions, layers 11-20 of 28 scaled to the model's depth, the last prompt token and every
/// generated token, the steering validation's decoding).
///
/// Settings are builder methods that return a new `Steerer`, so one loaded set of directions serves many
/// configurations. Without an emotion it replies unsteered.
#[derive(Clone)]
pub struct Steerer<'m> {
    model: &'m Model,
    steering: Steering,
    emotion: Option<Emotion>,
    generation: GenerationConfig,
}

impl<'m> Steerer<'m> {
    /// A steerer of `model` with `directions`, which must match the model's depth and width.
    pub fn new(model: &'m Model, directions: EmotionDirections) -> Result<Self> {
        let device = model.transformer.device();
        let directions = EmotionDirections { resid_mid: directions.resid_mid.to_device(device), resid_post: directions.resid_post.to_device(device) };
        let steering = Steering::new(directions, model.transformer.config())?;
        Ok(Steerer { model, steering, emotion: None, generation: GenerationConfig::steering() })
    }

    /// A steerer with the directions of a `directions.safetensors` file (what `emo directions` writes).
    pub fn from_file(model: &'m Model, path: &Path) -> Result<Self> {
        Self::new(model, EmotionDirections::load(path)?)
    }

    /// Steers towards `emotion`.
    pub fn emotion(mut self, emotion: Emotion) -> Self {
        self.emotion = Some(emotion);
        self
    }

    /// The strength alpha, in units of the residual's RMS.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.steering.alpha = alpha;
        self
    }

    /// Whose directions are added (both are added at `hook_resid_post`).
    pub fn site(mut self, site: Site) -> Self {
        self.steering.site = site;
        self
    }

    /// The inclusive layer range edited.
    pub fn layers(mut self, first: usize, last: usize) -> Self {
        self.steering.layers = (first, last);
        self
    }

    /// Which tokens are edited.
    pub fn positions(mut self, positions: Positions) -> Self {
        self.steering.positions = positions;
        self
    }

    /// The decoding settings (`eos_token_ids` default to the model's).
    pub fn generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }

    /// The directions in use.
    pub fn directions(&self) -> &EmotionDirections {
        self.steering.directions()
    }

    /// The steering settings in use.
    pub fn steering(&self) -> &Steering {
        &self.steering
    }

    /// The edit for one row steered towards `emotion` with these settings, to combine with other hooks.
    pub fn edit(&self, emotion: Emotion) -> Result<Intervention> {
        self.steering.edit(emotion)
    }

    /// The hook of a batch whose row i is steered towards `emotions[i]` (none: left alone), for
    /// [`HookSet::push`] beside other hooks.
    pub fn hook(&self, emotions: &[Option<Emotion>]) -> Result<Interventions> {
        self.steering.hook(emotions)
    }

    /// The reply to one conversation, steered towards the emotion set with [`Steerer::emotion`].
    pub fn chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut replies = self.chat_batch(&[(messages.to_vec(), self.emotion)])?;
        Ok(replies.remove(0))
    }

    /// Replies to several conversations in one batch, each steered towards its own emotion (`None`:
    /// unsteered) — rows as `emo_modulate::Modulator::chat_batch` takes them.
    pub fn chat_batch(&self, rows: &[SteeredChat]) -> Result<Vec<String>> {
        chat_rows(self.model, &self.steering, &self.generation, rows)
    }

    /// A tracer with this steerer's directions at the reference layers ([`crate::trace::reference_layers`]).
    pub fn tracer(&self) -> Result<EmotionTracer> {
        EmotionTracer::reference(self.model, self.steering.directions())
    }

    /// [`Steerer::chat`] with the reply's per-token emotion readout ([`Steerer::tracer`]).
    ///
    /// ```no_run
    /// use emo_steer::{ChatMessage, Emotion, LoadOptions, Model, Steerer};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let steerer = Steerer::from_file(&model, "runs/paper/directions.safetensors".as_ref())?.emotion(Emotion::Sadness);
    /// let (reply, trace) = steerer.chat_traced(&[ChatMessage::user("How was your day?")])?;
    /// println!("{reply}: mostly {:?}", trace.top());
    /// # Ok::<(), emo_steer::Error>(())
    /// ```
    pub fn chat_traced(&self, messages: &[ChatMessage]) -> Result<(String, EmotionTrace)> {
        let rows = [(messages.to_vec(), self.emotion)];
        let mut out = chat_rows_traced(self.model, &self.steering, &self.generation, &rows, &self.tracer()?)?;
        Ok(out.remove(0))
    }
}

/// Replies to `rows`, each pushed towards its own emotion by `edits` (what [`Steerer::chat_batch`] and
/// `Modulator::chat_batch` do).
pub fn chat_rows(model: &Model, edits: &dyn RowEdits, generation: &GenerationConfig, rows: &[SteeredChat]) -> Result<Vec<String>> {
    Ok(chat_rows_read(model, edits, generation, rows, None)?.into_iter().map(|(text, _)| text).collect())
}

/// [`chat_rows`] with every reply read by `tracer` as it is generated: each reply with its per-token
/// [`EmotionTrace`] (what [`Steerer::chat_traced`] and `Modulator::chat_traced` do).
pub fn chat_rows_traced(
    model: &Model,
    edits: &dyn RowEdits,
    generation: &GenerationConfig,
    rows: &[SteeredChat],
    tracer: &EmotionTracer,
) -> Result<Vec<(String, EmotionTrace)>> {
    Ok(chat_rows_read(model, edits, generation, rows, Some(tracer))?.into_iter().map(|(text, t)| (text, t.unwrap_or_default())).collect())
}

fn chat_rows_read(
    model: &Model,
    edits: &dyn RowEdits,
    generation: &GenerationConfig,
    rows: &[SteeredChat],
    tracer: Option<&EmotionTracer>,
) -> Result<Vec<(String, Option<EmotionTrace>)>> {
    let emotions: Vec<Option<Emotion>> = rows.iter().map(|(_, e)| *e).collect();
    let conversations: Vec<Vec<ChatMessage>> = rows.iter().map(|(c, _)| c.clone()).collect();
    let mut readouts = Readouts::new(vec![tracer.map(|t| t.readout().clone()); rows.len()]);
    let replies = {
        let mut hooks = HookSet::new();
        for hook in edits.hooks(&emotions)? {
            hooks.push_owned(hook);
        }
        // After the edits: the trace reads the state the reply goes on with.
        if tracer.is_some() {
            hooks.push(&mut readouts);
        }
        model.generate_chat(&conversations, generation, &mut hooks)?
    };
    let forwards = readouts.take()?;
    let mut out = Vec::with_capacity(replies.len());
    for (row, reply) in replies.into_iter().enumerate() {
        let trace = tracer.map(|_| EmotionTrace::of_row(model, &reply.generated.tokens, &forwards, row)).transpose()?;
        out.push((reply.text, trace));
    }
    Ok(out)
}
