//! The HTTP side: routes, API key, the protocol's edges (content type, body and header sizes, the body's
//! deadline), and the answer as one JSON object or as server-sent events. Every error, the router's own 404
//! and 405 included, is OpenAI's JSON error object. Fields are checked in [`crate::check`].
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{parse_request, ApiError, FinishReason, Usage};
use crate::check::check;
use crate::engine::{GuardSwitch, Job, Output, Piece};
use crate::state::{now, Shared};
use emo_steer::EmotionTrace;

/// The server's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/directions/{name}", get(crate::playground::directions))
        .route("/v1/circuits/{name}", get(crate::playground::circuits))
        .route("/", get(crate::playground::page))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "not_found", "no such route; see docs/serving.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; see docs/serving.md")
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), header_limit))
        .with_state(shared)
}

/// 431 for heads over the limit, in the JSON error format (hyper's own limit, far above, answers bare).
async fn header_limit(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let size: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > shared.limits.max_header_bytes {
        return ApiError::status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers take {size} bytes; this server's limit is {}", shared.limits.max_header_bytes),
        )
        .into_response();
    }
    next.run(request).await
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = shared.authorize(&headers) {
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

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.open_metrics {
        if let Err(e) = shared.authorize(&headers) {
            return e.into_response();
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let started = match read_body(&shared, &headers, body).await {
        Ok(body) => start(&shared, &body),
        Err(e) => Err(e),
    };
    match started {
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

/// The body of a chat request: the key first (nothing is read for a client without it), then
/// `Content-Type: application/json` (a `text/plain` POST is what a browser sends cross-site without asking),
/// then at most the body limit, within the body deadline.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    shared.authorize(headers)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() { "none".to_string() } else { format!("`{content_type}`") };
        return Err(ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be sent as `Content-Type: application/json`, got {shown}"),
        ));
    }
    let limit = shared.limits.max_body_bytes;
    let too_large = || {
        ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is over this server's limit of {limit} bytes"))
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(shared.limits.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::status(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {:?}", shared.limits.body_timeout),
        )),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::body(format!("the request body could not be read: {e}"))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// A request the engine has taken.
struct Started {
    id: u64,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
    // Whether the answer carries `emotion_trace` and `guard`.
    traced: bool,
    guarded: bool,
    out: UnboundedReceiver<Output>,
}

fn start(shared: &Shared, body: &[u8]) -> Result<Started, ApiError> {
    let checked = check(shared, parse_request(body)?)?;
    let context = shared.model.transformer.config().max_position;
    let budget = context.saturating_sub(checked.job_config.max_new_tokens);
    if let Some(seen) = crate::check::content_over(&shared.model.tokenizer, &checked.messages, budget)? {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the messages hold more than {seen} tokens, over the model's context of {context} tokens less max_tokens ({})",
                checked.job_config.max_new_tokens
            ),
        ));
    }
    let prompt =
        shared.model.encode_chat(&checked.messages).map_err(|e| ApiError::invalid("messages", format!("cannot render the conversation: {e}")))?;
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
    // A burst fills the engine's free rows as well as the queue: the engine takes them at its next step.
    let free_rows = shared.max_batch.saturating_sub(shared.metrics.engine_rows.load(Ordering::Relaxed));
    let queued = shared.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if queued >= shared.limits.max_queue + free_rows {
        shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("the queue is full ({} waiting); retry later", shared.limits.max_queue),
        ));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let traced = checked.control.readout.as_ref().is_some_and(|r| r.reported);
    let guarded = checked.control.guard.is_some();
    let job = Job { id, prompt, config: checked.job_config, control: checked.control, stop: checked.stop, out: tx };
    let sent = shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.send(job).is_ok()).unwrap_or(false);
    if !sent {
        shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"));
    }
    Ok(Started { id, prompt_tokens, stream: checked.stream, include_usage: checked.include_usage, traced, guarded, out: rx })
}

fn completion_id(id: u64) -> String {
    format!("chatcmpl-{id}")
}

async fn complete(shared: &Shared, mut started: Started) -> Response {
    let mut reply = Piece::default();
    while let Some(out) = started.out.recv().await {
        match out {
            Output::Piece(p) => {
                reply.text.push_str(&p.text);
                reply.trace.append(p.trace);
                reply.guard.extend(p.guard);
            }
            Output::Done { finish, completion_tokens } => {
                let usage = Usage::new(started.prompt_tokens, completion_tokens);
                shared.metrics.prompt(usage.prompt_tokens);
                let mut choice = serde_json::json!({"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": finish, "logprobs": null});
                if started.traced {
                    choice["emotion_trace"] = reply.trace.to_json();
                }
                if started.guarded {
                    choice["guard"] = serde_json::json!(reply.guard);
                }
                return Json(serde_json::json!({
                    "id": completion_id(started.id),
                    "object": "chat.completion",
                    "created": now(),
                    "model": shared.model_id,
                    "choices": [choice],
                    "usage": usage,
                }))
                .into_response();
            }
            Output::Failed { code, message } => return failure(code, message).into_response(),
        }
    }
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", "the engine stopped before the reply ended").into_response()
}

/// The error answer to an engine failure: 503 for a shutdown, 500 otherwise.
fn failure(code: &'static str, message: String) -> ApiError {
    let status = if code == "shutting_down" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    ApiError::status(status, code, message)
}

/// One `chat.completion.chunk` object with `choices`.
fn chunk_json(shared: &Shared, id: u64, choices: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": completion_id(id),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": shared.model_id,
        "choices": choices,
    })
}

/// The end of a stream cut by an error: a last chunk with `finish_reason` "error" and the error object, then
/// `[DONE]`.
fn error_end(shared: &Shared, id: u64, error: ApiError) -> Vec<SseEvent> {
    let mut last = chunk_json(shared, id, serde_json::json!([{"index": 0, "delta": {}, "finish_reason": FinishReason::Error, "logprobs": null}]));
    last["error"] = error.json()["error"].clone();
    vec![SseEvent::default().data(last.to_string()), SseEvent::default().data("[DONE]")]
}

/// One `chat.completion.chunk` event with `choices` (and `usage`, for the last chunk when asked).
fn chunk_event(shared: &Shared, id: u64, choices: serde_json::Value, usage: Option<Usage>) -> SseEvent {
    let mut v = chunk_json(shared, id, choices);
    if let Some(u) = usage {
        v["usage"] = serde_json::json!(u);
    }
    SseEvent::default().data(v.to_string())
}

fn chunk(shared: &Shared, id: u64, delta: serde_json::Value, finish: Option<FinishReason>) -> SseEvent {
    chunk_with(shared, id, delta, finish, None, &[])
}

/// A chunk whose choice also carries `emotion_trace` and `guard` when given.
fn chunk_with(
    shared: &Shared,
    id: u64,
    delta: serde_json::Value,
    finish: Option<FinishReason>,
    trace: Option<serde_json::Value>,
    guard: &[GuardSwitch],
) -> SseEvent {
    let mut choice = serde_json::json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null});
    if let Some(t) = trace {
        choice["emotion_trace"] = t;
    }
    if !guard.is_empty() {
        choice["guard"] = serde_json::json!(guard);
    }
    chunk_event(shared, id, serde_json::json!([choice]), None)
}

/// What a stream keeps between chunks.
struct StreamState {
    out: UnboundedReceiver<Output>,
    shared: Arc<Shared>,
    first: bool,
    ended: bool,
    // Every token's scores so far, for the summary of the last chunk.
    trace: EmotionTrace,
}

fn stream(shared: Arc<Shared>, started: Started) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let Started { id, prompt_tokens, include_usage, traced, out, .. } = started;
    let state = StreamState { out, shared, first: true, ended: false, trace: EmotionTrace::default() };
    let events = futures_util::stream::unfold(state, move |mut st| async move {
        let shared = st.shared.clone();
        if st.first {
            st.first = false;
            return Some((vec![chunk(&shared, id, serde_json::json!({"role": "assistant", "content": ""}), None)], st));
        }
        if st.ended {
            return None;
        }
        st.ended = true;
        let mut batch = Vec::new();
        match st.out.recv().await {
            Some(Output::Piece(p)) => {
                // A chunk's trace holds its own tokens; the last chunk the reply's summary.
                let trace = (traced && !p.trace.tokens.is_empty()).then(|| serde_json::json!(p.trace));
                st.trace.append(p.trace);
                batch.push(chunk_with(&shared, id, serde_json::json!({"content": p.text}), None, trace, &p.guard));
                st.ended = false;
            }
            Some(Output::Done { finish, completion_tokens }) => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                shared.metrics.prompt(usage.prompt_tokens);
                let summary = traced.then(|| {
                    let mut t = std::mem::take(&mut st.trace).to_json();
                    (t["tokens"], t["scores"]) = (serde_json::json!([]), serde_json::json!([]));
                    t
                });
                batch.push(chunk_with(&shared, id, serde_json::json!({}), Some(finish), summary, &[]));
                if include_usage {
                    batch.push(chunk_event(&shared, id, serde_json::json!([]), Some(usage)));
                }
                batch.push(SseEvent::default().data("[DONE]"));
            }
            Some(Output::Failed { code, message }) => batch = error_end(&shared, id, failure(code, message)),
            // The engine dropped the row without a word (it never does on purpose): still end the stream.
            None => batch = error_end(&shared, id, failure("engine_error", "the engine stopped before the reply ended".into())),
        }
        Some((batch, st))
    });
    let flat = futures_util::StreamExt::flat_map(events, |v| futures_util::stream::iter(v.into_iter().map(Ok)));
    Sse::new(flat).keep_alive(KeepAlive::default())
}
