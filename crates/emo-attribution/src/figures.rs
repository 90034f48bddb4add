//! Section 6's figures of the local components: per-emotion heatmaps of head importance (layers x heads) and
//! of the top neuron contributions by layer (layers x rank).
use std::path::PathBuf;

use emo_data::Emotion;
use emo_run::figures::{Figures, HeatmapPanel, Written};
use emo_run::{Result, RunDir};
use tch::Kind;

use crate::attribute::Attribution;

/// Neurons shown per layer in the contribution heatmap.
pub const TOP_NEURONS: usize = 16;

fn rows(t: &tch::Tensor) -> Result<Vec<Vec<f64>>> {
    let n = t.size()[0];
    (0..n).map(|i| Ok(Vec::<f64>::try_from(t.get(i).to_kind(Kind::Double))?)).collect()
}

/// Writes `heads` and `top_neurons` (PNG and SVG) into `RUN/attribution/{samples}/figures/`.
pub fn write_figures(run: &RunDir, a: &Attribution) -> Result<Vec<Written>> {
    let dir: PathBuf = Attribution::dir(run, a.samples).join("figures");
    let fig = Figures::default();
    let n_layers = a.heads.mean.size()[1] as usize;
    let layer_labels: Vec<String> = (0..n_layers).map(|l| l.to_string()).collect();
    let head_panels = Emotion::ALL
        .iter()
        .map(|e| Ok(HeatmapPanel { title: e.name().to_string(), values: rows(&a.heads.mean.get(e.index() as i64))? }))
        .collect::<Result<Vec<_>>>()?;
    let n_heads = a.heads.mean.size()[2] as usize;
    let head_labels: Vec<String> = (0..n_heads).map(|h| h.to_string()).collect();
    let heads = fig.matrix_grid(
        dir.join("heads"),
        &format!("Head importance, {} samples", a.samples),
        &head_panels,
        &layer_labels,
        &head_labels,
        ("head", "layer"),
        3,
        None,
    )?;
    let neuron_panels = Emotion::ALL
        .iter()
        .map(|&e| {
            let c = a.neurons.c_mean.get(e.index() as i64);
            let values = (0..n_layers)
                .map(|l| {
                    let row = Vec::<f64>::try_from(c.get(l as i64).to_kind(Kind::Double))?;
                    Ok(a.neurons.ranking(e, l).into_iter().take(TOP_NEURONS).map(|j| row[j]).collect())
                })
                .collect::<Result<Vec<Vec<f64>>>>()?;
            Ok(HeatmapPanel { title: e.name().to_string(), values })
        })
        .collect::<Result<Vec<_>>>()?;
    let rank_labels: Vec<String> = (1..=TOP_NEURONS).map(|r| r.to_string()).collect();
    let neurons = fig.matrix_grid(
        dir.join("top_neurons"),
        &format!("Top {TOP_NEURONS} neuron contributions, {} samples", a.samples),
        &neuron_panels,
        &layer_labels,
        &rank_labels,
        ("rank", "layer"),
        3,
        None,
    )?;
    Ok(vec![heads, neurons])
}
