//! Paper section 5, step 3: steer replies to neutral prompts with the run's directions
//! (`h += 8 * RMS(h) * v_e[L]` on the paper's layers, scaled to the model's depth) and judge them.
//!
//! `cargo run --release --example section5_3_steer -- RUN [SCENARIOS] [DEVICE]` after `section5_2_directions`.
mod common;

use emo_data::{Dataset, Split};
use emo_directions::run::DatasetInfo;
use emo_directions::steer::steering_stage;
use emo_directions::{Accuracy, EmotionDirections, SteerOptions};
use emo_model::{LoadOptions, Model};
use emo_run::generation::run_stage;
use emo_steer::Steering;

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section5_3_steer RUN [SCENARIOS] [DEVICE]");
    let run = args.run();
    let n: usize = args.or("n", 2)?;
    let device = args.device()?;

    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    let directions = EmotionDirections::load(&run.directions())?;
    let scenarios = emo_data::sev::spread(Dataset::builtin().split(Split::Test), n);
    let mut judge = emo_data::EmbeddingJudge::load_default()?;
    let info = DatasetInfo::of("builtin", Split::Test, &scenarios);
    let steering = Steering::new(directions, model.transformer.config())?;
    let stage = steering_stage("steering-test".into(), &scenarios, info, "embedding", &steering, &SteerOptions::default())?;
    run_stage(&run, &model, &mut judge, &stage)?;
    let replies = run.read_replies("steering-test")?;
    for r in replies.iter().step_by(replies.len().div_ceil(6).max(1)) {
        println!("[{}] {}", r.emotion, r.gen_text.trim());
    }
    println!("{}", Accuracy::of(&replies)?.markdown());
    Ok(())
}
