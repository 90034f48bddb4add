//! What every request handler shares: the model, the loaded controls, the engine's intake, the metrics and the
//! limits; read by the HTTP side ([`crate::http`]) and by the field checks ([`crate::check`]).
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emo_model::Model;

use axum::http::{header, HeaderMap, StatusCode};

use crate::api::ApiError;
use crate::controls::Catalog;
use crate::engine::Job;
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
    /// The request limits.
    pub limits: RequestLimits,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Serve `/metrics` without the key even when one is set.
    pub open_metrics: bool,
    /// The engine's rows (decoding or prefilling at once).
    pub max_batch: usize,
    /// Per direction set, then per circuit set, what `GET /v1/directions/NAME` and `/v1/circuits/NAME` answer
    /// (computed at start-up, [`crate::playground::views`]).
    pub views: (Vec<serde_json::Value>, Vec<serde_json::Value>),
    pub(crate) next_id: AtomicU64,
}

/// What one request may ask for and how long it may take to arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most requests waiting for the engine before 429.
    pub max_queue: usize,
    /// Most `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest total size of a request's header names and values, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Longest a client may take to send the body once its head arrived (408 after).
    pub body_timeout: Duration,
}

impl RequestLimits {
    /// A queue of 64, 512 tokens, 2 MiB bodies, 16 KiB of headers, 30 s for a body.
    pub fn new() -> Self {
        RequestLimits { max_queue: 64, max_tokens: 512, max_body_bytes: 2 << 20, max_header_bytes: 16 << 10, body_timeout: Duration::from_secs(30) }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Handler state over an engine intake.
    pub fn new(model: Arc<Model>, model_id: String, catalog: Catalog, jobs: Sender<Job>, metrics: Arc<Metrics>, limits: RequestLimits) -> Self {
        Shared {
            model,
            model_id,
            catalog,
            jobs: Mutex::new(Some(jobs)),
            metrics,
            limits,
            api_key: None,
            open_metrics: false,
            max_batch: 1,
            views: (Vec::new(), Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether `headers` carry the API key (always, when the server has none).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if g.trim() == key => Ok(()),
            Some(_) => Err(ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", "incorrect API key provided")),
            None => Err(ApiError::status(StatusCode::UNAUTHORIZED, "invalid_api_key", "missing API key: send `Authorization: Bearer KEY`")),
        }
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
