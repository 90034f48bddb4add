//! Paper section 5, step 2: context-agnostic emotion directions from an elicitation run, their control-vector
//! export, and the analyses (linear probes, PCA maps, cosine structure).
//!
//! `cargo run --release --example section5_2_directions -- RUN` after `section5_1_elicit`.
mod common;

use emo_directions::directions::GroupFilter;

fn main() -> anyhow::Result<()> {
    let run = common::Args::new("section5_2_directions RUN").run();
    // SmolLM2 rarely follows the emotion instruction, so few groups are complete: use them all.
    let acts = emo_directions::run::load_activations(&run)?;
    let summary = emo_directions::extract::extract(&run, &acts, GroupFilter::All, false)?;
    println!("directions from {} groups -> {}", summary.groups_used, run.directions().display());
    let analysis = emo_directions::analysis::analyze(&run, &acts)?;
    let post = &analysis.probe["resid_post"];
    for (l, (v, r)) in post.emotion_vectors.iter().zip(&post.raw).enumerate() {
        println!("layer {l:2}: probe F1 emotion vectors {v:.3}, raw states {r:.3}");
    }
    println!("figures: {:?}", analysis.figures);
    Ok(())
}
