//! Residual steering (paper section 5, spec section 6): `h += alpha * RMS(h) * v_e[L]` at `hook_resid_post`
//! of a layer range, at the last prompt token and every generated token by default.
//!
//! [`steering_edit`] is the edit itself, as an [`Intervention`] to combine with other hooks;
//! [`steering_control`] is the same for one row of a continuous batch; [`Steerer`] wraps both behind a
//! builder that replies to chats, one emotion for all or one per conversation.
use std::path::Path;

use emo_data::Emotion;
use emo_model::{
    ChatMessage, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, Model, Positions, RowControl, TransformerConfig,
};
use tch::Tensor;

use crate::directions::{EmotionDirections, Site};
use crate::error::{Error, Result};
use crate::paper::{scaled_range, STEERING_ALPHA, STEERING_LAYERS};

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

/// One row's steering towards `emotion` at the tokens `positions` selects, ready for a continuous batch or
/// [`emo_model::batcher::row_hooks`].
pub fn steering_control(
    directions: &EmotionDirections,
    site: Site,
    emotion: Emotion,
    alpha: f64,
    layers: (usize, usize),
    positions: Positions,
) -> RowControl {
    RowControl::none().with(positions, steering_edit(directions.site(site), emotion, alpha, layers))
}

/// One conversation of [`Steerer::chat_batch`] and the emotion it is steered towards (`None`: unsteered).
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
    directions: EmotionDirections,
    emotion: Option<Emotion>,
    alpha: f64,
    site: Site,
    layers: (usize, usize),
    positions: Positions,
    generation: GenerationConfig,
}

impl<'m> Steerer<'m> {
    /// A steerer of `model` with `directions`, which must match the model's depth and width.
    pub fn new(model: &'m Model, directions: EmotionDirections) -> Result<Self> {
        let cfg = model.transformer.config();
        if directions.dims() != (cfg.n_layers, cfg.d_model) {
            let (l, d) = directions.dims();
            return Err(Error::Invalid(format!(
                "directions are [{l} layers, {d}] but the model has {} layers of width {}",
                cfg.n_layers, cfg.d_model
            )));
        }
        let device = model.transformer.device();
        let directions = EmotionDirections { resid_mid: directions.resid_mid.to_device(device), resid_post: directions.resid_post.to_device(device) };
        Ok(Steerer {
            model,
            directions,
            emotion: None,
            alpha: STEERING_ALPHA,
            site: Site::ResidPost,
            layers: default_layers(cfg),
            positions: Positions::LastPromptAndGenerated,
            generation: GenerationConfig::steering(),
        })
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
        self.alpha = alpha;
        self
    }

    /// Whose directions are added (both are added at `hook_resid_post`).
    pub fn site(mut self, site: Site) -> Self {
        self.site = site;
        self
    }

    /// The inclusive layer range edited.
    pub fn layers(mut self, first: usize, last: usize) -> Self {
        self.layers = (first, last);
        self
    }

    /// Which tokens are edited.
    pub fn positions(mut self, positions: Positions) -> Self {
        self.positions = positions;
        self
    }

    /// The decoding settings (`eos_token_ids` default to the model's).
    pub fn generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }

    /// The directions in use.
    pub fn directions(&self) -> &EmotionDirections {
        &self.directions
    }

    /// The edit for one row steered towards `emotion` with these settings, to combine with other hooks.
    pub fn edit(&self, emotion: Emotion) -> Result<Intervention> {
        self.check()?;
        Ok(steering_edit(self.directions.site(self.site), emotion, self.alpha, self.layers))
    }

    /// The hook of a batch whose row i is steered towards `emotions[i]` (none: left alone), for
    /// [`HookSet::push`] beside other hooks.
    pub fn hook(&self, emotions: &[Option<Emotion>]) -> Result<Interventions> {
        self.check()?;
        let rows = emotions
            .iter()
            .map(|e| e.map_or_else(Intervention::none, |e| steering_edit(self.directions.site(self.site), e, self.alpha, self.layers)));
        Ok(Interventions::new(rows.collect(), self.positions.clone()))
    }

    /// The reply to one conversation, steered towards the emotion set with [`Steerer::emotion`].
    pub fn chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut replies = self.chat_batch(&[(messages.to_vec(), self.emotion)])?;
        Ok(replies.remove(0))
    }

    /// Replies to several conversations in one batch, each steered towards its own emotion (`None`:
    /// unsteered) — rows in the same order as `emo_circuits::Modulator::chat_batch`'s.
    pub fn chat_batch(&self, rows: &[SteeredChat]) -> Result<Vec<String>> {
        let emotions: Vec<Option<Emotion>> = rows.iter().map(|(_, e)| *e).collect();
        let conversations: Vec<Vec<ChatMessage>> = rows.iter().map(|(c, _)| c.clone()).collect();
        let mut hook = self.hook(&emotions)?;
        let replies = self.model.generate_chat(&conversations, &self.generation, &mut HookSet::new().with(&mut hook))?;
        Ok(replies.into_iter().map(|r| r.text).collect())
    }

    fn check(&self) -> Result<()> {
        let (n_layers, _) = self.directions.dims();
        if self.layers.0 > self.layers.1 || self.layers.1 >= n_layers {
            return Err(Error::Invalid(format!("layer range {}..={} is not within 0..{n_layers}", self.layers.0, self.layers.1)));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Invalid(format!("steering strength alpha {} is not a finite number", self.alpha)));
        }
        Ok(())
    }
}
