//! The analyses of paper section 5 over a run: linear-probe F1 per layer and site (group-aware folds), PCA maps
//! of raw last-token states and of emotion vectors (Fig. 2), the cosine structure of the directions across all
//! sublayers (Fig. 6) and between emotions; saved as `analysis.json` and figures.
use std::collections::BTreeMap;
use std::time::Instant;

use emo_data::Emotion;
use emo_run::paper;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::directions::{Activations, EmotionDirections, GroupFilter, Site};
use crate::error::Result;
use crate::figures::{Figures, HeatmapPanel, ScatterPanel, Series};
use crate::pca::{cosine_matrix, pca};
use crate::probe::{probe, ProbeConfig};
use crate::run::RunDir;
use crate::store::{read_json, write_json};

/// Probe F1 by layer for one site.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeCurve {
    /// Macro F1 per layer on the emotion vectors `x_{g,e} - mu_g`.
    pub emotion_vectors: Vec<f64>,
    /// Macro F1 per layer on the raw last-token states.
    pub raw: Vec<f64>,
}

/// How consistent one emotion's direction is across sublayers (the paper's Appendix G).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SublayerConsistency {
    /// Smallest cosine between any two sublayers in the reference range.
    pub min: f64,
    /// Mean cosine over distinct pairs in the reference range.
    pub mean: f64,
}

/// `analysis.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Analysis {
    /// The group filter the directions used (the analyses use the same groups).
    pub filter: GroupFilter,
    /// Groups analysed.
    pub groups: usize,
    /// Cross-validation folds of the probes (groups never straddle folds).
    pub folds: usize,
    /// Probe curves by site name.
    pub probe: BTreeMap<String, ProbeCurve>,
    /// Layers of the PCA maps (the paper's 0, 9, 12, 27 of 28, scaled).
    pub pca_layers: Vec<usize>,
    /// The reference layer range (the paper's 21..=25 of 28, scaled) for the cosine summaries.
    pub reference_layers: (usize, usize),
    /// Cosine between the directions of two emotions, averaged over the reference layers: site -> 6x6.
    pub emotion_cosine: BTreeMap<String, Vec<Vec<f64>>>,
    /// Cross-sublayer consistency of each emotion over the reference layers (both sites).
    pub sublayer_consistency: BTreeMap<String, SublayerConsistency>,
    /// Figure files written (PNG and SVG), relative to the run folder.
    pub figures: Vec<String>,
    /// Seconds the analysis took.
    pub seconds: f64,
}

impl Analysis {
    /// Reads a run's `analysis.json`.
    pub fn read(run: &RunDir) -> Result<Analysis> {
        read_json(&run.analysis())
    }
}

/// Runs every analysis on a run with directions, given its activations ([`load_activations`]), and writes
/// `analysis.json` and `figures/`.
///
/// [`load_activations`]: crate::run::load_activations
pub fn analyze(run: &RunDir, acts: &Activations) -> Result<Analysis> {
    let start = Instant::now();
    let dirs = EmotionDirections::load(&run.directions())?;
    let summary: crate::directions::DirectionsSummary = read_json(&run.directions_summary())?;
    let groups = acts.groups(summary.filter == GroupFilter::Complete);
    let (n_layers, _) = acts.dims();
    let folds = groups.len().min(5);
    let cfg = ProbeConfig { folds, ..Default::default() };
    let mut probe_curves = BTreeMap::new();
    let mut vectors = BTreeMap::new();
    let raw_rows = Tensor::from_slice(&groups.iter().flat_map(|(_, r)| r.map(|i| i as i64)).collect::<Vec<_>>());
    for site in Site::ALL {
        let (v, labels, group_ids) = acts.emotion_vectors(site, &groups)?;
        let raw = acts.site(site).index_select(0, &raw_rows);
        let mut curve = ProbeCurve::default();
        if folds >= 2 {
            for l in 0..n_layers as i64 {
                curve.emotion_vectors.push(probe(&v.select(1, l), &labels, &group_ids, 6, &cfg)?.macro_f1);
                curve.raw.push(probe(&raw.select(1, l), &labels, &group_ids, 6, &cfg)?.macro_f1);
            }
        }
        probe_curves.insert(site.name().to_string(), curve);
        vectors.insert(site, (v, raw, labels));
    }

    let pca_layers: Vec<usize> = paper::PCA_LAYERS.iter().map(|&l| paper::scaled(l, n_layers)).collect();
    let reference_layers = paper::scaled_range(paper::REFERENCE_DIRECTION_LAYERS, n_layers);
    let (rl0, rl1) = reference_layers;

    let mut emotion_cosine = BTreeMap::new();
    for site in Site::ALL {
        let d = dirs.site(site); // [6, L, d]
        let mut m = vec![vec![0.0; 6]; 6];
        for l in rl0..=rl1 {
            let c = cosine_matrix(&d.select(1, l as i64))?;
            for (i, row) in m.iter_mut().enumerate() {
                for (j, x) in row.iter_mut().enumerate() {
                    *x += c.double_value(&[i as i64, j as i64]) / (rl1 - rl0 + 1) as f64;
                }
            }
        }
        emotion_cosine.insert(site.name().to_string(), m);
    }

    // One emotion's direction at every sublayer, in the paper's order A0, M0, A1, M1, ...
    let mut heatmaps = Vec::new();
    let mut sublayer_consistency = BTreeMap::new();
    for e in Emotion::ALL {
        let inter = Tensor::stack(&[dirs.get(Site::ResidMid, e), dirs.get(Site::ResidPost, e)], 1).view([2 * n_layers as i64, -1]);
        let c = cosine_matrix(&inter)?;
        let values: Vec<Vec<f64>> =
            (0..2 * n_layers).map(|i| Vec::<f64>::try_from(c.get(i as i64).to_kind(Kind::Double))).collect::<std::result::Result<_, _>>()?;
        let band: Vec<usize> = (2 * rl0..2 * rl1 + 2).collect();
        let pairs: Vec<f64> =
            band.iter().flat_map(|&i| band.iter().filter(move |&&j| j > i).map(move |&j| (i, j))).map(|(i, j)| values[i][j]).collect();
        sublayer_consistency.insert(
            e.name().to_string(),
            SublayerConsistency {
                min: pairs.iter().copied().fold(f64::INFINITY, f64::min),
                mean: pairs.iter().sum::<f64>() / pairs.len().max(1) as f64,
            },
        );
        heatmaps.push(HeatmapPanel { title: e.name().to_string(), values });
    }

    let fig = Figures::default();
    let dir = run.figures();
    let mut written = Vec::new();
    let names: Vec<&str> = Emotion::ALL.iter().map(|e| e.name()).collect();
    if folds >= 2 {
        let series: Vec<Series> = Site::ALL
            .iter()
            .flat_map(|&s| {
                let c = &probe_curves[s.name()];
                [("emotion vectors", &c.emotion_vectors), ("raw states", &c.raw)].map(|(what, ys)| Series {
                    name: format!("{} ({what})", s.name()),
                    points: ys.iter().enumerate().map(|(l, &y)| (l as f64, y)).collect(),
                    ..Default::default()
                })
            })
            .collect();
        written.push(fig.lines(dir.join("probe_f1"), "Linear-probe macro F1 by layer", "layer", "macro F1", &series, Some((0.0, 1.02)))?);
    }
    let mut panels = Vec::new();
    for (what, use_vectors) in [("raw states", false), ("emotion vectors", true)] {
        let (v, raw, labels) = &vectors[&Site::ResidPost];
        for &l in &pca_layers {
            let x = if use_vectors { v.select(1, l as i64) } else { raw.select(1, l as i64) };
            let points = match pca(&x, 2) {
                Ok(p) => p.projected_xy(),
                // Identical rows (no variance) at an early layer: draw them at the origin.
                Err(_) => vec![(0.0, 0.0); labels.len()],
            };
            panels.push(ScatterPanel { title: format!("layer {l}, {what}"), points, classes: labels.clone() });
        }
    }
    written.push(fig.scatter_grid(dir.join("pca"), &panels, &names, pca_layers.len())?);
    let ticks = crate::figures::sublayer_labels(n_layers);
    written.push(fig.heatmap_grid(
        dir.join("cosine_sublayers"),
        "Cosine similarity of each emotion's direction across sublayers",
        &heatmaps,
        &ticks,
        3,
        Some((-1.0, 1.0)),
    )?);
    let rel = |p: &std::path::Path| p.strip_prefix(&run.path).unwrap_or(p).display().to_string();
    let analysis = Analysis {
        filter: summary.filter,
        groups: groups.len(),
        folds,
        probe: probe_curves,
        pca_layers,
        reference_layers,
        emotion_cosine,
        sublayer_consistency,
        figures: written.iter().flat_map(|w| [rel(&w.png), rel(&w.svg)]).collect(),
        seconds: start.elapsed().as_secs_f64(),
    };
    write_json(&run.analysis(), &analysis)?;
    Ok(analysis)
}
