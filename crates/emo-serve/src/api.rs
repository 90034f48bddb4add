//! The wire format: OpenAI's chat-completion request and response objects, this server's extension fields
//! (`steering`, `circuit`, and vLLM's `top_k`, `min_tokens`, `repetition_penalty`), and OpenAI-style errors.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// `POST /v1/chat/completions` body. Fields OpenAI defines and this server does not use (`logprobs`,
/// `presence_penalty`, ...) are accepted and ignored, as vLLM does.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The served model's id; other ids are refused.
    pub model: Option<String>,
    /// The conversation, rendered with the model's chat template.
    pub messages: Vec<Message>,
    /// Maximum new tokens.
    pub max_tokens: Option<u64>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// 0 = greedy; OpenAI's default is 1.
    pub temperature: Option<f64>,
    /// Nucleus sampling cut (1 = off).
    pub top_p: Option<f64>,
    /// Extension (vLLM): keep the k most likely tokens (0 or -1 = off).
    pub top_k: Option<i64>,
    /// Seed of the sampler; without one a fresh seed is drawn.
    pub seed: Option<i64>,
    /// Up to four strings that end the reply (not included in it).
    pub stop: Option<Stop>,
    /// Server-sent events in OpenAI's chunk format.
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a last chunk with `usage`.
    pub stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    pub n: Option<u64>,
    /// Extension (vLLM): end-of-sequence is forbidden before this many tokens.
    pub min_tokens: Option<u64>,
    /// Extension (vLLM, Hugging Face's semantics; 1 = off).
    pub repetition_penalty: Option<f64>,
    /// Extension: forbid repeating any n-gram of this size (the paper: 3).
    pub no_repeat_ngram_size: Option<u64>,
    /// Extension: residual steering of this request.
    pub steering: Option<SteeringRequest>,
    /// Extension: circuit modulation of this request.
    pub circuit: Option<CircuitRequest>,
    /// Extension: the six emotions' scores of every generated token.
    pub emotion_trace: Option<TraceRequest>,
    /// Extension: control that starts only once an emotion's score crosses a threshold.
    pub guard: Option<GuardRequest>,
}

/// One chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// system, user or assistant.
    pub role: String,
    /// A string, or a list of `{"type": "text", "text": ...}` parts.
    pub content: Content,
}

/// Message content.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// `stop`: one string or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the request's token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// `"steering": {...}`: residual steering as `emo steer` does it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringRequest {
    /// One of the paper's six emotions.
    pub emotion: String,
    /// `h += alpha * RMS(h) * v` (default: the paper's 8).
    pub alpha: Option<f64>,
    /// Inclusive layer range `[first, last]` (default: the paper's 11-20 of 28 scaled to the model).
    pub layers: Option<Vec<i64>>,
    /// Tokens edited (default `last-prompt-and-generated`, the authors').
    pub positions: Option<String>,
    /// Site whose directions are added: `resid_post` (default, the paper's) or `resid_mid`.
    pub site: Option<String>,
    /// Name of a direction set loaded at start-up (default: the only one).
    pub directions: Option<String>,
}

/// `"circuit": {...}`: circuit modulation as `emo modulate` does it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitRequest {
    /// One of the paper's six emotions.
    pub emotion: String,
    /// Scale s (default 1, the paper's).
    pub scale: Option<f64>,
    /// Name of a circuit set loaded at start-up (default: the only one).
    pub circuits: Option<String>,
}

/// `"emotion_trace": {...}`: the per-token emotion readout.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Name of a direction set loaded at start-up (default: the only one).
    pub directions: Option<String>,
    /// `"reference"` (default: the reference direction's layers, 21-25 of 28 scaled) or `[first, last]`.
    pub layers: Option<TraceLayers>,
}

/// The layers a readout averages over.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TraceLayers {
    /// `"reference"`.
    Named(String),
    /// `[first, last]`, inclusive.
    Range(Vec<i64>),
}

/// `"guard": {...}`: steer or modulate a reply from the token at which an emotion's score crosses a
/// threshold.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRequest {
    /// The emotion watched.
    pub emotion: String,
    /// The guard acts once the emotion's score (as `emotion_trace` reports it) is above this.
    pub threshold: f64,
    /// What it does.
    pub action: GuardActionRequest,
    /// `"rest"` (default: until the reply ends) or `"above"` (while the score stays above).
    pub hold: Option<String>,
    /// The direction set read (default: `emotion_trace`'s, or the only one loaded).
    pub directions: Option<String>,
    /// The layers read (default: `emotion_trace`'s, or `"reference"`).
    pub layers: Option<TraceLayers>,
}

/// A guard's action: exactly one of `steer` and `circuit`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardActionRequest {
    /// Residual steering towards an emotion, or `"away"` from the watched one.
    pub steer: Option<GuardSteerRequest>,
    /// Circuit modulation, as the request's own `circuit` field.
    pub circuit: Option<CircuitRequest>,
}

/// A guard's steering.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSteerRequest {
    /// One of the six emotions, or `"away"`: minus the watched emotion's direction.
    pub emotion: String,
    /// Alpha (default: the paper's 8).
    pub alpha: Option<f64>,
    /// Inclusive layer range (default: the paper's steering layers scaled to the model).
    pub layers: Option<Vec<i64>>,
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (chat template included).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts of a request with `prompt` and `completion` tokens.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    }
}

/// Why a reply ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The reply was cut by an error (its chunk carries an `error` object): a hidden state that stopped
    /// being finite, or a shutdown whose grace period ran out.
    Error,
}

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, naming the field or value.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// OpenAI's `code` (`invalid_api_key`, `model_not_found`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()), code: None }
    }

    /// 400 about the whole body.
    pub fn body(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: None, code: None }
    }

    /// Another status with a message.
    pub fn status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, code: Some(code) }
    }

    /// OpenAI's error type for the status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON error object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.json())).into_response();
        // A full queue or a draining server: tell well-behaved clients when to come back.
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a request body, naming the field of a type error (`messages[0].content`, `steering.alpha`).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    if body.is_empty() {
        return Err(ApiError::body("the request body is empty; expected a JSON object"));
    }
    // serde reads a struct from a JSON array too (fields by position); the API's body is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::body("the request body must be a JSON object (`{...}`)"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json counts a number beyond f64 (`1e999`, how a client spells infinity) as a syntax error, but
        // the path still names its field.
        if inner.is_syntax() && path != "." && inner.to_string().starts_with("number out of range") {
            ApiError::invalid(path.clone(), format!("`{path}` is a number beyond the range of a 64-bit float"))
        } else if inner.is_syntax() || inner.is_eof() {
            ApiError::body(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::body(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid field `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse_request(br#"{"messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        let e = parse_request(br#"{"messages": [], "steering": {"emotion": "anger", "alpha": "x"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("steering.alpha"), "{e:?}");
        let e = parse_request(br#"{"messages": [}"#).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e:?}");
        let e = parse_request(br#"{"model": "x"}"#).unwrap_err();
        assert!(e.message.contains("messages"), "{e:?}");
        let e = parse_request(br#"{"messages": [], "circuit": {"emotion": "fear", "scael": 2}}"#).unwrap_err();
        assert!(e.message.contains("scael"), "{e:?}");
        let e = parse_request(br#"{"messages": [], "guard": {"emotion": "anger", "threshold": 1e999}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("guard.threshold"), "{e:?}");
        let e = parse_request(br#"[null, [{"role": "user", "content": "hi"}]]"#).unwrap_err();
        assert!(e.message.contains("JSON object") && e.param.is_none(), "{e:?}");
    }

    #[test]
    fn a_plain_request_parses() {
        let r = parse_request(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "x", "logprobs": false}"#).unwrap();
        assert!(matches!(r.stop, Some(Stop::One(_))));
        assert_eq!(r.messages.len(), 1);
    }
}
