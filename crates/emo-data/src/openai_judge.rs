//! The paper's judge against any OpenAI-compatible `/v1/chat/completions` endpoint (the authors used
//! GPT-4o-mini). Code fences are stripped, transient failures retried with backoff, and API or parse
//! failures reported as such — upstream counted them silently as "no match".
use std::time::Duration;

use serde_json::{json, Value};

use crate::chat_judge::{user_prompt, SYSTEM};
use crate::judge::{Failure, Judge, Verdict};
use crate::{DataError, Emotion};

/// Settings of an [`OpenAiJudge`].
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Base URL including `/v1` (`OPENAI_BASE_URL`, default `https://api.openai.com/v1`).
    pub base_url: String,
    /// API key (`OPENAI_API_KEY`); sent as a bearer token when present.
    pub api_key: Option<String>,
    /// Model name (default `gpt-4o-mini`, the paper's judge).
    pub model: String,
    /// Sampling temperature (default 0).
    pub temperature: f64,
    /// Retries after the first attempt, for transport errors, HTTP 429 and 5xx.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl OpenAiConfig {
    /// Settings from the environment, with the paper's defaults.
    pub fn from_env() -> Self {
        OpenAiConfig {
            base_url: std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into()),
            api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()),
            model: "gpt-4o-mini".into(),
            temperature: 0.0,
            max_retries: 4,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
        }
    }
}

/// The paper's judge over HTTP.
pub struct OpenAiJudge {
    cfg: OpenAiConfig,
    agent: ureq::Agent,
}

impl OpenAiJudge {
    /// A judge with these settings.
    pub fn new(cfg: OpenAiConfig) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        OpenAiJudge { cfg, agent }
    }

    fn ask(&self, emotion: Emotion, text: &str) -> Verdict {
        let url = format!("{}/chat/completions", self.cfg.base_url.trim_end_matches('/'));
        let body = json!({
            "model": self.cfg.model,
            "temperature": self.cfg.temperature,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user_prompt(emotion, text)},
            ],
        })
        .to_string();
        let mut wait = self.cfg.backoff;
        let mut attempt = 0;
        loop {
            let mut req = self.agent.post(&url).set("Content-Type", "application/json");
            if let Some(key) = &self.cfg.api_key {
                req = req.set("Authorization", &format!("Bearer {key}"));
            }
            let error = match req.send_string(&body) {
                Ok(resp) => {
                    return match resp.into_string() {
                        Ok(s) => parse_response(&s),
                        Err(e) => Verdict::failed(Failure::Api(format!("reading the response: {e}"))),
                    }
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let detail = resp.into_string().unwrap_or_default();
                    let msg = format!("HTTP {code} from {url}: {}", detail.chars().take(200).collect::<String>());
                    if code != 429 && code < 500 {
                        return Verdict::failed(Failure::Api(msg)); // not transient: do not retry
                    }
                    msg
                }
                Err(e) => format!("{url}: {e}"),
            };
            if attempt >= self.cfg.max_retries {
                return Verdict::failed(Failure::Api(format!("{error} (after {} attempts)", attempt + 1)));
            }
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }
}

/// Reads the decision from a chat-completions response body.
pub fn parse_response(body: &str) -> Verdict {
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Verdict::failed(Failure::Api(format!("response is not JSON: {e}"))),
    };
    let Some(content) = v.pointer("/choices/0/message/content").and_then(Value::as_str) else {
        return Verdict::failed(Failure::Api("response has no choices[0].message.content".into()));
    };
    parse_decision(content)
}

/// Reads `{"match": 0|1, ...}` from the model's reply, with or without a Markdown code fence.
pub fn parse_decision(content: &str) -> Verdict {
    let mut s = content.trim();
    if let Some(rest) = s.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric()); // ```json
        s = rest.trim().strip_suffix("```").unwrap_or(rest).trim();
    }
    let v: Value = match serde_json::from_str(s) {
        Ok(v) => v,
        Err(e) => return Verdict::failed(Failure::Parse(format!("not JSON ({e}): {}", s.chars().take(80).collect::<String>()))),
    };
    let m = match v.get("match") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::Bool(b)) => Some(*b as i64),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    match m {
        Some(1) => Verdict::decided(true, 1.0),
        Some(0) => Verdict::decided(false, 0.0),
        _ => Verdict::failed(Failure::Parse(format!("`match` is not 0 or 1 in {v}"))),
    }
}

impl Judge for OpenAiJudge {
    fn name(&self) -> String {
        format!("openai:{}", self.cfg.model)
    }

    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, DataError> {
        Ok(items.iter().map(|(e, t)| self.ask(*e, t)).collect())
    }
}
