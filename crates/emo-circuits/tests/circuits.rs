//! Section 7 on the real default model (SmolLM2-135M, f32, CPU) over a small section-5 run: the branched
//! sublayer importance equals literal forwards; circuits assemble by the rule and their files round-trip;
//! modulation equals plain generation at s = 0, changes replies at s = 1, and a batch with a different
//! emotion (or none) per row equals each row alone; the modulation stage runs, resumes and reports.
//! Then the circuit files alone: the authors' layout imports, and bad files are refused by name.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use emo_attribution::{attribute, AttributeOptions, SampleFilter};
use emo_circuits::importance::{read_csv, reference_direction, sigma, Sublayer};
use emo_circuits::report::circuits_dir;
use emo_circuits::{assemble, modulation_stage, sublayer_importance, Budget, ImportanceOptions, ModulateOptions, SublayerImportance};
use emo_data::{Emotion, Split};
use emo_directions::directions::GroupFilter;
use emo_directions::elicit::{elicitation_stage, open_run};
use emo_directions::run::{load_activations, DatasetInfo, RunDir, ELICIT};
use emo_directions::{ElicitOptions, EmotionDirections, Site};
use emo_model::{Capture, ChatMessage, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Positions};
use emo_modulate::circuit::{circuit_file, Circuit, CircuitSet, PerKind, Shape};
use emo_modulate::Modulator;
use emo_run::generation::run_stage;
use emo_test_support::{max_diff, Yes};
use tch::{Kind, Tensor};

#[test]
fn section7_on_a_small_run() {
    let m = common::smollm2();
    let cfg = m.transformer.config().clone();
    let run = RunDir::new(common::scratch("circuits"));
    let scen = emo_data::sev::spread(emo_data::Dataset::builtin().split(Split::Sev), 1);
    open_run(&run, m, "smollm2-135m").unwrap();
    let opts = ElicitOptions { batch_size: 6, generation: GenerationConfig::greedy(2), capture: true, progress: false };
    let stage = elicitation_stage(ELICIT.into(), &scen, DatasetInfo::of("builtin", Split::Sev, &scen), "yes", &opts).unwrap();
    run_stage(&run, m, &mut Yes, &stage).unwrap();
    let acts = load_activations(&run).unwrap();
    emo_directions::extract::extract(&run, &acts, GroupFilter::All, false).unwrap();
    let dirs = EmotionDirections::load(&run.directions()).unwrap();
    let attribution = attribute(&run, m, &AttributeOptions { samples: SampleFilter::All, batch_size: 18, progress: false }).unwrap();

    // sigma: mean over samples of the per-sample RMS.
    let sig = sigma(&acts);
    let l = 7usize;
    let direct = acts.resid_post.select(1, l as i64).to_kind(Kind::Double).square().mean_dim(1, false, Kind::Double).sqrt().mean(Kind::Double);
    assert!(max_diff(&sig.get(1).get(l as i64), &direct) < 1e-6 * f64::try_from(&direct).unwrap(), "sigma");

    // v_ref is a unit vector that agrees in sign with each of its parts.
    let v_ref = reference_direction(&dirs, Emotion::Fear);
    assert!((f64::try_from(v_ref.norm()).unwrap() - 1.0).abs() < 1e-5);

    let imp_opts = ImportanceOptions {
        samples: SampleFilter::All,
        alphas: vec![0.1, 0.5],
        max_rows: 40,
        batch_prompts: 2,
        progress: false,
        full_forwards: false,
    };
    let imp = sublayer_importance(&run, m, &imp_opts).unwrap();
    assert_eq!(imp.prompts, [3; 6]);
    let fig = emo_circuits::figures::write_importance_figure(&run, &imp).unwrap();
    assert!(fig.png.exists());
    assert_eq!(imp.per_alpha.size(), [6, 2, cfg.n_layers as i64, 2]);

    // One importance value by literal forwards: the neutral prompts of fear's three samples, alpha 0.5,
    // injected at hook_mlp_out of layer 7, read at ln_final.
    let e = Emotion::Fear;
    let records = run.read_replies(ELICIT).unwrap();
    let prompts: Vec<Vec<u32>> = records
        .iter()
        .filter(|r| r.emotion().unwrap() == e)
        .map(|r| m.encode_chat(&emo_data::neutral_prompt(&scen[0], r.valence().unwrap())).unwrap())
        .collect();
    let v = dirs.get(Site::ResidPost, e).get(l as i64);
    let sign = if f64::try_from(v.dot(&v_ref)).unwrap() < 0.0 { -1.0 } else { 1.0 };
    let s_of = |inject: Option<f64>| -> Tensor {
        let mut cap = Capture::new([HookPoint::LnFinal], Positions::LastPrompt);
        let rows = (0..prompts.len())
            .map(|_| match inject {
                Some(alpha) => Intervention::none()
                    .with(Sublayer::Mlp.output(l), Edit::Add(&v * (alpha * sign * f64::try_from(sig.get(1).get(l as i64)).unwrap()))),
                None => Intervention::none(),
            })
            .collect();
        let mut edits = Interventions::new(rows, Positions::LastPrompt);
        let mut set = HookSet::new().with(&mut edits).with(&mut cap);
        let _ = m.transformer.forward_rows(&prompts, m.pad_token_id(), &mut set, LogitsFor::Skip).unwrap();
        drop(set);
        cap.per_row(HookPoint::LnFinal, prompts.len()).unwrap().to_kind(Kind::Double).matmul(&v_ref.to_kind(Kind::Double))
    };
    let want: Tensor = (s_of(Some(0.5)) - s_of(None)).mean(Kind::Double) / (sig.get(1).get(l as i64) * 0.5);
    let got = imp.per_alpha.get(e.index() as i64).get(1).get(l as i64).get(1);
    let scale = f64::try_from(want.abs()).unwrap();
    assert!(scale > 1e-4, "a vacuous comparison: I = {scale}");
    assert!(max_diff(&got, &want) < 2e-3 * scale.max(1.0), "branched I {got:?} vs literal {want:?}");

    // The CSV reads back into the same profiles; the saved tensors too.
    let csv = SublayerImportance::dir(&run, SampleFilter::All).join("importance.csv");
    let profiles = read_csv(&csv, cfg.n_layers).unwrap();
    let mine = imp.profiles().unwrap();
    for (a, b) in profiles.iter().zip(&mine) {
        assert_eq!(a.emotion, b.emotion);
        assert!(a.attn.iter().zip(&b.attn).all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1.0)));
    }
    let loaded = SublayerImportance::load(&run, SampleFilter::All).unwrap();
    assert_eq!(max_diff(&loaded.per_alpha, &imp.per_alpha), 0.0);
    // A resumed measurement with other settings is refused.
    let err = sublayer_importance(&run, m, &ImportanceOptions { alphas: vec![0.1], ..imp_opts.clone() }).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");

    // Circuits by the rule: budget sums, minimums, units from the rankings; files round-trip.
    let shape = Shape::of(&cfg);
    let budget = Budget::paper(cfg.n_layers);
    let set = assemble(&mine, &attribution, shape, &budget).unwrap();
    let (k_mlp, k_attn) = budget.split();
    for c in &set.circuits {
        assert_eq!(c.neuron_set().len(), k_mlp);
        assert_eq!(c.head_set().len(), k_attn);
        assert!(c.layers.iter().all(|x| x.mlp.k >= 4 && x.attention.k >= 2 && x.attention.k <= cfg.n_heads));
        let top = &c.layers[3];
        assert_eq!(top.mlp.neurons, attribution.neurons.ranking(c.emotion, 3)[..top.mlp.k].to_vec());
    }
    let dir = circuits_dir(&run, SampleFilter::All);
    set.save(&dir).unwrap();
    let back = CircuitSet::load(&dir, shape, cfg.n_heads * cfg.d_head).unwrap();
    assert_eq!(back.circuits, set.circuits);
    assert_eq!(max_diff(&back.delta_mu_mlp, &set.delta_mu_mlp), 0.0);

    modulation_on(&run);
}

/// Modulation: s = 0 equals plain generation; s = 1 changes replies; a mixed batch equals rows alone; the
/// stage runs, resumes, and the report has Table 2.
fn modulation_on(run: &RunDir) {
    let m = common::smollm2();
    let scen = emo_data::sev::spread(emo_data::Dataset::builtin().split(Split::Test), 1);
    let messages = |v| emo_data::neutral_prompt(&scen[0], v);
    let neg: Vec<ChatMessage> = messages(emo_data::Valence::Negative);
    let pos: Vec<ChatMessage> = messages(emo_data::Valence::Positive);
    let cfg = m.transformer.config();
    let circuits = CircuitSet::load_for(&circuits_dir(run, SampleFilter::All), cfg).unwrap();
    let modulator = Modulator::new(m, circuits).unwrap().generation(GenerationConfig { max_new_tokens: 12, ..GenerationConfig::modulation() });
    let plain = modulator.chat_batch(&[(neg.clone(), None)]).unwrap();
    assert_eq!(modulator.clone().emotion(Emotion::Anger).scale(0.0).chat(&neg).unwrap(), plain[0], "s = 0 must be plain generation");
    let rows = vec![(neg.clone(), Some(Emotion::Anger)), (pos.clone(), None), (pos.clone(), Some(Emotion::Fear))];
    let batch = modulator.chat_batch(&rows).unwrap();
    assert_ne!(batch[0], plain[0], "modulation at s = 1 left the reply unchanged");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(modulator.chat_batch(std::slice::from_ref(row)).unwrap()[0], batch[i], "row {i} differs in a batch");
    }
    // Traced with the run's directions: the same replies, one row of six finite scores per token.
    let tracer = emo_steer::EmotionTracer::reference(m, &EmotionDirections::load(&run.directions()).unwrap()).unwrap();
    for (modulated, want) in [(modulator.clone().emotion(Emotion::Anger), &batch[0]), (modulator.clone(), &plain[0])] {
        let (reply, trace) = modulated.chat_traced(&neg, &tracer).unwrap();
        assert_eq!(&reply, want);
        assert_eq!(trace.tokens.concat(), reply);
        assert!(!trace.scores.is_empty() && trace.scores.iter().all(|s| s.len() == 6 && s.iter().all(|x| x.is_finite())));
    }

    // The stage: two emotions on one test scenario, 8 new tokens; resumed it recomputes nothing.
    let dir = circuits_dir(run, SampleFilter::All);
    let info = DatasetInfo::of("builtin", Split::Test, &scen);
    let opts = ModulateOptions {
        emotions: vec![Emotion::Anger, Emotion::Fear],
        batch_size: 4,
        generation: GenerationConfig { max_new_tokens: 8, ..GenerationConfig::modulation() },
        progress: false,
        ..Default::default()
    };
    let loaded = CircuitSet::load_for(&dir, cfg).unwrap();
    let stage = modulation_stage("modulation-test".into(), &scen, info.clone(), "yes", &loaded, cfg, &opts).unwrap();
    let stats = run_stage(run, m, &mut Yes, &stage).unwrap();
    assert_eq!(stats.prompts, 6);
    let first = std::fs::read_to_string(run.replies("modulation-test")).unwrap();
    let again = run_stage(run, m, &mut Yes, &stage).unwrap();
    assert_eq!(again.prompts, 6);
    assert_eq!(std::fs::read_to_string(run.replies("modulation-test")).unwrap(), first);
    // Another scale is another stage's identity.
    let other = ModulateOptions { scales: [0.8, 1.0, 1.0, 1.0, 1.0, 1.0], ..opts.clone() };
    let stage = modulation_stage("modulation-test".into(), &scen, info, "yes", &loaded, cfg, &other).unwrap();
    let err = run_stage(run, m, &mut Yes, &stage).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");

    let fig = emo_circuits::figures::write_modulation_pca(run, m, &loaded, &scen).unwrap();
    assert!(fig.png.exists() && fig.svg.exists());
    let mut report = emo_directions::report::build_report(run).unwrap();
    emo_circuits::report::section7(run, &mut report).unwrap();
    let md = report.markdown();
    assert!(md.contains("Section 7") && md.contains("Table 2: circuit modulation") && md.contains("Jaccard overlap"), "{md}");
    assert!(md.contains("Fig. 1 view") && md.contains("Sublayer importance (all samples)"), "{md}");
    assert!(md.contains("ours: circuit modulation, test"), "the section-5 table labels the stage");
}

fn tiny_circuit(emotion: Emotion, neurons: Vec<usize>, heads: Vec<usize>) -> Circuit {
    let (k_alloc, min_per_layer) = (PerKind { mlp: 4, attn: 2 }, PerKind { mlp: 1, attn: 1 });
    emo_test_support::circuit(emotion, 6, k_alloc, min_per_layer, vec![(neurons, heads), (vec![0], vec![1])])
}

#[test]
fn authors_layout_imports_and_bad_files_are_named() {
    // A model of 2 layers, 2 heads of width 3, 5 neurons.
    let shape = Shape { n_layers: 2, n_heads: 2, d_mlp: 5 };
    let dir = common::scratch("authors-circuits");
    let anger = tiny_circuit(Emotion::Anger, vec![4, 2, 0], vec![1]);
    emo_run::store::write_json(&dir.join("anger.json"), &anger).unwrap();
    let fear = tiny_circuit(Emotion::Fear, vec![1, 3, 2], vec![0]);
    emo_run::store::write_json(&dir.join("circuit_fear.json"), &fear).unwrap();
    emo_run::store::write_json(&dir.join("summary.json"), &serde_json::json!({"note": "not a circuit"})).unwrap();
    let mut mlp = Vec::new();
    for (e, base) in [(Emotion::Anger, 0.0f32), (Emotion::Fear, 100.0)] {
        for l in 0..2 {
            let attn = Tensor::from_slice(&[base + l as f32, 1.0, 2.0, 3.0, 4.0, 5.0]).reshape([2, 3]);
            std::fs::create_dir_all(dir.join("emo_diff").join(e.name())).unwrap();
            emo_steer::npy::write_npy(dir.join("emo_diff").join(e.name()).join(format!("L{l}.npy")), &attn).unwrap();
            mlp.push((format!("{}/diff/L{l}", e.name()), Tensor::from_slice(&[base, 1.0, 2.0, 3.0, 10.0 + l as f32])));
        }
    }
    emo_steer::npy::write_npz(dir.join("mlp_delta_mu.npz"), &mlp).unwrap();
    let set = CircuitSet::import(&dir, shape, 6).unwrap();
    assert_eq!(set.circuits, vec![anger.clone(), fear.clone()]);
    assert_eq!(f64::try_from(set.delta_mu_attn.get(3).get(1).get(0)).unwrap(), 101.0);
    assert_eq!(f64::try_from(set.delta_mu_mlp.get(0).get(1).get(4)).unwrap(), 11.0);
    assert!(set.get(Emotion::Sadness).unwrap_err().to_string().contains("no circuit for sadness (the set holds anger, fear)"));
    // Exported in our layout, it reads back the same.
    let ours = common::scratch("our-circuits");
    set.save(&ours).unwrap();
    assert!(circuit_file(&ours, Emotion::Fear).exists());
    let back = CircuitSet::load(&ours, shape, 6).unwrap();
    assert_eq!(back.circuits, set.circuits);
    assert_eq!(max_diff(&back.delta_mu_attn, &set.delta_mu_attn), 0.0);

    // A neuron beyond the model, k not matching its list, a missing array, a short array.
    let bad = common::scratch("bad-circuits");
    emo_run::store::write_json(&bad.join("anger.json"), &tiny_circuit(Emotion::Anger, vec![7], vec![0])).unwrap();
    let err = CircuitSet::load(&bad, shape, 6).unwrap_err().to_string();
    assert!(err.contains("anger.json") && err.contains("neuron 7 is out of range 0..5"), "{err}");
    let mut wrong_k = tiny_circuit(Emotion::Anger, vec![1], vec![0]);
    wrong_k.layers[1].attention.k = 2;
    emo_run::store::write_json(&bad.join("anger.json"), &wrong_k).unwrap();
    let err = CircuitSet::load(&bad, shape, 6).unwrap_err().to_string();
    assert!(err.contains("layer 1: k = 2 but 1 heads are listed"), "{err}");
    emo_run::store::write_json(&bad.join("anger.json"), &tiny_circuit(Emotion::Anger, vec![1], vec![0])).unwrap();
    let err = CircuitSet::load(&bad, shape, 6).unwrap_err().to_string();
    assert!(err.contains("no attention delta_mu") && err.contains("L0.npy"), "{err}");
    std::fs::create_dir_all(bad.join("emo_diff/anger")).unwrap();
    for l in 0..2 {
        emo_steer::npy::write_npy(bad.join("emo_diff/anger").join(format!("L{l}.npy")), &Tensor::zeros([5], (Kind::Float, tch::Device::Cpu)))
            .unwrap();
    }
    let err = CircuitSet::load(&bad, shape, 6).unwrap_err().to_string();
    assert!(err.contains("L0.npy") && err.contains("holds 5 values, expected 6"), "{err}");
    std::fs::write(bad.join("anger.json"), "{\"emotion\": \"anger\", \"layers\": 3}").unwrap();
    let err = CircuitSet::load(&bad, shape, 6).unwrap_err().to_string();
    assert!(err.contains("anger.json") && err.contains("not a circuit"), "{err}");
}

#[test]
fn importance_csv_errors_name_file_and_line() {
    let dir = common::scratch("importance-csv");
    let path = dir.join("imp.csv");
    std::fs::write(&path, "emotion,layer,kind,importance\nanger,0,attn,0.5\nanger,0,mlp,0.1\nanger,1,attn,x\n").unwrap();
    let err = read_csv(&path, 2).unwrap_err().to_string();
    assert!(err.contains("imp.csv:4") && err.contains("importance `x` is not a number"), "{err}");
    std::fs::write(&path, "emotion,layer,kind,importance\nanger,0,attn,0.5\nanger,0,mlp,0.1\nanger,1,attn,0.2\n").unwrap();
    let err = read_csv(&path, 2).unwrap_err().to_string();
    assert!(err.contains("no mlp importance for anger layer 1"), "{err}");
    std::fs::write(&path, "emotion,layer,kind,importance\nrage,0,attn,0.5\n").unwrap();
    let err = read_csv(&path, 2).unwrap_err().to_string();
    assert!(err.contains("imp.csv:2") && err.contains("rage"), "{err}");
    std::fs::write(&path, "emotion,layer,kind,importance\nanger,2,attn,0.5\n").unwrap();
    assert!(read_csv(&path, 2).unwrap_err().to_string().contains("layer 2 is out of range 0..2"));
}
