//! Section 7's figures: the importance profile of every sublayer per emotion.
use emo_data::Emotion;
use emo_run::figures::{Figures, LinesPanel, Series, Written};
use emo_run::{Result, RunDir};

use crate::importance::{SublayerImportance, SUBLAYERS};

/// The alpha-mean importance I by layer, one panel per sublayer kind (attention, MLP), one line per emotion:
/// `importance/{samples}/importance.png|svg`.
pub fn write_importance_figure(run: &RunDir, imp: &SublayerImportance) -> Result<Written> {
    let profiles = imp.profiles()?;
    let panels: Vec<LinesPanel> = SUBLAYERS
        .iter()
        .enumerate()
        .map(|(s, kind)| LinesPanel {
            title: format!("{} sublayers", if s == 0 { "attention" } else { "MLP" }),
            x_label: "layer".into(),
            y_label: format!("importance I ({})", kind.name()),
            series: profiles
                .iter()
                .map(|p| {
                    let v = if s == 0 { &p.attn } else { &p.mlp };
                    Series::new(p.emotion.name(), v.iter().enumerate().map(|(l, &y)| (l as f64, y)).collect())
                })
                .collect(),
            y_range: None,
        })
        .collect();
    debug_assert_eq!(profiles.len(), Emotion::ALL.len());
    let base = SublayerImportance::dir(run, imp.samples).join("importance");
    Figures::default().lines_grid(base, "Sublayer importance: shift of the final state along v_ref per unit injected", &panels, 2)
}

/// The paper's Fig. 1 view: PCA of the last-prompt-token residual (`hook_resid_post`) at the paper's PCA
/// layers (0, 9, 12, 27 of 28, scaled) for the neutral prompts of `scenarios`, without modulation and
/// modulated towards each emotion of `circuits` at scale 1; one PCA per layer over all those states.
/// Written as `figures/fig1_pca.png|svg` of `run`, with the run's neutral prompt. Modulation acts in the prefill too (heads at every token, neurons at
/// the last), so one forward per row shows where it moves the state the reply starts from.
pub fn write_modulation_pca(
    run: &RunDir,
    model: &emo_model::Model,
    circuits: &emo_modulate::CircuitSet,
    scenarios: &[emo_data::Scenario],
) -> Result<Written> {
    use emo_model::{Capture, HookPoint, HookSet, LogitsFor, Positions};
    use emo_run::figures::ScatterPanel;
    use tch::Tensor;
    let cfg = model.transformer.config();
    let layers: Vec<usize> = emo_run::paper::PCA_LAYERS.iter().map(|&l| emo_run::paper::scaled(l, cfg.n_layers)).collect();
    let prompt_set = run.require_manifest()?.prompt_set();
    let prompts = scenarios
        .iter()
        .flat_map(|s| emo_data::Valence::ALL.map(|v| model.encode_chat(&prompt_set.neutral_prompt(s, v))))
        .collect::<emo_model::Result<Vec<_>>>()?;
    // Class 0..6: modulated towards that emotion; 6: no modulation.
    let mut rows: Vec<(usize, Option<(Emotion, f64)>)> = (0..prompts.len()).map(|p| (p, None)).collect();
    for c in &circuits.circuits {
        rows.extend((0..prompts.len()).map(|p| (p, Some((c.emotion, 1.0)))));
    }
    let modulation = emo_modulate::Modulation::new(circuits);
    let mut states: Vec<Vec<Tensor>> = layers.iter().map(|_| Vec::new()).collect();
    for chunk in rows.chunks(32) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|(p, _)| prompts[*p].clone()).collect();
        let per_row: Vec<Option<(Emotion, f64)>> = chunk.iter().map(|(_, m)| *m).collect();
        let mut cap = Capture::new(layers.iter().map(|&l| HookPoint::ResidPost(l)), Positions::LastPrompt);
        let mut hooks = HookSet::new();
        for h in modulation.hooks_for(&per_row)? {
            hooks.push_owned(h);
        }
        hooks.push(&mut cap);
        let _ = model.transformer.forward_rows(&batch, model.pad_token_id(), &mut hooks, LogitsFor::Skip)?;
        drop(hooks);
        for (i, &l) in layers.iter().enumerate() {
            states[i].push(cap.per_row(HookPoint::ResidPost(l), batch.len())?.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu));
        }
    }
    let classes: Vec<usize> = rows.iter().map(|(_, m)| m.map_or(6, |(e, _)| e.index())).collect();
    let mut panels = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let x = Tensor::cat(&states[i], 0);
        let fit = emo_directions::pca::pca(&x, 2).map_err(|e| emo_run::RunError::Invalid(e.to_string()))?;
        panels.push(ScatterPanel { title: format!("layer {l}"), points: fit.projected_xy(), classes: classes.clone() });
    }
    let names: Vec<&str> = Emotion::ALL.iter().map(|e| e.name()).chain(std::iter::once("no modulation")).collect();
    Figures::default().scatter_grid(run.figures().join("fig1_pca"), &panels, &names, layers.len())
}
