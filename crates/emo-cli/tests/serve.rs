//! `emo serve` from the outside: a server on a free loopback port with a real model, a synthetic direction
//! set and a synthetic circuit set of the model's shape, talked to with raw HTTP and with the real `openai`
//! Python client.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{content, request, scratch, stream, synthetic_controls, workspace, Server, KEY};
use serde_json::{json, Value};

/// `emo generate`'s reply to one prompt with extra flags.
fn cli_reply(prompt: &str, max_tokens: usize, flags: &[&str]) -> String {
    let n = max_tokens.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_emo"))
        .args(["generate", "--device", "cpu", "--json", "--max-new-tokens", &n])
        .args(flags)
        .arg(prompt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    v["reply"].as_str().unwrap().to_string()
}

#[test]
fn serves_plain_steered_modulated_and_streamed_replies_as_the_cli_gives_them() {
    let dir = scratch("serve");
    let (dirs, circuits) = synthetic_controls(&dir);
    let (d, c) = (format!("syn={}", dirs.display()), format!("syn={}", circuits.display()));
    // The model's layers over two devices (the same CPU twice): every reply still equals the CLI's on one.
    let server = Server::start(&["--device", "cpu,cpu", "--directions", &d, "--circuits", &c, "--api-key", KEY, "--max-tokens", "400"]);
    let prompts = ["Tell me about your weekend.", "What is your favourite food?", "Describe a rainy day."];
    let steer = json!({"steering": {"emotion": "anger", "alpha": 8.0}});
    let modulate = json!({"circuit": {"emotion": "fear", "scale": 1.0}});

    // Alone, each reply equals `emo generate` with the same settings.
    let (status, plain) = server.post(Some(KEY), &request(prompts[0], 12, json!({})));
    assert_eq!(status, 200, "{plain}");
    assert_eq!(content(&plain), cli_reply(prompts[0], 12, &[]));
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(
        plain["usage"]["completion_tokens"].as_u64().unwrap() + plain["usage"]["prompt_tokens"].as_u64().unwrap(),
        plain["usage"]["total_tokens"].as_u64().unwrap()
    );
    let (_, steered) = server.post(Some(KEY), &request(prompts[0], 12, steer.clone()));
    let dirs_s = dirs.display().to_string();
    assert_eq!(content(&steered), cli_reply(prompts[0], 12, &["--steer", "anger", "--directions", &dirs_s, "--alpha", "8"]));
    assert_ne!(content(&steered), content(&plain), "steering changes the reply");
    let (_, modulated) = server.post(Some(KEY), &request(prompts[0], 12, modulate.clone()));
    let circ_s = circuits.display().to_string();
    assert_eq!(content(&modulated), cli_reply(prompts[0], 12, &["--modulate", "fear", "--circuits", &circ_s]));
    assert_ne!(content(&modulated), content(&plain), "modulation changes the reply");

    // Under concurrent load (plain, steered and modulated rows in one batch, joining at different steps),
    // every greedy reply equals the same request sent alone.
    let bodies: Vec<String> =
        prompts.iter().flat_map(|p| [request(p, 16, json!({})), request(p, 16, steer.clone()), request(p, 16, modulate.clone())]).collect();
    let alone: Vec<String> = bodies.iter().map(|b| content(&server.post(Some(KEY), b).1)).collect();
    let together: Vec<String> = server.post_staggered(&bodies).iter().map(content).collect();
    assert_eq!(together, alone);

    // Streamed: the same text in chunks, then [DONE]; usage when asked.
    let body = request(prompts[0], 12, json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (text, chunks, done) = stream(&server.url, &body);
    assert!(done && text == content(&plain), "{text:?} vs {:?}", content(&plain));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks.last().unwrap()["usage"], plain["usage"]);
    // A stop string ends the reply before it.
    let plain_text = content(&plain);
    let word: String = plain_text.split_whitespace().nth(2).unwrap().to_string();
    let (_, stopped) = server.post(Some(KEY), &request(prompts[0], 12, json!({"stop": [word.clone()]})));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(content(&stopped), plain_text[..plain_text.find(&word).unwrap()]);
    // Seeded sampling repeats itself.
    let sampled = request(prompts[1], 12, json!({"temperature": 1.0, "seed": 7}));
    assert_eq!(content(&server.post(Some(KEY), &sampled).1), content(&server.post(Some(KEY), &sampled).1));

    // Bad input: 400 naming the field, 401 without the key, 404 for another model; none stops the server.
    let cases: Vec<(Option<&str>, String, u16, Option<&str>)> = vec![
        (Some(KEY), "{\"messages\": [".into(), 400, None),
        (Some(KEY), "{\"model\": \"smollm2-135m\"}".into(), 400, None),
        (Some(KEY), json!({"messages": [{"role": "user", "content": 5}]}).to_string(), 400, Some("messages[0].content")),
        (Some(KEY), json!({"messages": []}).to_string(), 400, Some("messages")),
        (Some(KEY), json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(), 400, Some("messages[0].role")),
        (Some(KEY), request("x", 4, json!({"steering": {"emotion": "boredom"}})), 400, Some("steering.emotion")),
        (Some(KEY), request("x", 4, json!({"steering": {"emotion": "anger", "directions": "nope"}})), 400, Some("steering.directions")),
        (Some(KEY), request("x", 4, json!({"steering": {"emotion": "anger", "layers": [3, 30]}})), 400, Some("steering.layers")),
        (Some(KEY), request("x", 4, json!({"steering": {"emotion": "anger", "alpha": "big"}})), 400, Some("steering.alpha")),
        (Some(KEY), request("x", 4, json!({"circuit": {"emotion": "fear", "circuits": "other"}})), 400, Some("circuit.circuits")),
        (Some(KEY), request("x", 401, json!({})), 400, Some("max_tokens")),
        (Some(KEY), request("x", 4, json!({"temperature": 3})), 400, Some("temperature")),
        (Some(KEY), request(&"word ".repeat(9000), 4, json!({})), 400, Some("messages")),
        (Some(KEY), request("x", 4, json!({"model": "gpt-4o"})), 404, Some("model")),
        (None, request("x", 4, json!({})), 401, None),
        (Some("wrong"), request("x", 4, json!({})), 401, None),
    ];
    for (key, body, want, param) in &cases {
        let (status, v) = server.post(*key, body);
        assert_eq!(status, *want, "{body:.80}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], *p, "{body:.80}: {v}");
        }
    }
    assert_eq!(content(&server.post(Some(KEY), &request(prompts[0], 12, json!({}))).1), content(&plain), "still serving");

    // A client that goes away frees its row: its reply stops long before its 400 tokens.
    let before = server.metric("emo_decode_steps_total ");
    {
        let resp = ureq::post(&format!("{}/v1/chat/completions", server.url))
            .set("Authorization", &format!("Bearer {KEY}"))
            .set("Content-Type", "application/json")
            .send_string(&request(prompts[2], 400, json!({"stream": true, "min_tokens": 400})))
            .unwrap();
        let mut lines = BufReader::new(resp.into_reader()).lines();
        for _ in 0..6 {
            lines.next();
        }
        assert_eq!(server.metric("emo_batch_size "), 1.0);
    }
    let t = Instant::now();
    while server.metric("emo_batch_size ") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(20), "the row of a closed stream is still decoding");
        std::thread::sleep(Duration::from_millis(100));
    }
    let spent = server.metric("emo_decode_steps_total ") - before;
    assert!(spent < 400.0, "the closed stream decoded {spent} tokens");

    // The endpoints beside completions.
    assert!(server.get("/health").contains("ok"));
    let models: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2-135m");
    assert_eq!(models["data"][0]["circuits"], json!(["syn"]));
    assert!(server.metric("emo_requests_total{status=\"400\"} ") >= 12.0);
    assert!(server.metric("emo_completion_tokens_total ") > 100.0);

    // The real openai client: plain, streamed, steered, modulated, and its error types.
    let python = workspace().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `scripts/setup.sh --test` (it installs the openai client)", python.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_client.py");
    let out = Command::new(&python).arg(&script).args([&format!("{}/v1", server.url), KEY, "smollm2-135m"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let weekend = request(prompts[0], 12, json!({}));
    assert_eq!(got["plain"]["text"], content(&server.post(Some(KEY), &weekend).1));
    assert_eq!(got["stream"]["text"], got["plain"]["text"]);
    assert_eq!(got["stream"]["usage"], json!([plain["usage"]["prompt_tokens"], plain["usage"]["completion_tokens"]]));
    assert_eq!(got["steered"], content(&steered));
    assert_eq!(got["modulated"], content(&modulated));
    assert_eq!(got["trace"]["text"], got["plain"]["text"]);
    assert_eq!(got["trace"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>(), got["plain"]["text"]);
    assert_eq!((got["trace"]["rows"].as_u64(), got["trace"]["width"].as_u64()), (plain["usage"]["completion_tokens"].as_u64(), Some(6)));
    assert_eq!(got["trace_stream_tokens"], got["trace"]["tokens"]);
    // A guard whose threshold every score passes acts from the second token: the first is the plain one.
    assert_eq!(got["guard"]["switches"], json!([{"token": 1, "active": true}]));
    assert_ne!(got["guard"]["text"], got["plain"]["text"]);
    assert_eq!(got["bad_emotion"], json!({"status": 400, "param": "steering.emotion"}));
    assert_eq!(got["bad_key"], 401);
    assert_eq!(got["models"], json!(["smollm2-135m"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn a_full_queue_answers_429_and_sigterm_lets_running_requests_finish() {
    let mut server = Server::start(&["--max-batch", "1", "--max-queue", "1", "--grace", "60"]);
    // Started without directions: a trace or a guard has nothing to read with.
    for extra in [json!({"emotion_trace": {}}), json!({"guard": {"emotion": "anger", "threshold": 1, "action": {"steer": {"emotion": "away"}}}})] {
        let (status, v) = server.post(None, &request("x", 4, extra));
        let field = v["error"]["param"].as_str().unwrap_or_default().to_string();
        assert!(status == 400 && field.ends_with(".directions") && v["error"]["message"].as_str().unwrap().contains("--directions"), "{v}");
    }
    let page = ureq::get(&format!("{}/", server.url)).call().unwrap();
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("connect-src 'self'")));
    assert!(page.into_string().unwrap().contains("<title>"), "the playground is served at /");
    let body = request("Write a long story about a dragon.", 48, json!({"min_tokens": 48}));
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let (server, body) = (&server, &body);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(30 * i));
                    server.post(None, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let full = results.iter().filter(|(s, v)| *s == 429 && v["error"]["type"] == "rate_limit_error").count();
    assert!(ok >= 1 && full >= 1 && ok + full == 5, "{results:?}");
    for (_, v) in results.iter().filter(|(s, _)| *s == 200) {
        assert_eq!(v["usage"]["completion_tokens"], 48);
    }

    // SIGTERM while a request runs: it still gets its whole reply, then the server exits 0.
    let url = server.url.clone();
    let running = std::thread::spawn(move || {
        let resp = ureq::post(&format!("{url}/v1/chat/completions")).set("Content-Type", "application/json").send_string(&request(
            "Write a long story about a dragon.",
            48,
            json!({"min_tokens": 48}),
        ));
        resp.map(|r| r.into_string().unwrap()).map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let reply: Value = serde_json::from_str(&running.join().unwrap().expect("the in-flight request completes")).unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 48);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "emo serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

/// The trace of a reply as scores per token, and its token texts.
fn trace_of(v: &Value) -> (Vec<String>, Vec<Vec<f64>>) {
    let t = &v["choices"][0]["emotion_trace"];
    let tokens = t["tokens"].as_array().unwrap_or_else(|| panic!("no trace in {v}")).iter().map(|x| x.as_str().unwrap().to_string()).collect();
    let scores = t["scores"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    (tokens, scores)
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: tokens");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs())), "{what}, token {i}: {g:?} against {w:?}");
    }
}

#[test]
fn emotion_traces_and_guards_per_request_alone_streamed_and_under_load() {
    let dir = scratch("serve-trace");
    let (dirs, circuits) = synthetic_controls(&dir);
    let (d, c) = (format!("syn={}", dirs.display()), format!("syn={}", circuits.display()));
    let server = Server::start(&["--directions", &d, "--circuits", &c, "--api-key", KEY]);
    let prompt = "Tell me about your weekend.";
    let trace = json!({"emotion_trace": {"directions": "syn"}});

    // The trace: one row of six scores per generated token, the reply unchanged, the same as `emo generate
    // --trace` (which reads through `generate` rather than the server's continuous batch).
    let (_, plain) = server.post(Some(KEY), &request(prompt, 16, json!({})));
    let (status, traced) = server.post(Some(KEY), &request(prompt, 16, trace.clone()));
    assert_eq!(status, 200, "{traced}");
    assert_eq!(content(&traced), content(&plain), "reading changes nothing");
    let t = &traced["choices"][0]["emotion_trace"];
    // The paper's order (emo_data::Emotion::ALL), that of every score row.
    assert_eq!(t["emotions"], json!(["anger", "sadness", "happiness", "fear", "surprise", "disgust"]));
    let (tokens, scores) = trace_of(&traced);
    assert_eq!(tokens.len() as u64, traced["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(tokens.concat(), content(&traced), "the token texts make up the reply");
    let mean_anger = scores.iter().map(|s| s[0]).sum::<f64>() / scores.len() as f64;
    assert!((t["mean"]["anger"].as_f64().unwrap() - mean_anger).abs() < 1e-4, "{t}");
    assert!(t["top"].is_string());
    let dirs_s = dirs.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_emo"))
        .args(["generate", "--device", "cpu", "--json", "--max-new-tokens", "16", "--trace", "--directions", &dirs_s, prompt])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_scores: Vec<Vec<f64>> =
        serde_json::from_value::<Vec<Vec<f64>>>(cli["emotion_trace"]["scores"].clone()).unwrap_or_else(|e| panic!("{e}: {cli}"));
    assert_close(&scores, &cli_scores, "server against emo generate --trace");
    // Without --json: the reply, then a table of the tokens' scores and the summary.
    let out = Command::new(env!("CARGO_BIN_EXE_emo"))
        .args(["generate", "--device", "cpu", "--max-new-tokens", "16", "--trace", "--directions", &dirs_s, prompt])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with(content(&plain).trim()) && table.contains(" anger ") && table.contains("top: "), "{table}");
    assert_eq!(table.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(), tokens.len(), "{table}");
    // Streamed: each chunk carries its own tokens; together they are the trace, and the last chunk the summary.
    let (text, chunks, done) = stream(&server.url, &request(prompt, 16, json!({"stream": true, "emotion_trace": {}})));
    assert!(done && text == content(&plain));
    let streamed: Vec<Vec<f64>> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["emotion_trace"]["scores"].as_array().cloned())
        .flatten()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_close(&streamed, &scores, "streamed trace");
    let last = chunks.iter().rev().find(|c| !c["choices"][0]["finish_reason"].is_null()).unwrap();
    assert_eq!(last["choices"][0]["emotion_trace"]["top"], t["top"], "{last}");

    // A guard that never fires leaves the reply as it is; one that fires changes only the tokens after the one
    // whose score crossed. Where it crosses comes from the plain trace: the first emotion and token k >= 1
    // whose score rises above every earlier one of that emotion.
    let never = json!({"guard": {"emotion": "anger", "threshold": 1e6, "action": {"steer": {"emotion": "happiness"}}}});
    let (_, unfired) = server.post(Some(KEY), &request(prompt, 16, never.clone()));
    assert_eq!(content(&unfired), content(&plain));
    assert_eq!(unfired["choices"][0]["guard"], json!([]));
    let emotions = ["anger", "sadness", "happiness", "fear", "surprise", "disgust"];
    let max_before = |j: usize, k: usize| scores[..k].iter().map(|s| s[j]).fold(f64::MIN, f64::max);
    let (j, k) = (0..6)
        .flat_map(|j| (1..scores.len() - 4).map(move |k| (j, k)))
        .find(|&(j, k)| scores[k][j] > max_before(j, k) + 0.05)
        .unwrap_or_else(|| panic!("no rising score in {scores:?}"));
    let threshold = (scores[k][j] + max_before(j, k)) / 2.0;
    let fires = json!({"emotion_trace": {}, "guard": {"emotion": emotions[j], "threshold": threshold, "action": {"steer": {"emotion": "away", "alpha": 12}}}});
    let before = server.metric("emo_guard_activations_total ");
    let (status, guarded) = server.post(Some(KEY), &request(prompt, 16, fires.clone()));
    assert_eq!(status, 200, "{guarded}");
    assert_eq!(guarded["choices"][0]["guard"], json!([{"token": k + 1, "active": true}]), "{emotions:?}[{j}] crossing {threshold} at token {k}");
    let (g_tokens, g_scores) = trace_of(&guarded);
    assert_eq!(g_tokens[..=k], tokens[..=k], "tokens up to the crossing are the plain reply's");
    assert_close(&g_scores[..=k], &scores[..=k], "scores up to the crossing");
    assert_ne!(content(&guarded), content(&plain), "steering away from {} changes the rest", emotions[j]);
    assert!(server.metric("emo_guard_activations_total ") >= before + 1.0);

    // Under concurrent load (traced, guarded, steered and plain rows joining at different steps), each reply and
    // trace equals the same request alone.
    let bodies = [
        request(prompt, 16, trace.clone()),
        request(prompt, 16, fires.clone()),
        request("Describe a rainy day.", 16, json!({"emotion_trace": {"layers": [20, 25]}, "steering": {"emotion": "fear", "alpha": 6}})),
        request("What is your favourite food?", 16, json!({})),
        request("Describe a rainy day.", 16, never.clone()),
        request(
            prompt,
            16,
            json!({"emotion_trace": {}, "guard": {"emotion": emotions[j], "threshold": threshold, "hold": "above", "action": {"circuit": {"emotion": "fear", "scale": 2}}}}),
        ),
    ];
    let alone: Vec<Value> = bodies.iter().map(|b| server.post(Some(KEY), b).1).collect();
    let together = server.post_staggered(&bodies);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(content(a), content(b), "request {i}");
        assert_eq!(a["choices"][0]["guard"], b["choices"][0]["guard"], "request {i}");
        if !a["choices"][0]["emotion_trace"].is_null() {
            assert_close(&trace_of(b).1, &trace_of(a).1, &format!("request {i} in the batch"));
        }
    }

    // Bad input names the field.
    let bad = |extra: Value, field: &str| {
        let (status, v) = server.post(Some(KEY), &request(prompt, 4, extra.clone()));
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(field)), "{extra}: {v}");
    };
    bad(json!({"emotion_trace": {"directions": "nope"}}), "emotion_trace.directions");
    bad(json!({"emotion_trace": {"layers": [3, 30]}}), "emotion_trace.layers");
    bad(json!({"emotion_trace": {"layers": "middle"}}), "emotion_trace.layers");
    // JSON has no infinity: a number beyond f64's range is what a client can send.
    let huge = request(prompt, 4, json!({"guard": {"emotion": "anger", "threshold": "HUGE", "action": {"steer": {"emotion": "away"}}}}));
    let (status, v) = server.post(Some(KEY), &huge.replace("\"HUGE\"", "1e999"));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("guard.threshold")), "{v}");
    bad(json!({"guard": {"emotion": "anger", "threshold": "high", "action": {"steer": {"emotion": "away"}}}}), "guard.threshold");
    bad(json!({"guard": {"emotion": "boredom", "threshold": 1, "action": {"steer": {"emotion": "away"}}}}), "guard.emotion");
    bad(json!({"guard": {"emotion": "anger", "threshold": 1, "action": {}}}), "guard.action");
    bad(json!({"guard": {"emotion": "anger", "threshold": 1, "action": {"steer": {"emotion": "away", "alpha": 1000}}}}), "guard.action.steer.alpha");
    bad(json!({"guard": {"emotion": "anger", "threshold": 1, "hold": "forever", "action": {"steer": {"emotion": "away"}}}}), "guard.hold");
    bad(
        json!({"emotion_trace": {}, "guard": {"emotion": "anger", "threshold": 1, "layers": [1, 2], "action": {"steer": {"emotion": "away"}}}}),
        "guard.layers",
    );

    // The playground's views of what is loaded, behind the key.
    let view: Value = serde_json::from_str(&server.get("/v1/directions/syn")).unwrap();
    let cos = view["cosine"].as_array().unwrap();
    assert_eq!(cos.len(), 6);
    assert!((cos[2][2].as_f64().unwrap() - 1.0).abs() < 1e-4, "{view}");
    let circ: Value = serde_json::from_str(&server.get("/v1/circuits/syn")).unwrap();
    assert_eq!(circ["n_layers"], 30);
    assert!(!circ["emotions"].as_array().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The playground page in a real browser: Debian's headless Chromium, driven over DevTools by
/// scripts/test-support/playground_cdp.py, sends a steered message and waits for both replies and the coloured
/// tokens; then the server's refusal of a bad alpha shows on the page. `EMO_PLAYGROUND_SCREENSHOT=PATH` keeps
/// the first screenshot (docs/figures/playground.png is made so, with a run's directions and circuits).
#[test]
fn the_playground_page_steers_a_chat_in_headless_chromium() {
    let dir = scratch("serve-playground");
    let (dirs, circuits) = synthetic_controls(&dir);
    let (d, c) = (format!("syn={}", dirs.display()), format!("syn={}", circuits.display()));
    let server = Server::start(&["--directions", &d, "--circuits", &c, "--api-key", KEY]);
    let python = workspace().join(".venv/bin/python");
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    let chromium = chromium.unwrap_or_else(|| panic!("no Chromium: run `scripts/setup.sh --test` (it installs Debian's chromium)"));
    let driver = workspace().join("scripts/test-support/playground_cdp.py");
    let shot = std::env::var("EMO_PLAYGROUND_SCREENSHOT").map(std::path::PathBuf::from).unwrap_or_else(|_| dir.join("playground.png"));
    let drive = |extra: &[&str], png: &Path| {
        let out = Command::new(&python)
            .arg(&driver)
            .args(["--url", &format!("{}/", server.url), "--api-key", KEY, "--chromium", chromium, "--timeout", "180"])
            .args(["--screenshot", &png.display().to_string()])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let got = drive(&["--emotion", "anger", "--alpha", "8"], &shot);
    assert!(got["coloured_tokens"].as_u64().unwrap() > 0, "{got}");
    assert_ne!(got["controlled"], got["plain"], "{got}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot of the page");
    let refused = drive(&["--bad-alpha"], &dir.join("refused.png"));
    assert!(refused["error"].as_str().unwrap().contains("steering.alpha"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}
