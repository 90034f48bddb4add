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
pub mod check;
pub mod controls;
pub mod engine;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod playground;
pub mod state;
pub mod text;
pub mod trace;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emo_model::{LoadOptions, Model};
pub use listen::ConnectionLimits;
pub use state::RequestLimits;

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
    /// Bearer token required on `/v1/*` routes and `/metrics`.
    pub api_key: Option<String>,
    /// Serve `/metrics` without the key.
    pub open_metrics: bool,
    /// Most sequences decoding or prefilling at once.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step between decoding steps (a longer prompt runs in chunks).
    pub prefill_tokens: usize,
    /// What a request may ask for and how long its body may take.
    pub requests: RequestLimits,
    /// How many connections, and how long a client may take to send a request's head.
    pub connections: ConnectionLimits,
    /// After SIGTERM, how long in-flight requests may take; then each ends with a `shutting_down` error.
    pub grace: Duration,
}

impl ServeOptions {
    /// The defaults for `model`: loopback, port 8080, batches of 16, [`RequestLimits::new`],
    /// [`ConnectionLimits::default`], 30 s grace.
    pub fn new(model: impl Into<String>) -> Self {
        ServeOptions {
            model: model.into(),
            load: LoadOptions::default(),
            directions: Vec::new(),
            circuits: Vec::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            open_metrics: false,
            max_batch: 16,
            prefill_tokens: emo_model::batcher::PREFILL_TOKENS,
            requests: RequestLimits::new(),
            connections: ConnectionLimits::default(),
            grace: Duration::from_secs(30),
        }
    }
}

/// Loads everything, serves until SIGTERM or Ctrl-C, lets in-flight requests finish within the grace
/// period, ends those still running with a `shutting_down` error after it, and returns once the engine has
/// stopped. Prints `emo serve: MODEL on http://ADDR (directions: ...; circuits: ...)` once it accepts
/// connections.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let model = Arc::new(Model::load(&opts.model, opts.load)?);
    let cfg = model.transformer.config();
    let (catalog, controls) = controls::load(cfg, &opts.directions, &opts.circuits)?;
    let views = playground::views(&catalog, &controls, cfg.n_layers, cfg.d_mlp);
    let metrics = Arc::new(metrics::Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let abort = Arc::new(AtomicBool::new(false));
    let engine = {
        let (model, metrics) = (model.clone(), metrics.clone());
        let cfg = engine::EngineConfig { max_batch: opts.max_batch, prefill_tokens: opts.prefill_tokens, abort: abort.clone() };
        std::thread::Builder::new()
            .name("emo-engine".into())
            .spawn(move || engine::run(model, controls, rx, cfg, metrics))
            .map_err(|e| ServeError::Io { context: "starting the engine thread".into(), source: e })?
    };
    let mut shared = state::Shared::new(model, opts.model.clone(), catalog, tx, metrics.clone(), opts.requests);
    shared.api_key = opts.api_key.clone();
    shared.open_metrics = opts.open_metrics;
    shared.max_batch = opts.max_batch;
    shared.views = views;
    let shared = Arc::new(shared);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io { context: "starting the async runtime".into(), source: e })?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ServeError::Io { context: format!("binding {addr}"), source: e })?;
        let local: SocketAddr = listener.local_addr().map_err(|e| ServeError::Io { context: "reading the bound address".into(), source: e })?;
        println!("emo serve: {} on http://{local} (directions: {}; circuits: {})", opts.model, names(&opts.directions), names(&opts.circuits));
        let _ = std::io::stdout().flush();
        let connections = listen::Connections::new(opts.connections);
        tokio::select! {
            _ = connections.accept(listener, http::router(shared.clone()), metrics) => {}
            _ = shutdown_signal() => {}
        }
        eprintln!("emo serve: stopping; in-flight requests have {:?} to finish", opts.grace);
        // Stop taking requests (new ones get 503) and let the engine end once its rows are done.
        shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        connections.start_drain();
        let drained = tokio::time::timeout(opts.grace, wait_closed(&connections)).await.is_ok();
        if !drained {
            eprintln!("emo serve: grace period over; ending the remaining replies with an error");
            abort.store(true, Ordering::Relaxed);
            // The handlers now write each reply's error (and a stream's [DONE]); give them a moment.
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_closed(&connections)).await;
        }
        Ok::<(), ServeError>(())
    });
    // The engine must stop before the process exits: LibTorch tears down its state at exit, and a step
    // running then aborts the process.
    abort.store(true, Ordering::Relaxed);
    let _ = engine.join();
    drop(runtime);
    served
}

/// Waits until every connection has closed.
async fn wait_closed(connections: &listen::Connections) {
    while connections.open() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
