//! Paper section 6, step 1: the neurons and attention heads of every layer that carry each emotion
//! (analytic neuron contributions, closed-form head importance) and the emotion difference vectors delta_mu,
//! from a section-5 run's elicitation samples.
//!
//! `cargo run --release --example section6_1_attribute -- RUN [accepted|all] [DEVICE]` after
//! `section5_2_directions`.
mod common;

use emo_attribution::{attribute, AttributeOptions, SampleFilter};
use emo_data::Emotion;
use emo_model::{LoadOptions, Model};

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("section6_1_attribute RUN [accepted|all] [DEVICE]");
    let run = args.run();
    // SmolLM2's replies rarely pass the judge: rank from all samples unless told otherwise.
    let samples = args.or("samples", SampleFilter::All)?;
    let device = args.device()?;
    let manifest = run.require_manifest()?;
    let model = Model::load(&manifest.model.path, LoadOptions { device, ..Default::default() })?;
    let got = attribute(&run, &model, &AttributeOptions { samples, ..Default::default() })?;
    emo_attribution::figures::write_figures(&run, &got)?;
    let layer = model.transformer.config().n_layers / 2;
    for e in Emotion::ALL {
        let neurons = &got.neurons.ranking(e, layer)[..5];
        let heads = &got.heads.ranking(e, layer)[..3];
        println!("{:9} layer {layer}: top neurons {neurons:?}, top heads {heads:?}", e.name());
    }
    println!("wrote {}", emo_attribution::attribute::Attribution::dir(&run, samples).display());
    Ok(())
}
