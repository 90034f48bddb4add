//! `report.md`: the section-5 tables and figures of a run, beside the paper's published numbers.
use std::fmt::Write as _;
use std::path::PathBuf;

use emo_data::Emotion;

use crate::accuracy::Accuracy;
use crate::analysis::Analysis;
use crate::directions::DirectionsSummary;
use crate::error::Result;
use crate::figures::{BarGroup, Figures};
use crate::run::{RunDir, ELICIT, GENERATION};
use crate::store::read_json;
use emo_run::generation::StageSettings;
use emo_run::report::Report;

/// The paper's Table 1 / Appendix C, kept with the other published numbers in [`emo_run::paper`].
pub use emo_run::paper::PUBLISHED_ACCURACY as PAPER_ACCURACY;

/// Writes `report.md` for whatever steps of section 5 the run has completed; returns its path.
pub fn write_report(run: &RunDir) -> Result<PathBuf> {
    build_report(run)?.write(&run.report())
}

/// The section-5 report of a run, for other sections to add to before it is written.
pub fn build_report(run: &RunDir) -> Result<Report> {
    let manifest = run.require_manifest()?;
    let m = &manifest.model;
    let mut md = Report::new(&format!("Emotion directions (paper section 5): {}", m.reference));
    let _ = writeln!(
        md,
        "Model `{}` ({}, {} layers, d_model {}, sha256 `{}`). Run folder `{}`; everything below is computed from its \
         files (`manifest.json` has the exact settings).\n",
        m.path,
        m.architecture,
        m.n_layers,
        m.d_model,
        &m.sha256[..12.min(m.sha256.len())],
        run.path.display()
    );
    let prompts = manifest.prompt_set();
    let _ = writeln!(
        md,
        "Prompt set `{}` for every stage (the paper's unless chosen with `--prompt`): elicitation system prompt {:?}, \
         neutral {:?}.\n",
        prompts.name, prompts.elicitation_system, prompts.neutral_system
    );

    let _ = writeln!(md, "## Emotion-expression accuracy\n");
    let mut ours: Vec<(String, Accuracy)> = Vec::new();
    // Section 5's stages generate replies; stages of other kinds belong to other sections' reports.
    for (name, info) in manifest.stages.iter().filter(|(_, i)| i.kind == GENERATION) {
        if !info.stats.complete {
            let _ = writeln!(md, "_Stage `{name}` is not complete ({} prompts done)._\n", info.stats.prompts);
            continue;
        }
        let acc = Accuracy::of(&run.read_replies(name)?)?;
        let s: StageSettings = info.settings_as(name)?;
        let s = &s;
        let what = match (&s.steering, &s.modulation) {
            (Some(st), _) => format!(
                "Steering, {} split: neutral prompt, alpha {} x RMS on `hook_resid_post` of layers {}-{} ({} directions), positions {}",
                s.dataset.split, st.alpha, st.layers.0, st.layers.1, st.site, st.positions
            ),
            (None, Some(m)) => format!(
                "Circuit modulation, {} split: neutral prompt, scales {:?}, neurons at {}, heads at {}",
                s.dataset.split, m.scales, m.neuron_positions, m.head_positions
            ),
            (None, None) => format!("Prompting, {} split: elicitation prompt", s.dataset.split),
        };
        let _ = writeln!(
            md,
            "### {what}\n\n{} scenarios ({} from `{}`), {} prompts, judge `{}`; greedy, max {} new tokens{}.\n\n{}",
            s.dataset.scenarios,
            s.dataset.split,
            s.dataset.source,
            acc.overall().n,
            s.judge,
            s.generation.max_new_tokens,
            if s.generation.repetition_penalty != 1.0 {
                format!(
                    ", min {}, repetition penalty {}, no repeated {}-grams",
                    s.generation.min_new_tokens, s.generation.repetition_penalty, s.generation.no_repeat_ngram_size
                )
            } else {
                String::new()
            },
            acc.markdown()
        );
        let label = match (&s.steering, &s.modulation) {
            (Some(st), _) => format!("ours: steering, {}, alpha {}", s.dataset.split, st.alpha),
            (None, Some(_)) => format!("ours: circuit modulation, {}", s.dataset.split),
            (None, None) => format!("ours: prompting, {}", s.dataset.split),
        };
        ours.push((label, acc));
    }
    if !ours.is_empty() {
        let _ = writeln!(md, "### Side by side with the paper\n");
        let _ = writeln!(md, "The paper's rows are Llama-3.2-3B-Instruct judged by GPT-4o-mini; ours are this run's model and judge.\n");
        let _ = write!(md, "| |");
        for e in Emotion::ALL {
            let _ = write!(md, " {e} |");
        }
        let _ = writeln!(md, " overall |\n|---|{}", "---:|".repeat(7));
        for (label, acc) in &ours {
            let _ = write!(md, "| {label} |");
            for e in Emotion::ALL {
                let c = acc.emotion(e);
                let _ = if c.n == 0 { write!(md, " - |") } else { write!(md, " {:.2} |", c.percent()) };
            }
            let _ = writeln!(md, " {:.2} |", acc.overall().percent());
        }
        for (label, row) in PAPER_ACCURACY {
            let _ = write!(md, "| paper: {label} |");
            for v in row {
                let _ = write!(md, " {v:.2} |");
            }
            let _ = writeln!(md);
        }
        // Stages over some emotions only (a modulation of two, say) stay in the table, not in the figure.
        let groups: Vec<BarGroup> = ours
            .iter()
            .filter(|(_, acc)| Emotion::ALL.iter().all(|&e| acc.emotion(e).n > 0))
            .map(|(label, acc)| BarGroup { name: label.clone(), values: Emotion::ALL.iter().map(|&e| acc.emotion(e).percent()).collect() })
            .collect();
        let names: Vec<&str> = Emotion::ALL.iter().map(|e| e.name()).collect();
        if !groups.is_empty() {
            let w = Figures::default().grouped_bars(
                run.figures().join("accuracy"),
                "Emotion-expression accuracy by emotion",
                "accuracy (%)",
                &names,
                &groups,
                Some((0.0, 100.0)),
            )?;
            let _ = writeln!(md, "\n![accuracy]({})\n", rel(run, &w.png));
        }
    }

    if run.directions_summary().exists() {
        let s: DirectionsSummary = read_json(&run.directions_summary())?;
        let _ = writeln!(md, "## Emotion directions\n");
        let _ = writeln!(
            md,
            "From {} of {} scenario-event groups ({}), at the last prompt token of the elicitation prefill; \
             `directions.safetensors` holds `resid_mid.{{emotion}}` and `resid_post.{{emotion}}`, each [{}, {}]; \
             `control_vectors/` holds the `resid_post` directions as llama.cpp control vectors.\n",
            s.groups_used,
            s.groups_total,
            match s.filter {
                crate::directions::GroupFilter::Complete => "only groups whose six replies all matched, as the paper",
                crate::directions::GroupFilter::All | crate::directions::GroupFilter::Auto => {
                    "all groups, whatever the judge said"
                }
            },
            s.n_layers,
            s.d_model
        );
    }

    if run.analysis().exists() {
        let a = Analysis::read(run)?;
        let _ = writeln!(md, "## Linear probes\n");
        let _ = writeln!(
            md,
            "Multinomial logistic regression (C = 1, standardised features), {}-fold cross-validation with every \
             scenario-event group on one side; macro F1 over the six emotions on {} groups. The paper reports F1 = 1.0 \
             on emotion vectors from layer 0.\n",
            a.folds, a.groups
        );
        let (mid, post) = (&a.probe["resid_mid"], &a.probe["resid_post"]);
        if !post.emotion_vectors.is_empty() {
            let _ = writeln!(md, "| layer | resid_mid vectors | resid_post vectors | resid_mid raw | resid_post raw |\n|---:|---:|---:|---:|---:|");
            for l in 0..post.emotion_vectors.len() {
                let _ =
                    writeln!(md, "| {l} | {:.3} | {:.3} | {:.3} | {:.3} |", mid.emotion_vectors[l], post.emotion_vectors[l], mid.raw[l], post.raw[l]);
            }
        }
        for f in a.figures.iter().filter(|f| f.ends_with(".png")) {
            let title = f.trim_start_matches("figures/").trim_end_matches(".png");
            let caption = match title {
                "probe_f1" => "Probe F1 by layer.",
                "pca" => "PCA of last-token states (top) and of emotion vectors (bottom) at the paper's layers 0, 9, 12, 27 (scaled), as its Fig. 2.",
                "cosine_sublayers" => {
                    "Cosine similarity of each emotion's direction across all sublayers (A = resid_mid, M = resid_post), as the paper's Fig. 6."
                }
                _ => "",
            };
            let _ = writeln!(md, "\n![{title}]({f})\n\n{caption}\n");
        }
        let (r0, r1) = a.reference_layers;
        let _ = writeln!(md, "## Cosine structure\n");
        let _ = writeln!(
            md,
            "Over the reference layers {r0}-{r1} (the paper's 21-25 of 28, scaled). The paper reports cross-sublayer \
             similarity above 0.85 there.\n\n| emotion | min cross-sublayer cosine | mean |\n|---|---:|---:|"
        );
        for e in Emotion::ALL {
            if let Some(c) = a.sublayer_consistency.get(e.name()) {
                let _ = writeln!(md, "| {e} | {:.3} | {:.3} |", c.min, c.mean);
            }
        }
        let _ = writeln!(md, "\nCosine between emotions (resid_post directions, mean over the reference layers):\n");
        let _ = write!(md, "| |");
        for e in Emotion::ALL {
            let _ = write!(md, " {e} |");
        }
        let _ = writeln!(md, "\n|---|{}", "---:|".repeat(6));
        if let Some(m) = a.emotion_cosine.get("resid_post") {
            for (i, e) in Emotion::ALL.iter().enumerate() {
                let _ = write!(md, "| {e} |");
                for x in &m[i] {
                    let _ = write!(md, " {x:.2} |");
                }
                let _ = writeln!(md);
            }
        }
    }

    let _ = writeln!(md, "\n## Cost\n");
    let rows: Vec<Vec<String>> = manifest
        .stages
        .iter()
        .map(|(name, info)| {
            let s = &info.stats;
            vec![
                format!("{name}{}", if name == ELICIT { " (with capture)" } else { "" }),
                s.prompts.to_string(),
                s.new_tokens.to_string(),
                format!("{:.1}", s.generate_seconds),
                format!("{:.2}", s.prompts as f64 / s.generate_seconds),
                format!("{:.1}", s.new_tokens as f64 / s.generate_seconds),
                format!("{:.1}", s.judge_seconds),
                format!("{:.0}", s.peak_rss_mb),
            ]
        })
        .collect();
    md.table(&["stage", "prompts", "new tokens", "generation s", "prompts/s", "tokens/s", "judge s", "peak RSS MB"], &rows);
    Ok(md)
}

fn rel(run: &RunDir, p: &std::path::Path) -> String {
    p.strip_prefix(&run.path).unwrap_or(p).display().to_string()
}
