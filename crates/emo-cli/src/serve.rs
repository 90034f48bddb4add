//! `emo serve`, and the steering, modulation and sampling options `emo generate` shares with the server's
//! request fields (so that a served reply can be checked against the command line).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use emo_model::{RowControl, Sampling, TransformerConfig};
use emo_serve::api::{CircuitRequest, SteeringRequest, TraceRequest};
use emo_serve::controls::Requested;
use emo_serve::{serve, ServeOptions};
use emo_steer::trace::EmotionTrace;

/// `emo serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: crate::args::ModelArgs,
    /// A direction set requests may steer with, NAME=PATH (.safetensors, .npz, .npy, a folder of control
    /// vectors, or a run folder); repeatable.
    #[arg(long = "directions", value_name = "NAME=PATH")]
    pub directions: Vec<String>,
    /// A circuit set requests may modulate with, NAME=DIR (ours or the authors' layout); repeatable.
    #[arg(long = "circuits", value_name = "NAME=DIR")]
    pub circuits: Vec<String>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes and /metrics (default: $EMO_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Serve /metrics without the key.
    #[arg(long)]
    pub open_metrics: bool,
    /// Most sequences decoding or prefilling at once.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Prompt tokens prefilled per step between decoding steps (longer prompts run in chunks).
    #[arg(long, default_value_t = emo_model::batcher::PREFILL_TOKENS)]
    pub prefill_tokens: usize,
    /// Most requests waiting before 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Most new tokens a request may ask for.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Seconds in-flight requests get after SIGTERM; then each ends with a `shutting_down` error.
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
    /// Most connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's head, idle kept-alive connections included.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client may take to send a request's body (408 after).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
}

fn named(flag: &str, v: &[String]) -> Result<Vec<(String, PathBuf)>> {
    v.iter()
        .map(|s| {
            let (n, p) = s.split_once('=').with_context(|| format!("{flag} `{s}`: expected NAME=PATH"))?;
            Ok((n.to_string(), PathBuf::from(p)))
        })
        .collect()
}

pub fn serve_cmd(a: &ServeArgs) -> Result<()> {
    anyhow::ensure!(
        a.max_batch > 0 && a.max_queue > 0 && a.max_tokens > 0 && a.max_connections > 0 && a.prefill_tokens > 0,
        "--max-batch, --max-queue, --max-tokens, --max-connections and --prefill-tokens must be positive"
    );
    let seconds = |flag: &str, s: f64| -> Result<Duration> {
        anyhow::ensure!(s.is_finite() && s > 0.0 && s <= 86_400.0, "{flag} must be between 0 and 86400 seconds, got {s}");
        Ok(Duration::from_secs_f64(s))
    };
    let opts = ServeOptions {
        model: a.model.model.clone(),
        load: a.model.load.options()?,
        directions: named("--directions", &a.directions)?,
        circuits: named("--circuits", &a.circuits)?,
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().or_else(|| std::env::var("EMO_API_KEY").ok().filter(|k| !k.is_empty())),
        open_metrics: a.open_metrics,
        max_batch: a.max_batch,
        prefill_tokens: a.prefill_tokens,
        requests: emo_serve::RequestLimits {
            max_queue: a.max_queue,
            max_tokens: a.max_tokens,
            body_timeout: seconds("--body-timeout", a.body_timeout)?,
            ..emo_serve::RequestLimits::new()
        },
        connections: emo_serve::ConnectionLimits {
            max_connections: a.max_connections,
            header_timeout: seconds("--header-timeout", a.header_timeout)?,
        },
        grace: Duration::from_secs(a.grace),
    };
    serve(opts)?;
    Ok(())
}

/// `emo generate`'s edits and sampling: the same settings as the server's `steering`, `circuit`,
/// `temperature`, `top_p`, `top_k` and `seed` request fields.
#[derive(Args, Clone, Debug, Default)]
pub struct ControlArgs {
    /// Steer every reply towards this emotion with --directions.
    #[arg(long, value_name = "EMOTION")]
    pub steer: Option<String>,
    /// Directions for --steer (same forms as `emo serve --directions`).
    #[arg(long)]
    pub directions: Option<PathBuf>,
    /// Steering alpha.
    #[arg(long, default_value_t = emo_run::paper::STEERING_ALPHA)]
    pub alpha: f64,
    /// Steering layers FIRST-LAST (default: the paper's 11-20 of 28 scaled to the model).
    #[arg(long)]
    pub layers: Option<String>,
    /// Tokens steered.
    #[arg(long, default_value = "last-prompt-and-generated")]
    pub positions: String,
    /// Modulate every reply towards this emotion with --circuits.
    #[arg(long, value_name = "EMOTION")]
    pub modulate: Option<String>,
    /// Circuits folder for --modulate.
    #[arg(long)]
    pub circuits: Option<PathBuf>,
    /// Modulation scale s.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling cut.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also print each reply's per-token emotion scores, read with --directions at the reference layers (the
    /// server's `emotion_trace`).
    #[arg(long)]
    pub trace: bool,
}

impl ControlArgs {
    /// The sampling settings.
    pub fn sampling(&self) -> Sampling {
        Sampling { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, seed: self.seed }
    }

    /// The row edits (and readout) these options ask for, checked and built exactly as the server does for
    /// a request, for a model on `device`.
    pub fn control(&self, cfg: &TransformerConfig, device: tch::Device) -> Result<RowControl> {
        if self.trace && self.directions.is_none() {
            bail!("--trace reads with --directions: give them");
        }
        let steering = match (&self.steer, &self.directions) {
            (Some(e), Some(_)) => Some(SteeringRequest {
                emotion: e.clone(),
                alpha: Some(self.alpha),
                layers: self.layers.as_deref().map(crate::section5::parse_layers).transpose()?.map(|(a, b)| vec![a as i64, b as i64]),
                positions: Some(self.positions.clone()),
                site: None,
                directions: None,
            }),
            (None, None) => None,
            (None, Some(_)) if self.trace => None,
            _ => bail!("--steer and --directions go together"),
        };
        let circuit = match (&self.modulate, &self.circuits) {
            (Some(e), Some(_)) => Some(CircuitRequest { emotion: e.clone(), scale: Some(self.scale), circuits: None }),
            (None, None) => None,
            _ => bail!("--modulate and --circuits go together"),
        };
        let dirs: Vec<(String, PathBuf)> = self.directions.iter().map(|p| ("cli".to_string(), p.clone())).collect();
        let circs: Vec<(String, PathBuf)> = self.circuits.iter().map(|p| ("cli".to_string(), p.clone())).collect();
        let (catalog, controls) = emo_serve::controls::load(cfg, &dirs, &circs)?;
        let trace = self.trace.then(TraceRequest::default);
        let requested = Requested { steering: steering.as_ref(), circuit: circuit.as_ref(), trace: trace.as_ref(), guard: None };
        let spec = catalog.check(requested).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(controls.build(&spec, device)?)
    }
}

/// `emo generate --trace`'s table: one line per token, its text, top emotion and six scores.
pub fn trace_table(trace: &EmotionTrace) -> String {
    let mut s = format!("{:>4}  {:<16} {:<10}", "#", "token", "top");
    for e in &trace.emotions {
        s += &format!(" {e:>9}");
    }
    s.push('\n');
    for (i, (text, scores)) in trace.tokens.iter().zip(&trace.scores).enumerate() {
        let top = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or("", |(j, _)| trace.emotions[j]);
        s += &format!("{i:>4}  {:<16} {top:<10}", format!("{text:?}"));
        for v in scores {
            s += &format!(" {v:>9.3}");
        }
        s.push('\n');
    }
    let mean = trace.mean();
    s += &format!("mean: {}; top: {}\n", mean.iter().map(|(e, v)| format!("{e} {v:.3}")).collect::<Vec<_>>().join(", "), trace.top().unwrap_or("-"));
    s
}
