//! Paper section 7, step 3 (Table 2): circuit modulation of replies to the test split's neutral prompts,
//! judged, beside prompting and steering of the same run; then the run's report.
//!
//! `cargo run --release --example section7_2_modulate -- RUN [SCENARIOS] [accepted|all] [DEVICE]` after
//! `section7_1_circuits`.
mod common;

use emo_attribution::SampleFilter;
use emo_circuits::report::circuits_dir;
use emo_circuits::{modulation_stage, ModulateOptions};
use emo_data::Split;
use emo_directions::run::{DatasetInfo, ELICIT};
use emo_model::{LoadOptions, Model};
use emo_modulate::CircuitSet;
use emo_run::generation::run_stage;

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section7_2_modulate RUN [SCENARIOS] [accepted|all] [DEVICE]");
    let run = args.run();
    let n: usize = args.or("n", 4)?;
    let samples = args.or("samples", SampleFilter::All)?;
    let device = args.device()?;
    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    let cfg = model.transformer.config();
    let dir = circuits_dir(&run, samples);
    let set = CircuitSet::load_for(&dir, cfg)?;
    // The test split of the data the run was elicited on.
    let source = manifest.stages.get(ELICIT).map(|s| s.dataset(ELICIT)).transpose()?.map_or("builtin".to_string(), |d| d.source);
    let all = emo_data::sev::load_split((source != "builtin").then(|| std::path::Path::new(&source)), Split::Test)?;
    let scenarios = emo_data::sev::spread(&all, n);
    let info = DatasetInfo::of(&source, Split::Test, &scenarios);
    let mut judge = emo_data::EmbeddingJudge::load_default()?;
    let name = format!("modulation-test-{n}");
    let opts = ModulateOptions::default();
    let stage = modulation_stage(name.clone(), &scenarios, info, &emo_data::Judge::name(&judge), &set, cfg, &opts)?;
    run_stage(&run, &model, &mut judge, &stage)?;
    let acc = emo_directions::Accuracy::of(&run.read_replies(&name)?)?;
    println!("circuit modulation on {} test scenarios:\n{}", n, acc.markdown());
    let mut report = emo_directions::report::build_report(&run)?;
    emo_attribution::report::section6(&run, &mut report)?;
    emo_circuits::report::section7(&run, &mut report)?;
    println!("report: {}", report.write(&run.report())?.display());
    Ok(())
}
