//! Paper section 7, steps 1-2: sublayer importance (alpha x sigma injected along each sublayer's direction at
//! its output, the final state read on v_ref, through prefix branching), then every emotion's circuit by the
//! authors' budget rule, written as their JSON layout beside delta_mu.
//!
//! `cargo run --release --example section7_1_circuits -- RUN [accepted|all] [DEVICE]` after
//! `section6_1_attribute` with the same samples.
mod common;

use emo_attribution::{Attribution, SampleFilter};
use emo_circuits::circuit::overlap;
use emo_circuits::report::circuits_dir;
use emo_circuits::{assemble, sublayer_importance, Budget, ImportanceOptions};
use emo_model::{LoadOptions, Model};
use emo_modulate::Shape;

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section7_1_circuits RUN [accepted|all] [DEVICE]");
    let run = args.run();
    let samples = args.or("samples", SampleFilter::All)?;
    let device = args.device()?;
    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    let imp = sublayer_importance(&run, &model, &ImportanceOptions { samples, ..Default::default() })?;
    let fig = emo_circuits::figures::write_importance_figure(&run, &imp)?;
    println!("importance figure: {}", fig.png.display());
    let cfg = model.transformer.config();
    let attribution = Attribution::load(&run, samples)?;
    let set = assemble(&imp.profiles()?, &attribution, Shape::of(cfg), &Budget::paper_for(Shape::of(cfg)))?;
    let dir = circuits_dir(&run, samples);
    set.save(&dir)?;
    let ((nm, ns), (hm, hs)) = overlap(&set.circuits);
    println!("{}", emo_circuits::report::describe(&set));
    println!("overlap: neurons {nm:.3} ± {ns:.3}, heads {hm:.3} ± {hs:.3} (paper 0.056 ± 0.033, 0.454 ± 0.047); circuits in {}", dir.display());
    Ok(())
}
