//! `emo-serve`: an OpenAI-compatible chat-completion server in which every request may carry its own
//! residual steering or its own emotion circuit, batched together with requests that carry none.
//!
//! One engine thread owns the model and a continuous batch ([`emo_model::ContinuousBatch`]): requests
//! join between decoding steps and leave when they finish, each row with its own edits. The HTTP side
//! (axum on tokio) parses and checks requests, renders the chat template and streams text back; nothing
//! unchecked reaches the engine. See docs/serving.md for the endpoints and the extension fields.
//!
//! ```no_run
//! use emo_serve::{serve, ServeOptions};
//! let opts = ServeOptions {
//!     directions: vec![("paper".into(), "runs/paper/directions.safetensors".into())],
//!     ..ServeOptions::new("smollm2-135m")
//! };
//! serve(opts)?; // until SIGTERM or Ctrl-C
//! # Ok::<(), emo_serve::ServeError>(())
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod controls;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod text;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use emo_model::{LoadOptions, Model};

/// What can go wrong starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model, a direction set or a circuit set could not be loaded.
    #[error("{0}")]
    Load(String),
    /// The model failed to load.
    #[error(transparent)]
    Model(#[from] emo_model::ModelError),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, ServeError>;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Model reference (alias, `.gguf`, Hugging Face folder or repo id); also the id clients name.
    pub model: String,
    /// Device and dtype.
    pub load: LoadOptions,
    /// Named direction sets (`.safetensors`/`.npz`/`.npy`, a folder of control vectors, or a run folder).
    pub directions: Vec<(String, PathBuf)>,
    /// Named circuit folders (ours or the authors' layout).
    pub circuits: Vec<(String, PathBuf)>,
    /// Address to bind (127.0.0.1 unless told otherwise).
    pub host: String,
    /// Port (0: any free port; the one taken is printed).
    pub port: u16,
    /// Bearer token required on `/v1/*` routes.
    pub api_key: Option<String>,
    /// Most sequences decoding at once.
    pub max_batch: usize,
    /// Most requests waiting for the engine before 429.
    pub max_queue: usize,
    /// Most `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// After SIGTERM, how long in-flight requests may take before the server exits anyway.
    pub grace: Duration,
}

impl ServeOptions {
    /// The defaults for `model`: loopback, port 8080, batches of 16, a queue of 64, 512 tokens, 30 s grace.
    pub fn new(model: impl Into<String>) -> Self {
        ServeOptions {
            model: model.into(),
            load: LoadOptions::default(),
            directions: Vec::new(),
            circuits: Vec::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_batch: 16,
            max_queue: 64,
            max_tokens: 512,
            grace: Duration::from_secs(30),
        }
    }
}

/// Loads everything, serves until SIGTERM or Ctrl-C, lets in-flight requests finish within the grace
/// period, and returns. Prints `emo serve: MODEL on http://ADDR (directions: ...; circuits: ...)` once it
/// accepts connections.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let model = Arc::new(Model::load(&opts.model, opts.load)?);
    let (catalog, controls) = controls::load(model.transformer.config(), &opts.directions, &opts.circuits)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = {
        let (model, metrics) = (model.clone(), metrics.clone());
        let cfg = engine::EngineConfig { max_batch: opts.max_batch };
        std::thread::Builder::new()
            .name("emo-engine".into())
            .spawn(move || engine::run(model, controls, rx, cfg, metrics))
            .map_err(|e| ServeError::Io { context: "starting the engine thread".into(), source: e })?
    };
    let shared = Arc::new(http::Shared::new(model, opts.model.clone(), catalog, tx, metrics, opts.max_queue, opts.max_tokens, opts.api_key.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io { context: "starting the async runtime".into(), source: e })?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let drained = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ServeError::Io { context: format!("binding {addr}"), source: e })?;
        let local: SocketAddr = listener.local_addr().map_err(|e| ServeError::Io { context: "reading the bound address".into(), source: e })?;
        println!("emo serve: {} on http://{local} (directions: {}; circuits: {})", opts.model, names(&opts.directions), names(&opts.circuits));
        let _ = std::io::stdout().flush();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = http::router(shared.clone());
        let server = axum::serve(listener, app).with_graceful_shutdown({
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        });
        let signals = async move {
            shutdown_signal().await;
            eprintln!("emo serve: stopping; in-flight requests have {:?} to finish", opts.grace);
            // Stop taking requests: new ones get 503 while the connections drain.
            shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
            let _ = stop_tx.send(true);
            tokio::time::sleep(opts.grace).await;
        };
        tokio::select! {
            r = server => r.map(|_| true).map_err(|e| ServeError::Io { context: "serving".into(), source: e }),
            _ = signals => { eprintln!("emo serve: grace period over"); Ok(false) }
        }
    })?;
    drop(runtime);
    // Drained: the engine ends at its next idle poll. After the grace period it is not waited for.
    if drained {
        let _ = engine.join();
    }
    Ok(())
}

fn names(v: &[(String, PathBuf)]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
