//! Paper section 5, step 3: steer replies to neutral prompts with the run's directions
//! (`h += 8 * RMS(h) * v_e[L]` on the paper's layers, scaled to the model's depth) and judge them.
//!
//! `cargo run --release --example section5_3_steer -- RUN [SCENARIOS] [DEVICE]` after `section5_2_directions`.
use emo_data::{Dataset, Split};
use emo_directions::run::{run_stage, DatasetInfo, RunDir};
use emo_directions::steer::steering_stage;
use emo_directions::{Accuracy, EmotionDirections, SteerOptions};
use emo_model::{LoadOptions, Model};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run = RunDir::new(args.next().unwrap_or_else(|| "runs/example".into()));
    let n: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let device = emo_model::device::parse_device(&args.next().unwrap_or_else(|| "cpu".into()))?;

    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    let directions = EmotionDirections::load(&run.directions())?;
    let scenarios = emo_data::sev::spread(Dataset::builtin().split(Split::Test), n);
    let mut judge = emo_data::EmbeddingJudge::load_default()?;
    let info = DatasetInfo::of("builtin", Split::Test, &scenarios);
    let cfg = model.transformer.config();
    let stage = steering_stage("steering-test".into(), &scenarios, info, "embedding", &directions, cfg, &SteerOptions::default())?;
    run_stage(&run, &model, &mut judge, &stage)?;
    let replies = run.read_replies("steering-test")?;
    for r in replies.iter().step_by(replies.len().div_ceil(6).max(1)) {
        println!("[{}] {}", r.emotion, r.gen_text.trim());
    }
    println!("{}", Accuracy::of(&replies)?.markdown());
    Ok(())
}
