//! Section 6's figures: per-emotion heatmaps of head importance (layers x heads) and of the top neuron
//! contributions by layer (layers x rank), and the ablation and enhancement curves of Fig. 3.
use std::path::PathBuf;

use emo_data::Emotion;
use emo_run::figures::{Figures, HeatmapPanel, LinesPanel, Series, Written};
use emo_run::{Result, RunDir};
use tch::Kind;

use crate::attribute::Attribution;
use crate::sweeps::{csv_file, csv_path, read_csv, EditPositions, SweepKind, SweepOptions, SweepRow, Units, MEAN_OVER_SEEDS};

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

/// Delta s over k per emotion: targeted units solid with their 95% band, the mean of the random controls
/// dashed (from the shared baseline at k = 0).
fn sweep_series(rows: &[SweepRow]) -> Vec<Series> {
    let mut series = Vec::new();
    for e in Emotion::ALL {
        let target: Vec<&SweepRow> = rows.iter().filter(|r| r.emotion == e && r.control == "target").collect();
        if target.is_empty() {
            continue;
        }
        series.push(Series {
            band: target.iter().map(|r| (r.mean - r.ci95, r.mean + r.ci95)).collect(),
            ..Series::new(e.name(), target.iter().map(|r| (r.k as f64, r.mean)).collect())
        });
        let random: Vec<(f64, f64)> = target
            .iter()
            .filter(|r| r.k == 0)
            .map(|_| (0.0, 0.0))
            .chain(rows.iter().filter(|r| r.emotion == e && r.seed == Some(MEAN_OVER_SEEDS)).map(|r| (r.k as f64, r.mean)))
            .collect();
        if random.len() > 1 {
            series.push(Series { dashed: true, ..Series::new(format!("{} (random)", e.name()), random) });
        }
    }
    series
}

/// One panel of the paper's Fig. 3: its title, axes and [`sweep_series`].
fn sweep_panel(kind: SweepKind, units: Units, positions: EditPositions, rows: &[SweepRow]) -> LinesPanel {
    LinesPanel {
        title: format!("{kind} of {units}, {positions} token{}", if positions == EditPositions::All { "s" } else { "" }),
        x_label: format!("{units} per layer (k)"),
        y_label: "Delta s".into(),
        series: sweep_series(rows),
        y_range: None,
    }
}

/// One panel of the paper's Fig. 3: Delta s over k per emotion, targeted units solid with their 95% band,
/// the mean of the random controls dashed; `sweeps/{kind}-{units}-{positions}.png|svg`.
pub fn write_sweep_figure(run: &RunDir, opts: &SweepOptions, rows: &[SweepRow]) -> Result<Written> {
    let base = csv_path(run, opts).with_extension("");
    let p = sweep_panel(opts.kind, opts.units, opts.positions, rows);
    Figures::default().lines(base, &p.title, &p.x_label, &p.y_label, &p.series, p.y_range)
}

/// The paper's Fig. 3 from the run's sweep CSVs, its panels in the paper's order (ablation of neurons, of
/// heads; enhancement of neurons, of heads; heads at the last token, else at all positions), those the run
/// has: `sweeps/fig3.png|svg`. `None` when the run has no sweep.
pub fn write_fig3(run: &RunDir) -> Result<Option<Written>> {
    let mut panels = Vec::new();
    for kind in [SweepKind::Ablate, SweepKind::Enhance] {
        for units in [Units::Neurons, Units::Heads] {
            let found = [EditPositions::Last, EditPositions::All]
                .into_iter()
                .map(|positions| (positions, csv_file(run, kind, units, positions)))
                .find(|(_, path)| path.exists());
            if let Some((positions, path)) = found {
                panels.push(sweep_panel(kind, units, positions, &read_csv(&path)?));
            }
        }
    }
    if panels.is_empty() {
        return Ok(None);
    }
    let cols = if panels.len() == 1 { 1 } else { 2 };
    Figures::default()
        .lines_grid(run.path.join("sweeps").join("fig3"), "Targeted (solid, 95% band) against random units (dashed)", &panels, cols)
        .map(Some)
}
