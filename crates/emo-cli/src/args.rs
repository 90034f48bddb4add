//! Argument groups the commands share, each written once: how a model is loaded ([`LoadArgs`], also for
//! the commands that run a run folder's own model), which model ([`ModelArgs`]), and a generating stage's
//! batch and length ([`GenerateArgs`]). A new loading option (device, dtype, threads, ...) goes into
//! [`LoadArgs`] and reaches every model-running command.
use anyhow::{Context, Result};
use clap::Args;
use emo_model::device::{parse_devices, parse_kind_on};
use emo_model::{LoadOptions, Model, WeightFormat};

/// How a model is loaded: device, dtype, CPU threads, weight format.
#[derive(Args, Clone, Debug)]
pub(crate) struct LoadArgs {
    /// auto (every visible GPU, else the CPU), cpu, cuda, cuda:N, or a comma list (cuda:0,cuda:1) placing
    /// contiguous layer ranges on each device in proportion to its free memory.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// f32, bf16, f16, or auto: bf16 on CUDA and on a CPU with avx512_bf16 or AMX (there bf16 ran the 1.5B
    /// model up to 3x faster than f32), f32 on other CPUs (where bf16 generated 3.2-3.6x slower):
    /// docs/performance.md.
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
    /// CPU threads for LibTorch (default: LibTorch's choice).
    #[arg(long)]
    pub(crate) threads: Option<i32>,
    /// How a GGUF file's quantized weights are held: dequantized (exact, the default) or packed (Q4_0, Q4_1,
    /// Q4_K, Q5_0 and Q8_0 matrices stay packed as int4, multiplied in bf16 on the CPU; docs/performance.md).
    #[arg(long, default_value = "dequantized")]
    pub(crate) weights: String,
    /// A Jinja chat template file used instead of the model's own: for base models that have none
    /// (gemma-3-270m). Every command of a run must be given the same one.
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<std::path::PathBuf>,
}

impl LoadArgs {
    /// Applies `--threads` and returns the load options of `--device`, `--dtype` and `--weights`.
    pub(crate) fn options(&self) -> Result<LoadOptions> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        let devices = parse_devices(&self.device).with_context(|| format!("--device {}", self.device))?;
        Ok(LoadOptions::new(devices[0], parse_kind_on(&self.dtype, devices[0])?).devices(devices).weights(WeightFormat::parse(&self.weights)?))
    }

    /// Loads `model`.
    pub(crate) fn load(&self, model: &str) -> Result<Model> {
        let opts = self.options()?;
        let loaded = Model::load(model, opts).with_context(|| format!("loading model `{model}`"))?;
        match &self.chat_template {
            None => Ok(loaded),
            Some(file) => {
                let source = std::fs::read_to_string(file).with_context(|| format!("reading the chat template {}", file.display()))?;
                loaded.with_chat_template(&source).with_context(|| format!("the chat template {}", file.display()))
            }
        }
    }

    /// Loads the model `run` was made with and checks it is the same model files (`steer`, `attribute`,
    /// `sweep`, `importance`, `modulate`: the model itself is the run's).
    pub(crate) fn load_run(&self, run: &emo_directions::RunDir) -> Result<Model> {
        let manifest = run.require_manifest()?;
        let model = self.load(&manifest.model.path)?;
        emo_directions::elicit::open_run(run, &model, &manifest.model.reference)?;
        Ok(model)
    }
}

/// Which model, and how it is loaded: what every command that names its model shares.
#[derive(Args, Clone, Debug)]
pub(crate) struct ModelArgs {
    /// Built-in alias (smollm2-135m, qwen2.5-coder-0.5b, opt-in qwen2.5-coder-1.5b and gemma-3-270m), a .gguf file, a Hugging Face folder or repo id.
    #[arg(long, short, default_value = emo_model::model::DEFAULT_MODEL)]
    pub(crate) model: String,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
}

impl ModelArgs {
    /// Loads the model.
    pub(crate) fn load(&self) -> Result<Model> {
        self.load.load(&self.model)
    }
}

/// A generating stage's batch and reply length (`elicit`, `steer`, `modulate`); the rest of the decoding
/// is the stage's own, the paper's.
#[derive(Args, Clone, Debug)]
pub(crate) struct GenerateArgs {
    /// Prompts per batch (32: the best throughput per prompt on a 2-core CPU within 2 GB).
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Maximum new tokens per reply (the paper: 100).
    #[arg(long, default_value_t = 100)]
    pub(crate) max_new_tokens: usize,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        GenerateArgs { batch: 32, max_new_tokens: 100 }
    }
}

/// Whether a command draws progress bars.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ProgressArgs {
    /// No progress bars.
    #[arg(long)]
    pub(crate) quiet: bool,
}

impl ProgressArgs {
    /// Whether to draw progress bars.
    pub(crate) fn shown(&self) -> bool {
        !self.quiet
    }
}

/// The name of a steering or modulation stage in its run.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct StageNameArgs {
    /// Name of this stage in the run (default `steering-{split}` or `modulation-{split}`): other names keep
    /// several settings, e.g. an alpha sweep, side by side in one run and its report.
    #[arg(long)]
    pub(crate) stage: Option<String>,
}

impl StageNameArgs {
    /// `--stage`, or `default`: letters, digits, '-', '_' or '.', and not the elicitation's name.
    pub(crate) fn name(&self, default: &str) -> Result<String> {
        let name = self.stage.as_deref().unwrap_or(default).to_string();
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && name != "elicit",
            "--stage `{name}`: use letters, digits, '-', '_' or '.', and not `elicit`"
        );
        Ok(name)
    }
}
