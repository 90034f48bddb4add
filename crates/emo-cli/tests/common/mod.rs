//! Shared by the `emo serve` tests: a server on a free loopback port, requests, synthetic controls.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use emo_data::Emotion;
use emo_modulate::circuit::{CircuitSet, PerKind};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

pub const KEY: &str = "test-key";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random unit directions and a random circuit per emotion, shaped like SmolLM2 (30 layers, d_model 576,
/// 9 heads of 64, 1,536 neurons): enough to change replies, and files in the formats the server loads.
pub fn synthetic_controls(dir: &Path) -> (PathBuf, PathBuf) {
    let (l, d, h, dh, m) = (30i64, 576i64, 9usize, 64i64, 1536usize);
    tch::manual_seed(0);
    let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2, [-1], true);
    let dirs = emo_steer::EmotionDirections {
        resid_mid: unit(Tensor::randn([6, l, d], (Kind::Float, tch::Device::Cpu))),
        resid_post: unit(Tensor::randn([6, l, d], (Kind::Float, tch::Device::Cpu))),
    };
    let file = dir.join("directions.safetensors");
    dirs.save(&file, &BTreeMap::new()).unwrap();
    let circuits = Emotion::ALL
        .iter()
        .enumerate()
        .map(|(e, &emotion)| {
            let layers = (0..l as usize)
                .map(|layer| ((0..16).map(|i| (i * 97 + e * 13 + layer * 7) % m).collect(), vec![(e + layer) % h, (e + layer + 4) % h]))
                .collect();
            emo_test_support::circuit(emotion, 0, PerKind { mlp: 0, attn: 0 }, PerKind { mlp: 4, attn: 2 }, layers)
        })
        .collect();
    let set = CircuitSet {
        circuits,
        delta_mu_attn: Tensor::randn([6, l, h as i64 * dh], (Kind::Float, tch::Device::Cpu)) * 2.0,
        delta_mu_mlp: Tensor::randn([6, l, m as i64], (Kind::Float, tch::Device::Cpu)) * 2.0,
        n_heads: h,
    };
    let cdir = dir.join("circuits");
    std::fs::create_dir_all(&cdir).unwrap();
    set.save(&cdir).unwrap();
    (file, cdir)
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        // On the CPU unless the test names its devices.
        let device: &[&str] = if extra.contains(&"--device") { &[] } else { &["--device", "cpu"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_emo"))
            .args(["serve", "--port", "0"])
            .args(device)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start emo serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(at) = line.find("http://") else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("emo serve did not start: {line}{err}");
        };
        Server { url: line[at..].split_whitespace().next().unwrap().to_string(), child }
    }

    pub fn post(&self, key: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = ureq::post(&format!("{}/v1/chat/completions", self.url)).set("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = resp.status();
        (status, serde_json::from_str(&resp.into_string().unwrap()).unwrap())
    }

    /// Posts every body (with the key) from its own thread, each 40 ms after the previous one, so that they
    /// join a running batch at different steps; the answers in order.
    pub fn post_staggered<B: AsRef<str> + Sync>(&self, bodies: &[B]) -> Vec<Value> {
        std::thread::scope(|s| {
            let handles: Vec<_> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    s.spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(40 * i as u64));
                        self.post(Some(KEY), b.as_ref()).1
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    pub fn get(&self, path: &str) -> String {
        ureq::get(&format!("{}{path}", self.url)).set("Authorization", &format!("Bearer {KEY}")).call().unwrap().into_string().unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics");
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("{name} not in {text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn request(prompt: &str, max_tokens: usize, extra: Value) -> String {
    let mut v = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

pub fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content in {v}")).to_string()
}

/// Streams one request with raw HTTP; returns the text, the data lines, and whether it ended with [DONE].
pub fn stream(url: &str, body: &str) -> (String, Vec<Value>, bool) {
    let resp = ureq::post(&format!("{url}/v1/chat/completions"))
        .set("Authorization", &format!("Bearer {KEY}"))
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in BufReader::new(resp.into_reader()).lines() {
        // A connection cut mid-stream ends the reading: the caller sees no [DONE].
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        chunks.push(v);
    }
    (text, chunks, done)
}
