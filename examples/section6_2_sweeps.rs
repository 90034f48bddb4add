//! Paper section 6, step 2 (Fig. 3): ablate and enhance the top-k neurons and heads of every layer against
//! seeded random units, Delta s on the test split, through prefix branching at the last prompt token.
//!
//! `cargo run --release --example section6_2_sweeps -- RUN [SCENARIOS] [DEVICE]` after
//! `section6_1_attribute` (with all samples).
mod common;

use emo_attribution::sweeps::{run_sweep, SweepKind, SweepOptions, Units, MEAN_OVER_SEEDS};
use emo_attribution::SampleFilter;
use emo_model::{LoadOptions, Model};

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section6_2_sweeps RUN [SCENARIOS] [DEVICE]");
    let run = args.run();
    let n: usize = args.or("n", 4)?;
    let device = args.device()?;
    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    for kind in [SweepKind::Ablate, SweepKind::Enhance] {
        for units in [Units::Neurons, Units::Heads] {
            let mut opts = SweepOptions::paper(kind, units, model.transformer.config());
            opts.limit = Some(n);
            opts.samples = SampleFilter::All;
            let rows = run_sweep(&run, &model, &opts)?;
            let fig = emo_attribution::figures::write_sweep_figure(&run, &opts, &rows)?;
            // The long tail at a glance: targeted against random at k = 4 (or the largest k below it).
            let k = opts.ks.iter().copied().filter(|&k| k <= 4).max().unwrap_or(0);
            for r in rows.iter().filter(|r| r.k == k && r.control == "target") {
                let random = rows.iter().find(|x| x.emotion == r.emotion && x.k == k && x.seed == Some(MEAN_OVER_SEEDS));
                println!("{kind} {units} k={k} {:9}: {:8.2} vs random {:8.2}", r.emotion.name(), r.mean, random.map_or(f64::NAN, |x| x.mean));
            }
            println!("figure: {}", fig.png.display());
        }
    }
    Ok(())
}
