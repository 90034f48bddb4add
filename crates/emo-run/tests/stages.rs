//! Resumable stages on the real default model: a sweep stage and a reduce stage killed part-way resume at the
//! first uncommitted batch and end with the results of one uninterrupted run; changed settings are refused
//! with the diff; a reduce stage sharded in 2 merges to the same bits; manifests of the previous format still
//! load; a model folder is identified by its weights.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use std::ops::Range;

use emo_model::{Capture, Edit, HookPoint, HookSet, Intervention, LogitsFor, Positions};
use emo_run::folder::model_identity;
use emo_run::merge::merge_stage;
use emo_run::shard::Shard;
use emo_run::{run_stage, GroupedSums, Metric, ModelInfo, ReduceStage, Reduction, RunDir, RunError, Sweep, SweepStage};
use emo_test_support::max_diff;
use serde_json::json;
use tch::{Kind, Tensor};

fn prompts(n: usize) -> Vec<Vec<u32>> {
    let m = common::smollm2();
    common::conversations().iter().cycle().take(n).map(|c| m.encode_chat(c).unwrap()).collect()
}

fn new_run(name: &str) -> RunDir {
    let run = RunDir::new(common::scratch(name));
    run.open(ModelInfo::of(common::smollm2(), "smollm2-135m").unwrap(), &[]).unwrap();
    run
}

#[test]
fn sweep_stage_resumes_to_the_table_of_one_sweep() {
    let m = common::smollm2();
    let cfg = m.transformer.config();
    let prompts = prompts(5);
    let ivs = vec![
        Intervention::none(),
        Intervention::none().with(HookPoint::MlpPost(10), Edit::Zero((0..32).collect())),
        Intervention::none().with(HookPoint::AttnZ(20), Edit::Zero(vec![1, 4])),
    ];
    tch::manual_seed(11);
    let v = Tensor::randn([cfg.d_model as i64], (Kind::Float, tch::Device::Cpu));
    let metric = Metric::final_state(&(&v / v.norm())).unwrap();
    let sweep = || Sweep::new(&prompts, &ivs, Positions::LastPrompt, &metric);
    let expected = sweep().run(m).unwrap();

    let run = new_run("sweep-stage");
    let settings = json!({"what": "test sweep", "interventions": 3});
    let mut stage = SweepStage { settings: settings.clone(), model: m, sweep: sweep(), batch_prompts: 2 };
    let stats = run_stage(&run, "sweep-test", &mut stage, false).unwrap();
    assert!(stats.complete);
    assert_eq!((stats.prompts, stats.rows), (5, 15));
    let table = SweepStage::<()>::load(&run, "sweep-test").unwrap();
    assert_eq!(table.size(), [5, 3]);
    assert!(max_diff(&table, &expected) < 1e-4, "{}", max_diff(&table, &expected));

    // A run killed after its first batch: the later parts and the merged table are gone, the stage is not
    // complete. Resuming recomputes batches 1 and 2 only.
    let parts = run.parts("sweep-test");
    let first = std::fs::metadata(parts.join("00000.safetensors")).unwrap().modified().unwrap();
    for f in ["00001.safetensors", "00002.safetensors"] {
        std::fs::remove_file(parts.join(f)).unwrap();
    }
    std::fs::remove_file(run.output("sweep-test", "safetensors")).unwrap();
    let mut manifest = run.require_manifest().unwrap();
    manifest.stages.get_mut("sweep-test").unwrap().stats.complete = false;
    emo_run::store::write_json(&run.manifest(), &manifest).unwrap();
    let mut stage = SweepStage { settings: settings.clone(), model: m, sweep: sweep(), batch_prompts: 2 };
    let stats = run_stage(&run, "sweep-test", &mut stage, false).unwrap();
    assert!(stats.complete);
    assert_eq!(std::fs::metadata(parts.join("00000.safetensors")).unwrap().modified().unwrap(), first, "batch 0 was recomputed");
    let resumed = SweepStage::<()>::load(&run, "sweep-test").unwrap();
    assert!(max_diff(&resumed, &table) == 0.0);

    // Other settings, or another kind of stage under the same name, are refused with what differs.
    let mut other = SweepStage { settings: json!({"what": "test sweep", "interventions": 4}), model: m, sweep: sweep(), batch_prompts: 2 };
    let err = run_stage(&run, "sweep-test", &mut other, false).unwrap_err().to_string();
    assert!(err.contains("other settings") && err.contains("interventions: was 3, now 4"), "{err}");
    let mut reduce = ReduceStage {
        settings: settings.clone(),
        items: 5,
        batch_items: 2,
        state: Reduction::default(),
        reduce: |_: Range<usize>, _: &mut Reduction, _: &mut _| Ok(()),
    };
    let err = run_stage(&run, "sweep-test", &mut reduce, false).unwrap_err().to_string();
    assert!(err.contains("kind: was sweep, now reduce"), "{err}");
}

/// Last-token `mlp.hook_post` of layer 3 for `prompts`: [n, d_mlp].
fn mlp_post(prompts: &[Vec<u32>]) -> Tensor {
    let m = common::smollm2();
    let mut cap = Capture::new([HookPoint::MlpPost(3)], Positions::LastPrompt);
    let _ = m.transformer.forward_rows(prompts, m.pad_token_id(), &mut HookSet::new().with(&mut cap), LogitsFor::Skip).unwrap();
    cap.per_row(HookPoint::MlpPost(3), prompts.len()).unwrap()
}

#[test]
fn reduce_stage_commits_each_batchs_sums_resumes_and_shards_to_the_same_bits() {
    let m = common::smollm2();
    let d_mlp = m.transformer.config().d_mlp as i64;
    let prompts = prompts(5);
    let key = |i: usize| i % 2;
    let empty = || Reduction::new([("mlp_post.3".to_string(), GroupedSums::new(2, &[d_mlp], true))]);
    let reduce = |fail_at: Option<usize>| {
        let prompts = &prompts;
        move |items: Range<usize>, state: &mut Reduction, _: &mut emo_run::StageStats| {
            if Some(items.start) == fail_at {
                return Err(RunError::Invalid("killed".into()));
            }
            let keys: Vec<usize> = items.clone().map(key).collect();
            state.get_mut("mlp_post.3")?.add(&keys, &mlp_post(&prompts[items]))?;
            Ok(())
        }
    };
    let run = new_run("reduce-stage");
    let settings = json!({"statistics": "mlp_post.3 by parity"});
    // Killed in its third batch: two batches' sums are committed, each its own file.
    let mut stage = ReduceStage { settings: settings.clone(), items: 5, batch_items: 2, state: empty(), reduce: reduce(Some(4)) };
    let err = run_stage(&run, "reduce-test", &mut stage, false).unwrap_err().to_string();
    assert!(err.contains("killed"), "{err}");
    let states: Vec<String> =
        std::fs::read_dir(run.parts("reduce-test")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut states = states;
    states.sort();
    assert_eq!(states, vec!["sums-00000.safetensors".to_string(), "sums-00001.safetensors".to_string()]);
    let manifest = run.require_manifest().unwrap();
    assert_eq!(manifest.stages["reduce-test"].stats.prompts, 4);
    assert!(!manifest.stages["reduce-test"].stats.complete);

    // A new process resumes from the committed sums and runs the last batch only.
    let mut stage = ReduceStage { settings: settings.clone(), items: 5, batch_items: 2, state: empty(), reduce: reduce(Some(0)) };
    let stats = run_stage(&run, "reduce-test", &mut stage, false).unwrap();
    assert!(stats.complete);
    let loaded = ReduceStage::<(), ()>::load(&run, "reduce-test").unwrap();
    let got = loaded.get("mlp_post.3").unwrap();

    let all = mlp_post(&prompts).to_kind(Kind::Double);
    for k in 0..2 {
        let rows: Vec<i64> = (0..5).filter(|&i| key(i) == k).map(|i| i as i64).collect();
        let want = all.index_select(0, &Tensor::from_slice(&rows));
        assert_eq!(got.count(k), rows.len() as u64);
        assert!(max_diff(&got.mean(k).unwrap(), &want.mean_dim(0, false, Kind::Double)) < 1e-5);
        assert!(max_diff(&got.std(k).unwrap(), &want.std_dim(0, true, false)) < 1e-5);
    }

    // Sharded in 2 (batches 0 and 2, and batch 1), then merged: the same file, bit for bit.
    let sharded = new_run("reduce-stage-sharded");
    for index in 0..2 {
        let shard = sharded.clone().sharded(Some(Shard { index, count: 2 }));
        let mut stage = ReduceStage { settings: settings.clone(), items: 5, batch_items: 2, state: empty(), reduce: reduce(None) };
        let err = run_stage(&shard, "reduce-test", &mut stage, false).unwrap_err();
        assert!(matches!(&err, RunError::ShardPending { shard, stages } if *shard == format!("{index}/2") && stages == &["reduce-test"]), "{err}");
        if index == 0 {
            let err = merge_stage(&sharded, "reduce-test").unwrap_err().to_string();
            assert!(err.contains("shard(s) 1/2 have not finished"), "{err}");
            let mut whole = ReduceStage { settings: settings.clone(), items: 5, batch_items: 2, state: empty(), reduce: reduce(None) };
            let err = run_stage(&sharded, "reduce-test", &mut whole, false).unwrap_err().to_string();
            assert!(err.contains("sharded in 2") && err.contains("1/2"), "{err}");
        }
    }
    let stats = merge_stage(&sharded, "reduce-test").unwrap();
    assert!(stats.complete && stats.prompts == 5, "{stats:?}");
    let bytes = |run: &RunDir| std::fs::read(run.output("reduce-test", "safetensors")).unwrap();
    assert!(bytes(&run) == bytes(&sharded), "the merged sums differ from the whole stage's");
    assert!(sharded.require_manifest().unwrap().stages["reduce-test"].stats.complete);
}

#[test]
fn manifests_of_the_previous_format_load() {
    // Written by the version before stage kinds, forward rows and per-file model hashes.
    let old = json!({
        "format_version": 1,
        "model": {"reference": "x", "path": "/models/x", "sha256": "abc", "architecture": "llama", "n_layers": 2, "d_model": 8},
        "versions": {"emo-directions": "0.1.0"},
        "prompts": {},
        "stages": {"elicit": {
            "settings": {"batch_size": 4},
            "stats": {"complete": true, "prompts": 12, "new_tokens": 30, "prompt_tokens": 90, "generate_seconds": 1.0,
                      "judge_seconds": 0.5, "seconds": 2.0, "peak_rss_mb": 900.0}
        }}
    });
    let run = RunDir::new(common::scratch("old-manifest"));
    emo_run::store::write_json(&run.manifest(), &old).unwrap();
    let m = run.require_manifest().unwrap();
    let elicit = &m.stages["elicit"];
    assert_eq!(elicit.kind, emo_run::folder::GENERATION);
    assert_eq!((elicit.stats.prompts, elicit.stats.rows), (12, 0));
    assert!(m.model.files.is_empty());
    #[derive(serde::Deserialize)]
    struct Old {
        batch_size: usize,
    }
    assert_eq!(elicit.settings_as::<Old>("elicit").unwrap().batch_size, 4);
}

#[test]
fn a_model_folder_is_identified_by_its_weights() {
    let dir = common::scratch("identity");
    let folder = |name: &str, weights: &[u8]| {
        let p = dir.join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
        std::fs::write(p.join("model.safetensors"), weights).unwrap();
        std::fs::write(p.join("README.md"), name).unwrap(); // not part of the identity
        p
    };
    let (a, b, a2) = (folder("a", b"base"), folder("b", b"fine-tune"), folder("a2", b"base"));
    let (sha_a, files_a) = model_identity(&a).unwrap();
    let (sha_b, files_b) = model_identity(&b).unwrap();
    assert_ne!(sha_a, sha_b, "two fine-tunes of one base must differ");
    assert_eq!(files_a["config.json"], files_b["config.json"]);
    assert_eq!(model_identity(&a2).unwrap().0, sha_a);
    assert_eq!(files_a.keys().collect::<Vec<_>>(), ["config.json", "model.safetensors"]);

    // A run made by the previous version holds the config's hash alone: resuming it says what to do.
    let info = |sha: &str, files| ModelInfo {
        reference: "a".into(),
        path: a.display().to_string(),
        sha256: sha.into(),
        files,
        architecture: "llama".into(),
        n_layers: 2,
        d_model: 8,
        numerics: Some("f32, dequantized".into()),
    };
    let old = info(&files_a["config.json"], Default::default());
    let now = info(&sha_a, files_a.clone());
    let err = old.check_same(&now, &dir).unwrap_err().to_string();
    assert!(err.contains("older version") && err.contains("config.json alone"), "{err}");
    let err = info(&sha_b, files_b).check_same(&now, &dir).unwrap_err().to_string();
    assert!(err.contains("use a new run folder"), "{err}");
    assert!(now.check_same(&now.clone(), &dir).is_ok());
    // The same files loaded with other numerics are refused; a run that recorded none accepts any.
    let bf16 = ModelInfo { numerics: Some("bf16, packed".into()), ..now.clone() };
    let err = now.check_same(&bf16, &dir).unwrap_err().to_string();
    assert!(err.contains("f32, dequantized") && err.contains("bf16, packed") && err.contains("--dtype"), "{err}");
    assert!(ModelInfo { numerics: None, ..now.clone() }.check_same(&bf16, &dir).is_ok());
    // The GGUF file of the default model is its own identity.
    let g = ModelInfo::of(common::smollm2(), "smollm2-135m").unwrap();
    assert_eq!(g.files.len(), 1);
    assert_eq!(g.files.values().next().unwrap(), &g.sha256);
}

#[test]
fn f64_settings_survive_the_manifest_round_trip_bit_for_bit() {
    // A resumed stage compares its recorded settings (parsed back from manifest.json) with freshly computed
    // ones, sigma among them; serde_json's default float parser can be one ulp off (it was for these two).
    let mut values = vec![3.3788855971461946, 20.004010518391926];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        values.push(f64::from_bits(x % 0x7fe0_0000_0000_0000)); // finite, positive, every magnitude
    }
    let text = serde_json::to_string(&serde_json::to_value(&values).unwrap()).unwrap();
    let back: Vec<f64> = serde_json::from_value(serde_json::from_str(&text).unwrap()).unwrap();
    let off = values.iter().zip(&back).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(off, 0, "{off} of {} values changed", values.len());
}

#[test]
fn a_run_keeps_one_prompt_set() {
    use emo_data::PromptSet;
    let run = new_run("prompt-set");
    let mut m = run.require_manifest().unwrap();
    assert_eq!(m.prompt_set(), PromptSet::paper());
    // Before any stage the set may be chosen; the choice is on disk.
    run.use_prompts(&mut m, &PromptSet::strong()).unwrap();
    let mut m = run.require_manifest().unwrap();
    assert_eq!(m.prompt_set(), PromptSet::strong());
    assert_eq!(m.prompts["prompt_set"], "strong");
    run.use_prompts(&mut m, &PromptSet::strong()).unwrap();
    // With a stage recorded, another set is refused and the manifest is left alone.
    let stats = emo_run::StageStats { prompts: 1, ..Default::default() };
    m.stages.insert("elicit".into(), emo_run::StageInfo { kind: "generation".into(), settings: json!({}), stats, shards: None });
    emo_run::store::write_json(&run.manifest(), &m).unwrap();
    let e = run.use_prompts(&mut m, &PromptSet::paper()).unwrap_err().to_string();
    assert!(e.contains("prompt set `strong`") && e.contains("`paper` differs") && e.contains("another run folder"), "{e}");
    assert_eq!(run.require_manifest().unwrap().prompt_set(), PromptSet::strong());
    // A manifest of the version before prompt sets (the paper's texts, no `prompt_set` key) reads as paper.
    let mut old = run.require_manifest().unwrap();
    old.prompts.remove("prompt_set");
    assert_eq!(old.prompt_set().name, "custom"); // texts that are not the paper's, without a name
    old.prompts.insert("elicitation_system".into(), "Always reply in {emotion}.\nKeep the reply to at most two sentences.".into());
    assert_eq!(old.prompt_set(), PromptSet::paper());
}
