//! The paper's judge prompt (spec section 9), verbatim, on any local chat model. Instead of parsing free
//! text, the reply is forced to start with `{"match": ` and the decision is read from the next-token
//! logits of "1" against "0": one forward pass per text, batched.
use emo_model::{ChatMessage, HookSet, LogitsFor, Model};

use crate::judge::{Judge, Verdict};
use crate::{DataError, Emotion};

/// The judge's system prompt, as the authors' code sends it.
pub const SYSTEM: &str = "You are a careful rater.\nGiven a target emotion and a text,\ndecide if the text's STYLE matches the target emotion among:\n['anger', 'sadness', 'happiness', 'fear', 'surprise', 'disgust']\nFocus on tone/attitude, not content valence.";

/// The judge's user prompt for a target emotion and a text.
pub fn user_prompt(emotion: Emotion, text: &str) -> String {
    format!(
        "Target emotion: {emotion}\nText:\n{text}\nDecide if the text's STYLE matches the target emotion.\nReturn a compact JSON with keys exactly:\n{{\n\"match\": <0 or 1>,\n\"reason\": <short string>\n}}"
    )
}

/// The forced start of the judge's reply.
pub const FORCED_PREFIX: &str = "{\"match\": ";

/// The paper's judge on a local chat model.
pub struct ChatJudge<'m> {
    model: &'m Model,
    one: i64,
    zero: i64,
    name: String,
}

impl<'m> ChatJudge<'m> {
    /// Prepares the judge; fails if "1" or "0" is not a single token of the model.
    pub fn new(model: &'m Model, name: impl Into<String>) -> Result<Self, DataError> {
        let single = |s: &str| -> Result<i64, DataError> {
            match model.tokenizer.encode(s, false)?.as_slice() {
                [id] => Ok(*id as i64),
                other => Err(DataError::Model(emo_model::ModelError::InvalidArgument(format!(
                    "the chat judge needs `{s}` to be one token, the model splits it into {other:?}"
                )))),
            }
        };
        Ok(ChatJudge { model, one: single("1")?, zero: single("0")?, name: name.into() })
    }

    /// Token ids of the judge prompt for one item, ending with the forced prefix.
    pub fn prompt_ids(&self, emotion: Emotion, text: &str) -> Result<Vec<u32>, DataError> {
        let messages = [ChatMessage::system(SYSTEM), ChatMessage::user(user_prompt(emotion, text))];
        Ok(self.model.encode_chat_continuing(&messages, FORCED_PREFIX)?)
    }
}

impl Judge for ChatJudge<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let prompts = items.iter().map(|(e, t)| self.prompt_ids(*e, t)).collect::<Result<Vec<_>, _>>()?;
        let logits = self.model.transformer.forward_rows(&prompts, self.model.pad_token_id(), &mut HookSet::new(), LogitsFor::Last)?;
        let last = logits.select(1, 0).to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
        let diff = last.select(1, self.one) - last.select(1, self.zero);
        let diff = Vec::<f64>::try_from(diff.to_kind(tch::Kind::Double)).map_err(emo_model::ModelError::Torch)?;
        Ok(diff
            .into_iter()
            .map(|d| {
                let p = 1.0 / (1.0 + (-d).exp()); // P("1") among {"1", "0"}
                Verdict::decided(p > 0.5, p)
            })
            .collect())
    }
}
