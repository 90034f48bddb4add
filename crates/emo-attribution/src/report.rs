//! Section 6 of a run's `report.md`: which samples ranked the units, the unit figures, and every sweep's
//! targeted-versus-random table with its figure.
use std::fmt::Write as _;

use emo_data::Emotion;
use emo_run::report::Report;
use emo_run::{Result, RunDir};

use crate::attribute::{Attribution, AttributionSummary};
use crate::samples::SampleFilter;
use crate::sweeps::{read_csv, MEAN_OVER_SEEDS};

/// Appends section 6 to `report` for whatever the run has: attributions and sweep CSVs. Nothing when the
/// run has neither.
pub fn section6(run: &RunDir, report: &mut Report) -> Result<()> {
    let mut any = false;
    for filter in [SampleFilter::Accepted, SampleFilter::All] {
        let dir = Attribution::dir(run, filter);
        let Ok(summary) = emo_run::store::read_json::<AttributionSummary>(&dir.join("summary.json")) else { continue };
        if !any {
            report.heading(2, "Section 6: emotion neurons and attention heads");
            any = true;
        }
        report.paragraph(&format!(
            "Units ranked from **{filter}** elicitation samples ({} per emotion in the order {}); delta_mu from {} \
             complete (scenario, valence) groups.",
            summary.samples_per_emotion.map(|n| n.to_string()).join(", "),
            Emotion::ALL.map(|e| e.name()).join(", "),
            summary.delta_mu_groups
        ));
        if let Ok(a) = Attribution::load(run, filter) {
            overlap_table(report, &a);
        }
        for fig in ["heads", "top_neurons"] {
            let png = dir.join("figures").join(format!("{fig}.png"));
            if png.exists() {
                report.figure(fig, &png, &run.path);
            }
        }
    }
    let sweeps = run.path.join("sweeps");
    let mut files: Vec<_> = std::fs::read_dir(&sweeps).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "csv"));
    files.sort();
    if !files.is_empty() {
        if !any {
            report.heading(2, "Section 6: emotion neurons and attention heads");
            any = true;
        }
        let fig3 = sweeps.join("fig3.png");
        if fig3.exists() {
            report.figure("Fig. 3: every sweep of the run", &fig3, &run.path);
        }
    }
    for csv in files {
        let rows = read_csv(&csv)?;
        let name = csv.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        report.heading(3, &format!("Sweep `{name}`"));
        report.paragraph("Delta s = s' - s (mean ± 95% interval over test prompts); random: the mean over seeded draws of the same k per layer.");
        let mut table = Vec::new();
        for r in rows.iter().filter(|r| r.control == "target") {
            let random = rows.iter().find(|x| x.emotion == r.emotion && x.k == r.k && x.seed == Some(MEAN_OVER_SEEDS));
            let ratio = random.map(|x| r.mean.abs() / x.mean.abs()).filter(|v| v.is_finite());
            table.push(vec![
                r.emotion.name().to_string(),
                r.k.to_string(),
                format!("{:.2} ± {:.2}", r.mean, r.ci95),
                random.map_or(String::new(), |x| format!("{:.2} ± {:.2}", x.mean, x.ci95)),
                ratio.map_or(String::new(), |v| format!("{v:.1}")),
            ]);
        }
        report.table(&["emotion", "k", "targeted Delta s", "random Delta s", "ratio of magnitudes"], &table);
        let png = csv.with_extension("png");
        if png.exists() {
            report.figure(&name, &png, &run.path);
        }
    }
    if any {
        let _ = writeln!(report);
    }
    Ok(())
}

/// Units per layer compared between emotions in the overlap table.
pub const OVERLAP_NEURONS: usize = 8;
/// Heads per layer compared between emotions in the overlap table.
pub const OVERLAP_HEADS: usize = 2;

/// Mean over layers of the Jaccard overlap |A ∩ B| / |A ∪ B| of two emotions' top-k units of each layer.
pub fn top_k_overlap(rank: impl Fn(Emotion, usize) -> Vec<usize>, a: Emotion, b: Emotion, k: usize, n_layers: usize) -> f64 {
    let mut total = 0.0;
    for l in 0..n_layers {
        let x: std::collections::BTreeSet<usize> = rank(a, l).into_iter().take(k).collect();
        let y: std::collections::BTreeSet<usize> = rank(b, l).into_iter().take(k).collect();
        total += x.intersection(&y).count() as f64 / x.union(&y).count().max(1) as f64;
    }
    total / n_layers.max(1) as f64
}

fn overlap_table(report: &mut Report, a: &Attribution) {
    let n_layers = a.heads.mean.size()[1] as usize;
    let mut rows = Vec::new();
    let mut pairs = (Vec::new(), Vec::new());
    for (i, &e) in Emotion::ALL.iter().enumerate() {
        let mut row = vec![e.name().to_string()];
        for &f in &Emotion::ALL {
            let n = top_k_overlap(|e, l| a.neurons.ranking(e, l), e, f, OVERLAP_NEURONS, n_layers);
            let h = top_k_overlap(|e, l| a.heads.ranking(e, l), e, f, OVERLAP_HEADS, n_layers);
            row.push(format!("{n:.2} / {h:.2}"));
            if Emotion::ALL.iter().position(|&x| x == f).is_some_and(|j| j > i) {
                pairs.0.push(n);
                pairs.1.push(h);
            }
        }
        rows.push(row);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    report.paragraph(&format!(
        "Overlap of the top-{OVERLAP_NEURONS} neurons / top-{OVERLAP_HEADS} heads of each layer between emotions (Jaccard, mean \
         over layers); over the 15 pairs: neurons {:.3}, heads {:.3}.",
        mean(&pairs.0),
        mean(&pairs.1)
    ));
    let mut header = vec!["emotion"];
    header.extend(Emotion::ALL.iter().map(|e| e.name()));
    report.table(&header, &rows);
}
