//! Paper section 6 commands: `emo attribute`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use emo_attribution::{attribute, AttributeOptions};
use emo_directions::RunDir;

use crate::{emit, ModelArgs};

/// `emo attribute`.
#[derive(Args, Clone, Debug)]
pub struct AttributeArgs {
    /// A section-5 run folder (complete elicitation and directions).
    pub run: PathBuf,
    /// Which elicitation samples: accepted (the paper: replies the judge accepted) or all (for models whose
    /// replies rarely pass the judge).
    #[arg(long, default_value = "accepted")]
    pub samples: String,
    /// Prompts per forward pass (and per committed batch).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// CPU threads for LibTorch.
    #[arg(long)]
    pub threads: Option<i32>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn attribute_cmd(a: &AttributeArgs) -> Result<()> {
    let run = RunDir::new(&a.run);
    let manifest = run.require_manifest()?;
    let model_args = ModelArgs { model: manifest.model.path.clone(), device: a.device.clone(), dtype: a.dtype.clone(), threads: a.threads };
    let model = model_args.load()?;
    emo_directions::elicit::open_run(&run, &model, &manifest.model.reference)?;
    let opts = AttributeOptions { samples: a.samples.parse()?, batch_size: a.batch, progress: !a.quiet };
    let t = Instant::now();
    let got = attribute(&run, &model, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let figures = emo_attribution::figures::write_figures(&run, &got)?;
    emit(format!(
        "attribution over {} samples ({:?} per emotion; delta_mu from {} complete groups) in {secs:.1} s\nwrote {} and {} figures\n",
        got.samples,
        got.neurons.samples,
        got.delta_mu.groups,
        emo_attribution::attribute::Attribution::dir(&run, got.samples).display(),
        figures.len()
    ))
}
