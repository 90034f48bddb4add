//! The researcher's entry points on a [`Model`], after TransformerLens: [`Model::run_with_cache`],
//! [`Model::run_with_hooks`] and [`Model::run_with_cache_grad`], each taking text, conversations or token ids
//! ([`Input`]) and handling tokenization and padding inside.
use tch::Tensor;

use crate::hooks::{ActivationCache, CacheHook, HookPoint, HookSet};
use crate::input::Input;
use crate::model::Model;
use crate::transformer::LogitsFor;
use crate::Result;

impl Model {
    /// The token rows `input` runs as: texts through the tokenizer with its special tokens (as Hugging
    /// Face's `tokenizer(text)`), conversations through the chat template, ids as they are.
    pub fn to_tokens(&self, input: impl Into<Input>) -> Result<Vec<Vec<u32>>> {
        match input.into() {
            Input::Texts(texts) => texts.iter().map(|t| self.tokenizer.encode(t, true)).collect(),
            Input::Conversations(convs) => convs.iter().map(|c| self.encode_chat(c)).collect(),
            Input::Ids(rows) => Ok(rows),
        }
    }

    /// One forward pass over `input` with `hooks` (reads, edits, closures): returns the logits of every
    /// position, [batch, pos, vocab] f32, rows left-padded. TransformerLens' `run_with_hooks`.
    ///
    /// ```no_run
    /// use emo_model::{HookPoint, HookSet, Intervention, Interventions, LoadOptions, Model, Positions};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let mut ablate = Interventions::all_rows(Intervention::zero(HookPoint::MlpPost(5), [123]), Positions::All);
    /// let logits = model.run_with_hooks("The meeting moved to Friday.", &mut HookSet::new().with(&mut ablate))?;
    /// # Ok::<(), emo_model::ModelError>(())
    /// ```
    pub fn run_with_hooks(&self, input: impl Into<Input>, hooks: &mut HookSet) -> Result<Tensor> {
        let rows = self.to_tokens(input)?;
        let logits = self.transformer.forward_rows(&rows, self.pad_token_id(), hooks, LogitsFor::All)?;
        Ok(logits.to_kind(tch::Kind::Float))
    }

    /// One forward pass over `input` keeping every activation `filter` accepts: returns the logits
    /// ([batch, pos, vocab] f32) and the [`ActivationCache`]. TransformerLens' `run_with_cache`;
    /// `|_| true` keeps every point (the attention scores and pattern and per-head results are then computed
    /// too, which costs time and memory).
    ///
    /// ```no_run
    /// use emo_model::{HookPoint, LoadOptions, Model};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let (logits, cache) = model.run_with_cache("The meeting moved to Friday.", |p| p == HookPoint::ResidPost(10))?;
    /// let resid = cache.by_name("blocks.10.hook_resid_post")?; // [1, pos, d_model]
    /// # Ok::<(), emo_model::ModelError>(())
    /// ```
    pub fn run_with_cache(&self, input: impl Into<Input>, filter: impl Fn(HookPoint) -> bool) -> Result<(Tensor, ActivationCache)> {
        self.cached_forward(input, filter, &mut HookSet::new(), false)
    }

    /// [`Model::run_with_cache`] with `hooks` running first: the cache keeps what they made of each
    /// activation (an ablated or steered forward's activations).
    pub fn run_with_cache_and_hooks(
        &self,
        input: impl Into<Input>,
        filter: impl Fn(HookPoint) -> bool,
        hooks: &mut HookSet,
    ) -> Result<(Tensor, ActivationCache)> {
        self.cached_forward(input, filter, hooks, false)
    }

    /// [`Model::run_with_cache_and_hooks`] with autograd on: the logits and the
    /// cached activations stay in the graph, so [`ActivationCache::gradients`] gives the gradient of any
    /// scalar computed from them (attribution patching, saliency), and a tensor with `requires_grad` added by
    /// an intervention gets its gradient through `Tensor::run_backward`. Needs dequantized weights.
    ///
    /// ```no_run
    /// use emo_model::{HookPoint, HookSet, LoadOptions, Model};
    /// let model = Model::load("smollm2-135m", LoadOptions::default())?;
    /// let (logits, cache) = model.run_with_cache_grad("The meeting moved to", |p| p == HookPoint::MlpPost(5), &mut HookSet::new())?;
    /// let friday = model.tokenizer.encode(" Friday", false)?[0] as i64;
    /// let metric = logits.get(0).get(-1).get(friday);
    /// let grads = cache.gradients(&metric)?; // d logit / d blocks.5.mlp.hook_post
    /// # Ok::<(), emo_model::ModelError>(())
    /// ```
    pub fn run_with_cache_grad(
        &self,
        input: impl Into<Input>,
        filter: impl Fn(HookPoint) -> bool,
        hooks: &mut HookSet,
    ) -> Result<(Tensor, ActivationCache)> {
        self.cached_forward(input, filter, hooks, true)
    }

    fn cached_forward(
        &self,
        input: impl Into<Input>,
        filter: impl Fn(HookPoint) -> bool,
        hooks: &mut HookSet,
        grad: bool,
    ) -> Result<(Tensor, ActivationCache)> {
        let rows = self.to_tokens(input)?;
        let mut cache = CacheHook::new(filter);
        // The cache runs after the caller's hooks, so it keeps what they made of each activation.
        let mut all = HookSet::new();
        all.push(hooks);
        all.push(&mut cache);
        let pad = self.pad_token_id();
        let logits = if grad {
            self.transformer.forward_rows_grad(&rows, pad, &mut all, LogitsFor::All)?
        } else {
            self.transformer.forward_rows(&rows, pad, &mut all, LogitsFor::All)?
        };
        drop(all);
        let (tokens, mask, _) = crate::kv_cache::left_pad(&rows, pad)?;
        let n_layers = self.transformer.config().n_layers;
        Ok((logits.to_kind(tch::Kind::Float), cache.into_cache(tokens, mask, n_layers)))
    }
}
