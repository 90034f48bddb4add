//! Request checks: every field of a parsed [`ChatRequest`] against the served model, this server's limits and
//! the loaded controls, so that nothing unchecked reaches the engine.
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use emo_model::{ChatMessage, GenerationConfig, Sampling};

use crate::api::{ApiError, ChatRequest, Content, Stop};
use crate::state::{now, Shared};

/// A checked request, ready for the engine.
pub(crate) struct Checked {
    pub(crate) job_config: GenerationConfig,
    pub(crate) control: crate::controls::ControlSpec,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) stop: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

pub(crate) fn check(shared: &Shared, r: ChatRequest) -> Result<Checked, ApiError> {
    if let Some(m) = &r.model {
        if *m != shared.model_id {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::status(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!("the model `{m}` does not exist; this server serves `{}`", shared.model_id),
                )
            });
        }
    }
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::invalid(format!("messages[{i}].role"), format!("unknown role `{}`; expected system, user or assistant", m.role)));
        }
        let text = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut t = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(x)) => t.push_str(x),
                        _ => return Err(ApiError::invalid(format!("messages[{i}].content[{j}]"), "only text content parts are supported")),
                    }
                }
                t
            }
        };
        messages.push(ChatMessage::new(m.role.clone(), text));
    }
    if let Some(n) = r.n {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    let max_tokens = r.max_completion_tokens.or(r.max_tokens).unwrap_or(shared.limits.max_tokens.min(256) as u64);
    let field = if r.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    if max_tokens == 0 || max_tokens > shared.limits.max_tokens as u64 {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` must be between 1 and {} (this server's limit), got {max_tokens}", shared.limits.max_tokens),
        ));
    }
    let temperature = r.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("`temperature` must be between 0 and 2, got {temperature}")));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
    }
    let top_k = match r.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(ApiError::invalid("top_k", format!("`top_k` must be positive, 0 or -1 (off), got {k}"))),
    };
    let repetition_penalty = r.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::invalid("repetition_penalty", format!("`repetition_penalty` must be positive, got {repetition_penalty}")));
    }
    let min_tokens = r.min_tokens.unwrap_or(0);
    if min_tokens > max_tokens {
        return Err(ApiError::invalid("min_tokens", format!("`min_tokens` ({min_tokens}) is above the token limit ({max_tokens})")));
    }
    let stop = match r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid("stop", format!("at most 4 stop strings, got {}", stop.len())));
    }
    // Without a seed each request draws its own, as OpenAI's API does.
    let seed = match r.seed {
        Some(s) => s as u64,
        None => shared.next_id.load(Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now(),
    };
    let control = shared.catalog.check(crate::controls::Requested {
        steering: r.steering.as_ref(),
        circuit: r.circuit.as_ref(),
        trace: r.emotion_trace.as_ref(),
        guard: r.guard.as_ref(),
    })?;
    let job_config = GenerationConfig {
        max_new_tokens: max_tokens as usize,
        min_new_tokens: min_tokens as usize,
        repetition_penalty: repetition_penalty as f32,
        no_repeat_ngram_size: r.no_repeat_ngram_size.unwrap_or(0) as usize,
        eos_token_ids: shared.model.eos_token_ids.clone(),
        sampling: Sampling { temperature: temperature as f32, top_k, top_p: top_p as f32, seed },
        ..Default::default()
    };
    Ok(Checked {
        job_config,
        control,
        messages,
        stop,
        stream: r.stream.unwrap_or(false),
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Bytes of content tokenized at a time by [`content_over`].
const SLICE_BYTES: usize = 4096;

/// Whether the messages' content surely holds more than `budget` tokens, found by tokenizing it a slice at
/// a time and stopping once the count is past the budget: a 2 MB body is refused after about a budget's
/// worth of text instead of being tokenized whole. Returns the count reached when it is over. Each cut
/// between slices may add a token or two that the whole text would not have, so the count must beat the
/// budget by four tokens per cut before the answer is yes.
pub(crate) fn content_over(tokenizer: &emo_model::Tokenizer, messages: &[ChatMessage], budget: usize) -> Result<Option<usize>, ApiError> {
    let (mut count, mut cuts) = (0usize, 0usize);
    for m in messages {
        let mut rest = m.content.as_str();
        while !rest.is_empty() {
            let mut end = rest.len().min(SLICE_BYTES);
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            let ids = tokenizer.encode_text(&rest[..end]).map_err(|e| ApiError::invalid("messages", format!("cannot tokenize the messages: {e}")))?;
            count += ids.len();
            rest = &rest[end..];
            if count > budget + 4 * cuts {
                return Ok(Some(count));
            }
            cuts += 1;
        }
    }
    Ok(None)
}
