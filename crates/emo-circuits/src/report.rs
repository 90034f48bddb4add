//! Section 7 of a run's `report.md`: sublayer importance profiles, the circuits and their overlap, and the
//! paper's Table 2 (modulation accuracy per emotion and valence) beside prompting and steering of the same
//! run, with how fluent each method's replies are.
use std::collections::HashSet;

use emo_attribution::SampleFilter;
use emo_data::{Emotion, Valence};
use emo_modulate::circuit::{read_circuits, CircuitLayer, CircuitSet};
use emo_run::folder::GENERATION;
use emo_run::generation::StageSettings;
use emo_run::paper::{PUBLISHED_CIRCUIT_OVERLAP, PUBLISHED_MODULATION};
use emo_run::report::Report;
use emo_run::{ReplyRecord, Result, RunDir};

use crate::circuit::overlap;
use crate::importance::{SublayerImportance, SUBLAYERS};

/// `RUN/circuits/{samples}/`: where `emo circuits build` writes a run's circuits.
pub fn circuits_dir(run: &RunDir, samples: SampleFilter) -> std::path::PathBuf {
    run.path.join("circuits").join(samples.to_string())
}

/// Replies that ended before the token limit and distinct-2 (distinct word bigrams over all bigrams, lower
/// case), a coarse fluency measure: word salad repeats little but rarely ends.
pub fn fluency(records: &[ReplyRecord]) -> (f64, f64) {
    let n = records.len().max(1) as f64;
    let ended = records.iter().filter(|r| r.stop == "eos").count() as f64 / n;
    let (mut seen, mut total) = (HashSet::new(), 0usize);
    for r in records {
        let words: Vec<String> = r.gen_text.split_whitespace().map(str::to_lowercase).collect();
        for w in words.windows(2) {
            seen.insert((w[0].clone(), w[1].clone()));
            total += 1;
        }
    }
    (ended, if total == 0 { 0.0 } else { seen.len() as f64 / total as f64 })
}

/// Accuracy in percent per valence (`Valence::ALL` order) and emotion, from judged replies.
pub fn accuracy_by_valence(records: &[ReplyRecord]) -> Result<[[Option<f64>; 6]; 3]> {
    let mut counts = [[(0usize, 0usize); 6]; 3];
    for r in records {
        let c = &mut counts[r.valence()?.index()][r.emotion()?.index()];
        c.1 += 1;
        c.0 += usize::from(r.matched());
    }
    Ok(counts.map(|row| row.map(|(m, n)| (n > 0).then(|| 100.0 * m as f64 / n as f64))))
}

/// Appends section 7 to `report` for whatever the run has: importances, circuits, modulation stages.
/// Nothing when it has none.
pub fn section7(run: &RunDir, report: &mut Report) -> Result<()> {
    let mut heading = false;
    let mut start = |report: &mut Report| {
        if !std::mem::replace(&mut heading, true) {
            report.heading(2, "Section 7: sublayer importance, emotion circuits, circuit modulation");
        }
    };
    for filter in [SampleFilter::Accepted, SampleFilter::All] {
        let Ok(imp) = SublayerImportance::load(run, filter) else { continue };
        start(report);
        report.heading(3, &format!("Sublayer importance ({filter} samples)"));
        report.paragraph(&format!(
            "Neutral prompts of the **{filter}** elicitation samples ({} per emotion in the order {}); alpha in {:?} x sigma injected \
             along each sublayer's direction at its output, last prompt token; I = shift of <ln_final output, v_ref> per unit \
             injected, averaged over alpha.",
            imp.prompts.map(|n| n.to_string()).join(", "),
            Emotion::ALL.map(|e| e.name()).join(", "),
            imp.alphas
        ));
        let png = SublayerImportance::dir(run, filter).join("importance.png");
        if png.exists() {
            report.figure("sublayer importance", &png, &run.path);
        }
        let mut rows = Vec::new();
        for p in imp.profiles()? {
            let mut all: Vec<(f64, String)> = (0..p.attn.len())
                .flat_map(|l| SUBLAYERS.map(|s| (if s == SUBLAYERS[0] { p.attn[l] } else { p.mlp[l] }, format!("L{l} {}", s.name()))))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top = all.iter().take(3).map(|(v, n)| format!("{n} ({v:.3})")).collect::<Vec<_>>().join(", ");
            let share_mlp =
                p.mlp.iter().map(|x| x.max(0.0)).sum::<f64>() / (p.mlp.iter().chain(&p.attn).map(|x| x.max(0.0)).sum::<f64>()).max(1e-300);
            rows.push(vec![p.emotion.name().to_string(), top, format!("{:.0}%", 100.0 * share_mlp)]);
        }
        report.table(&["emotion", "most important sublayers (I)", "MLP share of positive I"], &rows);
    }
    for filter in [SampleFilter::Accepted, SampleFilter::All] {
        let dir = circuits_dir(run, filter);
        // Not checked against a model shape: the report reads the run's own circuits.
        let Ok(set) = read_circuits(&dir, None) else { continue };
        start(report);
        report.heading(3, &format!("Circuits ({filter} samples)"));
        let c0 = &set[0];
        report.paragraph(&format!(
            "The authors' rule: K_total = {}, {} neurons and {} heads, at least {} neurons and {} heads per layer, cap {} of a kind's \
             budget above the minimum; top neurons by mean contribution and heads by mean importance (section 6). Files: `{}`.",
            c0.k_total,
            c0.k_alloc.mlp,
            c0.k_alloc.attn,
            c0.min_per_layer.mlp,
            c0.min_per_layer.attn,
            c0.cap_ratio,
            dir.strip_prefix(&run.path).unwrap_or(&dir).display()
        ));
        let rows: Vec<Vec<String>> = set
            .iter()
            .map(|c| {
                let top = |f: &dyn Fn(&CircuitLayer) -> usize| {
                    let mut l: Vec<(usize, usize)> = c.layers.iter().map(|x| (f(x), x.layer)).collect();
                    l.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                    l.iter().take(3).map(|(k, l)| format!("L{l}: {k}")).collect::<Vec<_>>().join(", ")
                };
                vec![c.emotion.name().to_string(), top(&|x| x.mlp.k), top(&|x| x.attention.k)]
            })
            .collect();
        report.table(&["emotion", "layers with most neurons", "layers with most heads"], &rows);
        let ((nm, ns), (hm, hs)) = overlap(&set);
        let [(pnm, pns), (phm, phs)] = PUBLISHED_CIRCUIT_OVERLAP;
        report.table(
            &["Jaccard overlap between emotions", "neurons", "heads"],
            &[
                vec!["ours (mean ± std over pairs)".into(), format!("{nm:.3} ± {ns:.3}"), format!("{hm:.3} ± {hs:.3}")],
                vec!["paper (Llama-3.2-3B)".into(), format!("{pnm:.3} ± {pns:.3}"), format!("{phm:.3} ± {phs:.3}")],
            ],
        );
    }
    modulation_tables(run, report, &mut start)
}

/// Table 2 for every complete modulation stage, and prompting / steering / modulation side by side on the
/// test split with their fluency.
fn modulation_tables(run: &RunDir, report: &mut Report, start: &mut dyn FnMut(&mut Report)) -> Result<()> {
    let manifest = run.require_manifest()?;
    let mut side = Vec::new();
    for (name, info) in manifest.stages.iter().filter(|(_, i)| i.kind == GENERATION && i.stats.complete) {
        let s: StageSettings = info.settings_as(name)?;
        if s.dataset.split != "test" {
            continue;
        }
        let records = run.read_replies(name)?;
        let method = match (&s.steering, &s.modulation) {
            (Some(st), _) => format!("steering (alpha {})", st.alpha),
            (None, Some(_)) => "circuit modulation".to_string(),
            (None, None) => "prompting".to_string(),
        };
        if let Some(m) = &s.modulation {
            start(report);
            report.heading(3, &format!("Table 2: circuit modulation, stage `{name}`"));
            report.paragraph(&format!(
                "Neutral prompt; scales {:?} (Emotion order), neurons at {}, heads at {}; greedy, min {} new tokens, repetition penalty \
                 {}, no repeated {}-grams, at most {} new tokens. Accuracy (%) per valence, ours then the paper's (Llama-3.2-3B, GPT-4o-mini).",
                m.scales,
                m.neuron_positions,
                m.head_positions,
                s.generation.min_new_tokens,
                s.generation.repetition_penalty,
                s.generation.no_repeat_ngram_size,
                s.generation.max_new_tokens
            ));
            let acc = accuracy_by_valence(&records)?;
            let mut rows = Vec::new();
            for v in Valence::ALL {
                let cell = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
                rows.push(std::iter::once(format!("ours: {}", v.name())).chain(acc[v.index()].iter().map(|&x| cell(x))).collect());
                rows.push(
                    std::iter::once(format!("paper: {}", v.name()))
                        .chain(PUBLISHED_MODULATION[v.index()].iter().map(|x| format!("{x:.2}")))
                        .collect(),
                );
            }
            let header: Vec<&str> = std::iter::once("valence").chain(Emotion::ALL.iter().map(|e| e.name())).collect();
            report.table(&header, &rows);
        }
        let acc = emo_run::Accuracy::of(&records)?;
        let (ended, distinct) = fluency(&records);
        side.push(vec![
            format!("{method} (`{name}`)"),
            format!("{:.2}", acc.overall().percent()),
            format!("{:.0}%", 100.0 * ended),
            format!("{distinct:.3}"),
            records.len().to_string(),
        ]);
    }
    let fig1 = run.figures().join("fig1_pca.png");
    if fig1.exists() {
        start(report);
        report.heading(3, "Fig. 1 view: last-token states with and without modulation");
        report.paragraph("PCA per layer of `hook_resid_post` at the last prompt token of the test split's neutral prompts, plain and modulated towards each emotion (scale 1).");
        report.figure("PCA of last-token states with and without modulation", &fig1, &run.path);
    }
    if side.iter().any(|r| r[0].starts_with("circuit modulation")) {
        report.heading(3, "Prompting, steering and circuit modulation on the test split");
        report.paragraph(
            "Accuracy by this run's judge; ended = replies that stopped at an end token before the limit; distinct-2 = distinct word \
             bigrams / all bigrams over the stage's replies (low: the same words over and over).",
        );
        report.table(&["method", "accuracy (%)", "ended", "distinct-2", "replies"], &side);
    }
    Ok(())
}

/// A circuit set in one line: each emotion's neurons and heads.
pub fn describe(set: &CircuitSet) -> String {
    set.circuits
        .iter()
        .map(|c| format!("{}: {} neurons, {} heads", c.emotion, c.neuron_set().len(), c.head_set().len()))
        .collect::<Vec<_>>()
        .join("; ")
}
