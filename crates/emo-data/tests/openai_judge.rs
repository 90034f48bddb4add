//! The OpenAI-compatible judge against a scripted server on loopback: fenced answers, retries after
//! transient errors, and API and parse failures reported apart.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emo_data::judge::{Failure, Judge};
use emo_data::openai_judge::parse_decision;
use emo_data::{Emotion, OpenAiConfig, OpenAiJudge};

/// Serves one scripted (status, body) per connection, recording each request; stops after the script.
fn serve(script: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (status, body) in script {
            let Ok((mut stream, _)) = listener.accept() else { return };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut req_body = vec![0; len];
            reader.read_exact(&mut req_body).unwrap();
            log.lock().unwrap().push(format!("{head}\n{}", String::from_utf8_lossy(&req_body)));
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (url, seen)
}

fn completion(content: &str) -> String {
    serde_json::json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string()
}

fn judge(url: String) -> OpenAiJudge {
    OpenAiJudge::new(OpenAiConfig {
        base_url: url,
        api_key: Some("sk-test".into()),
        model: "gpt-4o-mini".into(),
        temperature: 0.0,
        max_retries: 2,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
    })
}

#[test]
fn decisions_retries_and_failures() {
    let (url, seen) = serve(vec![
        (200, completion("```json\n{\"match\": 1, \"reason\": \"clear anger\"}\n```")),
        (500, "{\"error\": \"overloaded\"}".into()),
        (200, completion("{\"match\": 0, \"reason\": \"calm\"}")),
        (200, completion("I think it matches.")),
        (401, "{\"error\": \"bad key\"}".into()),
    ]);
    let mut j = judge(url);
    let v = j
        .judge(&[
            (Emotion::Anger, "How dare they!"),
            (Emotion::Fear, "The sky is blue."),
            (Emotion::Sadness, "text three"),
            (Emotion::Disgust, "text four"),
        ])
        .unwrap();
    assert_eq!(v[0].matched, Some(true));
    assert_eq!(v[1].matched, Some(false), "a 500 is retried: {:?}", v[1]);
    assert!(matches!(&v[2].failure, Some(Failure::Parse(_))), "{:?}", v[2]);
    assert!(matches!(&v[3].failure, Some(Failure::Api(m)) if m.contains("401")), "{:?}", v[3]);
    let requests = seen.lock().unwrap();
    assert_eq!(requests.len(), 5, "the 401 must not be retried");
    let first = &requests[0];
    assert!(first.starts_with("POST /v1/chat/completions"), "{first}");
    assert!(first.to_lowercase().contains("authorization: bearer sk-test"), "{first}");
    let body: serde_json::Value = serde_json::from_str(first.split_once("\n\n").unwrap().1.trim()).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["temperature"], 0.0);
    assert!(body["messages"][0]["content"].as_str().unwrap().starts_with("You are a careful rater."));
    assert!(body["messages"][1]["content"].as_str().unwrap().contains("Target emotion: anger\nText:\nHow dare they!"));
}

#[test]
fn an_unreachable_endpoint_is_an_api_failure_after_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener); // nobody listens there now
    let v = judge(url).judge(&[(Emotion::Anger, "x")]).unwrap();
    assert!(matches!(&v[0].failure, Some(Failure::Api(m)) if m.contains("after 3 attempts")), "{:?}", v[0]);
}

#[test]
fn decision_parsing() {
    assert_eq!(parse_decision("{\"match\": 1}").matched, Some(true));
    assert_eq!(parse_decision("```\n{\"match\": \"0\", \"reason\": \"r\"}\n```").matched, Some(false));
    assert_eq!(parse_decision(" {\"match\": true} ").matched, Some(true));
    assert!(matches!(parse_decision("{\"match\": 2}").failure, Some(Failure::Parse(_))));
    assert!(matches!(parse_decision("").failure, Some(Failure::Parse(_))));
}
