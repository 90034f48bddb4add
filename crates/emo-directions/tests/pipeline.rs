//! Section 5 on the real default model (SmolLM2-135M, f32, CPU), shortened replies: elicitation captures the
//! right activations in the same pass, survives a kill, refuses changed settings; directions, exports, probes,
//! figures, steering and the report come out of it.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;

use emo_data::{Emotion, Judge, Split};
use emo_directions::directions::GroupFilter;
use emo_directions::elicit::{elicitation_stage, open_run};
use emo_directions::run::{load_activations, DatasetInfo, RunDir, ELICIT};
use emo_directions::steer::steering_stage;
use emo_directions::{ElicitOptions, EmotionDirections, Site, SteerOptions};
use emo_model::{Capture, GenerationConfig, HookPoint, HookSet, LogitsFor, Positions};
use emo_run::generation::run_stage;
use emo_steer::Steering;
use emo_test_support::Yes;
use tch::Kind;

fn scenarios(split: Split, n: usize) -> Vec<emo_data::Scenario> {
    emo_data::sev::spread(emo_data::Dataset::builtin().split(split), n)
}

fn elicit_opts() -> ElicitOptions {
    ElicitOptions { batch_size: 6, generation: GenerationConfig::greedy(6), capture: true, progress: false }
}

fn elicit(run: &RunDir, scen: &[emo_data::Scenario], judge: &mut dyn Judge) -> emo_directions::Result<()> {
    let model = common::smollm2();
    open_run(run, model, "smollm2-135m")?;
    let info = DatasetInfo::of("builtin", Split::Sev, scen);
    let stage = elicitation_stage(ELICIT.into(), scen, info, &judge.name(), &elicit_opts())?;
    run_stage(run, model, judge, &stage).map(|_| ())
}

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn elicitation_captures_in_the_same_pass_and_resumes_after_a_kill() {
    let model = common::smollm2();
    let run = RunDir::new(common::scratch("elicit"));
    let scen = scenarios(Split::Sev, 1);
    elicit(&run, &scen, &mut Yes).unwrap();

    let records = run.read_replies(ELICIT).unwrap();
    assert_eq!(records.len(), 18);
    assert_eq!(records[0].key, format!("{}__positive__anger", scen[0].skeleton_id));
    assert_eq!(records[17].key, format!("{}__negative__disgust", scen[0].skeleton_id));
    assert!(records.iter().enumerate().all(|(i, r)| r.index == i && r.new_tokens <= 6 && r.judge.matched == 1));
    let manifest = run.require_manifest().unwrap();
    let stats = &manifest.stages[ELICIT].stats;
    assert!(stats.complete && stats.prompts == 18 && stats.new_tokens > 0);
    assert_eq!(manifest.model.n_layers, 30);
    assert_eq!(manifest.model.sha256.len(), 64);

    // The captured rows are what a separate forward pass over each prompt alone gives at its last token.
    let acts = load_activations(&run).unwrap();
    assert_eq!(acts.resid_post.size(), [18, 30, 576]);
    for &i in &[0usize, 7, 17] {
        let r = &records[i];
        let msgs = emo_data::elicitation_prompt(r.emotion().unwrap(), &scen[0], r.valence().unwrap());
        let ids = model.encode_chat(&msgs).unwrap();
        assert_eq!(ids.len(), r.prompt_tokens);
        let mut cap = Capture::new([HookPoint::ResidMid(3), HookPoint::ResidPost(29)], Positions::LastPrompt);
        let _ = model.transformer.forward_rows(&[ids], 0, &mut HookSet::new().with(&mut cap), LogitsFor::Last).unwrap();
        for (point, site, layer) in [(HookPoint::ResidMid(3), Site::ResidMid, 3), (HookPoint::ResidPost(29), Site::ResidPost, 29)] {
            let alone = cap.per_row(point, 1).unwrap().get(0);
            let in_run = acts.site(site).get(i as i64).get(layer);
            let diff = (alone - in_run).abs().max().double_value(&[]);
            assert!(diff < 1e-3, "prompt {i} {point}: {diff}");
        }
    }

    // A kill during batch 1: its activations were written but not its replies, batch 2 never started, and a
    // temporary file was left half-written.
    let parts = run.parts(ELICIT);
    let before = fs::read_to_string(run.replies(ELICIT)).unwrap();
    let part0 = mtime(&parts.join("00000.jsonl"));
    fs::remove_file(parts.join("00001.jsonl")).unwrap();
    fs::remove_file(parts.join("00002.jsonl")).unwrap();
    fs::remove_file(run.activations().join("00002.safetensors")).unwrap();
    fs::remove_file(run.replies(ELICIT)).unwrap();
    fs::write(parts.join(".00001.jsonl.tmp-1"), "{\"key\": \"trunc").unwrap();
    let mut m = run.require_manifest().unwrap();
    m.stages.get_mut(ELICIT).unwrap().stats.complete = false;
    fs::write(run.manifest(), serde_json::to_string(&m).unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    elicit(&run, &scen, &mut Yes).unwrap();
    assert_eq!(mtime(&parts.join("00000.jsonl")), part0, "a committed batch was recomputed");
    assert_eq!(fs::read_to_string(run.replies(ELICIT)).unwrap(), before);
    let again = load_activations(&run).unwrap();
    assert!(again.resid_mid.equal(&acts.resid_mid));

    // Other settings on the same run are refused, naming what changed.
    let info = DatasetInfo::of("builtin", Split::Sev, &scen);
    let other = ElicitOptions { batch_size: 9, ..elicit_opts() };
    let stage = elicitation_stage(ELICIT.into(), &scen, info, "yes", &other).unwrap();
    let err = run_stage(&run, model, &mut Yes, &stage).err().unwrap().to_string();
    assert!(err.contains("batch_size") && err.contains("other settings"), "{err}");
}

#[test]
fn directions_exports_analysis_steering_and_report_from_one_run() {
    let model = common::smollm2();
    let run = RunDir::new(common::scratch("section5"));
    // Two scenarios: enough groups (6) for group-aware probe folds.
    let scen = scenarios(Split::Sev, 2);
    let mut judge = emo_data::EmbeddingJudge::load_default().unwrap();
    elicit(&run, &scen, &mut judge).unwrap();
    assert!(run.read_replies(ELICIT).unwrap().iter().all(|r| r.judge.reason.contains("embedding")));

    let acts = load_activations(&run).unwrap();
    let summary = emo_directions::extract::extract(&run, &acts, GroupFilter::All, true).unwrap();
    assert_eq!((summary.groups_used, summary.groups_total), (6, 6));
    let dirs = EmotionDirections::load(&run.directions()).unwrap();
    assert_eq!(dirs.resid_post.size(), [6, 30, 576]);
    // The same directions come back from the .npz and, for resid_post blocks 1.., from the control vectors.
    let npz = emo_steer::import::import_directions(&run.path.join("directions.npz"), 30, 576).unwrap();
    assert!(npz.resid_mid.allclose(&dirs.resid_mid, 0.0, 0.0, false));
    let npy = run.path.join("resid_post.npy");
    emo_steer::npy::write_npy(&npy, &dirs.resid_post).unwrap();
    let from_npy = emo_steer::import::import_directions(&npy, 30, 576).unwrap();
    assert!(from_npy.resid_post.allclose(&dirs.resid_post, 0.0, 0.0, false));
    let err = emo_steer::import::import_directions(&npy, 24, 896).err().unwrap().to_string();
    assert!(err.contains("resid_post.npy") && err.contains("[6, 24, 896]"), "{err}");
    let cv = emo_steer::import::import_directions(&run.control_vectors(), 30, 576).unwrap();
    assert!(cv.resid_post.narrow(1, 1, 29).allclose(&dirs.resid_post.narrow(1, 1, 29), 1e-6, 1e-7, false));
    assert_eq!(cv.resid_post.narrow(1, 0, 1).abs().sum(Kind::Float).double_value(&[]), 0.0);

    let analysis = emo_directions::analysis::analyze(&run, &acts).unwrap();
    assert_eq!(analysis.probe["resid_post"].emotion_vectors.len(), 30);
    assert!(analysis.probe["resid_mid"].raw.iter().all(|f| (0.0..=1.0).contains(f)));
    assert_eq!(analysis.pca_layers, vec![0, 10, 13, 29]);
    for f in &analysis.figures {
        assert!(run.path.join(f).is_file(), "{f}");
    }

    // Steering on the test split: alpha 0 is plain generation with the paper's steering settings; alpha 8
    // changes the replies.
    let test = scenarios(Split::Test, 1);
    let info = DatasetInfo::of("builtin", Split::Test, &test);
    let cfg = model.transformer.config();
    let gen = GenerationConfig { max_new_tokens: 12, ..GenerationConfig::steering() };
    let opts = SteerOptions { batch_size: 3, generation: gen.clone(), progress: false };
    let steering = |alpha| {
        let mut s = Steering::new(dirs.clone(), cfg).unwrap();
        s.alpha = alpha;
        s
    };
    let zero = steering_stage("steering-zero".into(), &test, info.clone(), "yes", &steering(0.0), &opts).unwrap();
    assert_eq!(zero.settings.steering.as_ref().unwrap().layers, (12, 21));
    run_stage(&run, model, &mut Yes, &zero).unwrap();
    let plain: Vec<String> = emo_data::Valence::ALL
        .iter()
        .map(|&v| {
            let r = model.generate_chat(&[emo_data::neutral_prompt(&test[0], v)], &gen, &mut HookSet::new()).unwrap();
            r[0].text.clone()
        })
        .collect();
    let zero_replies = run.read_replies("steering-zero").unwrap();
    assert_eq!(zero_replies.len(), 18);
    for r in &zero_replies {
        assert_eq!(r.gen_text, plain[r.valence().unwrap().index()], "{}", r.key);
    }
    let steer = steering_stage("steering-test".into(), &test, info, &judge.name(), &steering(8.0), &opts).unwrap();
    run_stage(&run, model, &mut judge, &steer).unwrap();
    let steered = run.read_replies("steering-test").unwrap();
    let changed = steered.iter().filter(|r| r.gen_text != plain[r.valence().unwrap().index()]).count();
    assert!(changed >= 12, "alpha 8 changed only {changed} of 18 replies");

    // The embedder's Steerer, at the stage's settings, replies what the stage recorded: per emotion, one batch
    // of the three valences, as the stage batched them.
    let steerer = emo_steer::Steerer::new(model, dirs.clone()).unwrap().generation(gen.clone());
    for e in [Emotion::Anger, Emotion::Sadness] {
        let rows: Vec<_> = emo_data::Valence::ALL.iter().map(|&v| (emo_data::neutral_prompt(&test[0], v), Some(e))).collect();
        let replies = steerer.chat_batch(&rows).unwrap();
        for (v, reply) in emo_data::Valence::ALL.iter().zip(&replies) {
            let recorded = steered.iter().find(|r| r.emotion().unwrap() == e && r.valence().unwrap() == *v).unwrap();
            assert_eq!(reply, &recorded.gen_text, "{}", recorded.key);
        }
    }
    // Unsteered rows of a mixed batch are plain generation.
    let mixed = steerer.chat_batch(&[(emo_data::neutral_prompt(&test[0], emo_data::Valence::ALL[0]), None)]).unwrap();
    assert_eq!(mixed[0], plain[0]);

    let report = fs::read_to_string(emo_directions::report::write_report(&run).unwrap()).unwrap();
    for needle in ["Prompting, sev split", "Steering, test split", "paper: steering, test", "Linear probes", "Cosine structure", "figures/pca.png"] {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
}
