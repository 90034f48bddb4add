//! Paper section 5, step 1: elicit emotional replies to a few built-in scenarios while capturing the last
//! prompt token's residual stream in the same pass.
//!
//! `cargo run --release --example section5_1_elicit -- RUN [SCENARIOS] [DEVICE]` (CPU by default; `cuda` where
//! present). Rerunning resumes an interrupted run.
mod common;

use emo_data::{Dataset, Split};
use emo_directions::elicit::{elicitation_stage, open_run};
use emo_directions::run::{DatasetInfo, ELICIT};
use emo_directions::{Accuracy, ElicitOptions};
use emo_model::{LoadOptions, Model};
use emo_run::generation::run_stage;

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section5_1_elicit RUN [SCENARIOS] [DEVICE]");
    let run = args.run();
    let n: usize = args.or("n", 4)?;
    let device = args.device()?;

    let model = Model::load("smollm2-135m", LoadOptions { device, ..Default::default() })?;
    let scenarios = emo_data::sev::spread(Dataset::builtin().split(Split::Sev), n);
    let mut judge = emo_data::EmbeddingJudge::load_default()?;
    open_run(&run, &model, "smollm2-135m")?;
    let info = DatasetInfo::of("builtin", Split::Sev, &scenarios);
    let stage = elicitation_stage(ELICIT.into(), &scenarios, info, "embedding", &ElicitOptions::default())?;
    let stats = run_stage(&run, &model, &mut judge, &stage)?;
    println!("{} prompts, {:.1} tokens/s", stats.prompts, stats.new_tokens as f64 / stats.generate_seconds);
    println!("{}", Accuracy::of(&run.read_replies(ELICIT)?)?.markdown());
    Ok(())
}
