//! The HTTP side: routes, API key, request checks, and the answer as one JSON object or as server-sent
//! events. Nothing a client sends reaches the engine before it is checked here.
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use emo_model::{ChatMessage, GenerationConfig, Model, Sampling};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{parse_request, ApiError, ChatRequest, Content, FinishReason, Stop, Usage};
use crate::controls::Catalog;
use crate::engine::{Job, Output};
use crate::metrics::Metrics;

/// What every handler shares.
pub struct Shared {
    /// The model (its tokenizer and chat template; the engine runs its weights).
    pub model: Arc<Model>,
    /// The id clients name it by.
    pub model_id: String,
    /// Loaded direction sets and circuits.
    pub catalog: Catalog,
    /// The engine's intake; `None` once the server stops accepting.
    pub jobs: Mutex<Option<Sender<Job>>>,
    /// Shared with the engine.
    pub metrics: Arc<Metrics>,
    /// Most requests waiting for the engine before 429.
    pub max_queue: usize,
    /// Most `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    next_id: AtomicU64,
}

impl Shared {
    /// Handler state over an engine intake.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Arc<Model>,
        model_id: String,
        catalog: Catalog,
        jobs: Sender<Job>,
        metrics: Arc<Metrics>,
        max_queue: usize,
        max_tokens: usize,
        api_key: Option<String>,
    ) -> Self {
        Shared { model, model_id, catalog, jobs: Mutex::new(Some(jobs)), metrics, max_queue, max_tokens, api_key, next_id: AtomicU64::new(1) }
    }
}

/// The server's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "not_found", "no such route; see docs/serving.md") })
        .with_state(shared)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &shared.api_key else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g.trim() == key => Ok(()),
        Some(_) => Err(ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", "incorrect API key provided")),
        None => Err(ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", "missing API key: send `Authorization: Bearer KEY`")),
    }
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&shared, &headers) {
        return e.into_response();
    }
    let circuits: Vec<&str> = shared.catalog.circuits.iter().map(|(n, _)| n.as_str()).collect();
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": shared.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "emotion-circuits",
            "directions": shared.catalog.directions,
            "circuits": circuits,
        }]
    }))
    .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

/// A checked request, ready for the engine.
struct Checked {
    job_config: GenerationConfig,
    control: crate::controls::ControlSpec,
    messages: Vec<ChatMessage>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn check(shared: &Shared, r: ChatRequest) -> Result<Checked, ApiError> {
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
    let max_tokens = r.max_completion_tokens.or(r.max_tokens).unwrap_or(shared.max_tokens.min(256) as u64);
    let field = if r.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    if max_tokens == 0 || max_tokens > shared.max_tokens as u64 {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` must be between 1 and {} (this server's limit), got {max_tokens}", shared.max_tokens),
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
    let control = shared.catalog.check(r.steering.as_ref(), r.circuit.as_ref())?;
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

async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    match start(&shared, &headers, &body) {
        Ok(started) => {
            if started.stream {
                shared.metrics.request(200);
                stream(shared, started).into_response()
            } else {
                let response = complete(&shared, started).await;
                shared.metrics.request(response.status().as_u16());
                response
            }
        }
        Err(e) => {
            shared.metrics.request(e.status.as_u16());
            e.into_response()
        }
    }
}

/// A request the engine has taken.
struct Started {
    id: u64,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
    out: UnboundedReceiver<Output>,
}

fn start(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Started, ApiError> {
    authorize(shared, headers)?;
    let checked = check(shared, parse_request(body)?)?;
    let prompt =
        shared.model.encode_chat(&checked.messages).map_err(|e| ApiError::invalid("messages", format!("cannot render the conversation: {e}")))?;
    let context = shared.model.transformer.config().max_position;
    let need = prompt.len() + checked.job_config.max_new_tokens;
    if need > context {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt ({} tokens) plus max_tokens ({}) exceeds the model's context of {context} tokens",
                prompt.len(),
                checked.job_config.max_new_tokens
            ),
        ));
    }
    let queued = shared.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if queued >= shared.max_queue {
        shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("the queue is full ({} waiting); retry later", shared.max_queue),
        ));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = Job { id, prompt, config: checked.job_config, control: checked.control, stop: checked.stop, out: tx };
    let sent = shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.send(job).is_ok()).unwrap_or(false);
    if !sent {
        shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"));
    }
    Ok(Started { id, prompt_tokens, stream: checked.stream, include_usage: checked.include_usage, out: rx })
}

fn completion_id(id: u64) -> String {
    format!("chatcmpl-{id}")
}

async fn complete(shared: &Shared, mut started: Started) -> Response {
    let mut text = String::new();
    while let Some(out) = started.out.recv().await {
        match out {
            Output::Text(t) => text.push_str(&t),
            Output::Done { finish, completion_tokens } => {
                let usage = Usage::new(started.prompt_tokens, completion_tokens);
                shared.metrics.prompt(usage.prompt_tokens);
                return Json(serde_json::json!({
                    "id": completion_id(started.id),
                    "object": "chat.completion",
                    "created": now(),
                    "model": shared.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null}],
                    "usage": usage,
                }))
                .into_response();
            }
            Output::Failed(msg) => return ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", msg).into_response(),
        }
    }
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", "the engine stopped before the reply ended").into_response()
}

/// One `chat.completion.chunk` event with `choices` (and `usage`, for the last chunk when asked).
fn chunk_event(shared: &Shared, id: u64, choices: serde_json::Value, usage: Option<Usage>) -> SseEvent {
    let mut v = serde_json::json!({
        "id": completion_id(id),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": shared.model_id,
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = serde_json::json!(u);
    }
    SseEvent::default().data(v.to_string())
}

fn chunk(shared: &Shared, id: u64, delta: serde_json::Value, finish: Option<FinishReason>) -> SseEvent {
    chunk_event(shared, id, serde_json::json!([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]), None)
}

fn stream(shared: Arc<Shared>, started: Started) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let Started { id, prompt_tokens, include_usage, out, .. } = started;
    let first = chunk(&shared, id, serde_json::json!({"role": "assistant", "content": ""}), None);
    let events = futures_util::stream::unfold((Some(first), out, shared, false), move |(first, mut out, shared, ended)| async move {
        if let Some(f) = first {
            return Some((vec![f], (None, out, shared, false)));
        }
        if ended {
            return None;
        }
        let mut batch = Vec::new();
        match out.recv().await {
            Some(Output::Text(t)) => batch.push(chunk(&shared, id, serde_json::json!({"content": t}), None)),
            Some(Output::Done { finish, completion_tokens }) => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                shared.metrics.prompt(usage.prompt_tokens);
                batch.push(chunk(&shared, id, serde_json::json!({}), Some(finish)));
                if include_usage {
                    batch.push(chunk_event(&shared, id, serde_json::json!([]), Some(usage)));
                }
                batch.push(SseEvent::default().data("[DONE]"));
                return Some((batch, (None, out, shared, true)));
            }
            Some(Output::Failed(msg)) => {
                let e = ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", msg);
                batch.push(SseEvent::default().data(e.json().to_string()));
                batch.push(SseEvent::default().data("[DONE]"));
                return Some((batch, (None, out, shared, true)));
            }
            None => return None,
        }
        Some((batch, (None, out, shared, false)))
    });
    let flat = futures_util::StreamExt::flat_map(events, |v| futures_util::stream::iter(v.into_iter().map(Ok)));
    Sse::new(flat).keep_alive(KeepAlive::default())
}
