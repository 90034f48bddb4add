//! Section 6's local components on the real default model (SmolLM2-135M, f32, CPU): the closed-form head
//! importance equals the literal zero-ablation forward; the attribution pass over a small section-5 run
//! equals the same quantities computed directly from one batched forward; its files round-trip.
#[path = "../../emo-model/tests/common/mod.rs"]
mod common;

use emo_attribution::attribute::Attribution;
use emo_attribution::sweeps::{csv_path, random_units, read_csv, run_sweep, EditPositions, SweepKind, SweepOptions, Units, CSV_HEADER};
use emo_attribution::{attribute, heads, AttributeOptions, SampleFilter};
use emo_data::{Emotion, Judge, Split, Verdict};
use emo_directions::directions::GroupFilter;
use emo_directions::elicit::{elicitation_stage, open_run};
use emo_directions::run::{load_activations, DatasetInfo, RunDir, ELICIT};
use emo_directions::{ElicitOptions, EmotionDirections};
use emo_model::{Capture, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Positions};
use emo_run::generation::run_stage;
use emo_test_support::max_diff;
use tch::{Kind, Tensor};

/// Last-token activations at `points` for `prompts` in one batch: one [n, ...] tensor per point.
fn capture(prompts: &[Vec<u32>], points: &[HookPoint], hooks: Option<&mut Interventions>) -> Vec<Tensor> {
    let m = common::smollm2();
    let mut cap = Capture::new(points.iter().copied(), Positions::LastPrompt);
    let mut set = HookSet::new();
    if let Some(h) = hooks {
        set.push(h);
    }
    set.push(&mut cap);
    let _ = m.transformer.forward_rows(prompts, m.pad_token_id(), &mut set, LogitsFor::Skip).unwrap();
    drop(set);
    points.iter().map(|&p| cap.per_row(p, prompts.len()).unwrap().to_kind(Kind::Float)).collect()
}

#[test]
fn closed_form_head_importance_equals_the_literal_ablation() {
    let m = common::smollm2();
    let cfg = m.transformer.config();
    // Prompts of different lengths in one batch (padding included).
    let prompts: Vec<Vec<u32>> = common::conversations().iter().take(4).map(|c| m.encode_chat(c).unwrap()).collect();
    assert!(prompts.iter().map(Vec::len).collect::<std::collections::BTreeSet<_>>().len() > 2);
    tch::manual_seed(5);
    let v = Tensor::randn([cfg.n_layers as i64, cfg.d_model as i64], (Kind::Float, tch::Device::Cpu));
    let v = &v / v.norm_scalaropt_dim(2, [-1], true);
    let v6 = v.unsqueeze(0).expand([6, -1, -1], false).contiguous();
    let u = heads::readout(&m.transformer, &v6).unwrap();
    let n = prompts.len() as i64;
    let z_points: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::AttnZ).collect();
    let z = Tensor::stack(&capture(&prompts, &z_points, None), 1);
    let closed = heads::importance(&z, &u.get(0).unsqueeze(0).expand([n, -1, -1], false));
    for (layer, head) in [(0, 0), (7, 3), (15, 8), (29, 2)] {
        let point = [HookPoint::ResidMid(layer)];
        let clean = &capture(&prompts, &point, None)[0];
        let rows = (0..n).map(|_| Intervention::none().with(HookPoint::AttnZ(layer), Edit::Zero(vec![head]))).collect();
        let mut ablate = Interventions::new(rows, Positions::All);
        let masked = &capture(&prompts, &point, Some(&mut ablate))[0];
        let vl = v.get(layer as i64);
        let drop = ((clean - masked) * &vl).sum_dim_intlist(-1, false, Kind::Double);
        let want = closed.select(1, layer as i64).select(1, head);
        let diff = max_diff(&drop, &want);
        assert!(diff < 1e-4, "layer {layer} head {head}: closed form differs from the literal ablation by {diff}");
        assert!(f64::try_from(want.abs().max()).unwrap() > 1e-3, "a vacuous comparison at layer {layer} head {head}");
    }
}

/// Accepts every reply but the last of the run (the negative-valence disgust prompt), so that one of the three
/// groups is incomplete among the accepted samples.
struct AllButLast(usize);
impl Judge for AllButLast {
    fn name(&self) -> String {
        "all-but-last".into()
    }
    fn judge(&mut self, items: &[(Emotion, &str)]) -> Result<Vec<Verdict>, emo_data::DataError> {
        let out = items.iter().enumerate().map(|(i, _)| Verdict::decided(self.0 + i != 17, 1.0)).collect();
        self.0 += items.len();
        Ok(out)
    }
}

#[test]
fn attribution_pass_equals_direct_computation() {
    let m = common::smollm2();
    let cfg = m.transformer.config();
    let run = RunDir::new(common::scratch("attribution"));
    let scen = emo_data::sev::spread(emo_data::Dataset::builtin().split(Split::Sev), 1);
    open_run(&run, m, "smollm2-135m").unwrap();
    let opts = ElicitOptions { batch_size: 6, generation: GenerationConfig::greedy(4), capture: true, progress: false };
    let mut judge = AllButLast(0);
    let stage = elicitation_stage(ELICIT.into(), &scen, DatasetInfo::of("builtin", Split::Sev, &scen), &judge.name(), &opts).unwrap();
    run_stage(&run, m, &mut judge, &stage).unwrap();
    let acts = load_activations(&run).unwrap();
    emo_directions::extract::extract(&run, &acts, GroupFilter::All, false).unwrap();
    let dirs = EmotionDirections::load(&run.directions()).unwrap();

    let opts = AttributeOptions { samples: SampleFilter::Accepted, batch_size: 5, progress: false };
    let got = attribute(&run, m, &opts).unwrap();
    assert_eq!(got.neurons.samples, [3, 3, 3, 3, 3, 2]);
    assert_eq!(got.delta_mu.groups, 2, "the negative group lacks its disgust sample");

    // Directly: the 18 elicitation prompts in one batch, in the run's order.
    let records = run.read_replies(ELICIT).unwrap();
    let prompts: Vec<Vec<u32>> =
        records.iter().map(|r| m.encode_chat(&emo_data::elicitation_prompt(r.emotion().unwrap(), &scen[0], r.valence().unwrap())).unwrap()).collect();
    let layer = 9usize;
    let acts = capture(&prompts, &[HookPoint::MlpPost(layer), HookPoint::ResidMid(layer)], None);
    let (a, resid_mid) = (&acts[0], &acts[1]);
    let w_down = m.transformer.w_down(layer).unwrap();
    for e in [Emotion::Anger, Emotion::Disgust] {
        let rows: Vec<i64> = records.iter().filter(|r| r.emotion().unwrap() == e && r.matched()).map(|r| r.index as i64).collect();
        let rows = Tensor::from_slice(&rows);
        let beta = dirs.get(emo_directions::Site::ResidPost, e).get(layer as i64).unsqueeze(0).matmul(&w_down).squeeze_dim(0);
        let c = a.index_select(0, &rows) * &beta;
        let scale = f64::try_from(c.abs().max()).unwrap();
        let c_mean = got.neurons.c_mean.get(e.index() as i64).get(layer as i64);
        assert!(max_diff(&c_mean, &c.mean_dim(0, false, Kind::Double)) < 1e-4 * scale.max(1.0), "{e} C_mean");
        let c_pos = got.neurons.c_pos.get(e.index() as i64).get(layer as i64);
        assert!(max_diff(&c_pos, &c.clamp_min(0.0).mean_dim(0, false, Kind::Double)) < 1e-4 * scale.max(1.0), "{e} C_pos");
        let v_attn = dirs.get(emo_directions::Site::ResidMid, e).get(layer as i64);
        let base = (resid_mid.index_select(0, &rows) * &v_attn).sum_dim_intlist(-1, false, Kind::Double).mean(Kind::Double);
        let got_base = got.heads.baseline_mean.get(e.index() as i64).get(layer as i64);
        assert!(max_diff(&got_base, &base) < 1e-3, "{e} baseline");
        // The ranking is by C_mean, descending.
        let rank = got.neurons.ranking(e, layer);
        let top = f64::try_from(c_mean.get(rank[0] as i64)).unwrap();
        assert!((top - f64::try_from(c_mean.max()).unwrap()).abs() < 1e-12);
    }
    // delta_mu at down_proj's input: per complete group (positive, neutral), centre over emotions, average.
    let group_rows = |valence: &str| -> Vec<i64> {
        Emotion::ALL.iter().map(|e| records.iter().find(|r| r.valence == valence && r.emotion == e.name()).unwrap().index as i64).collect()
    };
    let centred: Vec<Tensor> = ["positive", "neutral"]
        .iter()
        .map(|v| {
            let x = a.index_select(0, &Tensor::from_slice(&group_rows(v))).to_kind(Kind::Double);
            &x - x.mean_dim(0, true, Kind::Double)
        })
        .collect();
    let want = Tensor::stack(&centred, 0).mean_dim(0, false, Kind::Double);
    let got_mu = got.delta_mu.mlp.select(1, layer as i64);
    assert!(max_diff(&got_mu, &want) < 1e-4, "delta_mu differs by {}", max_diff(&got_mu, &want));
    assert_eq!(got.delta_mu.attn.size(), [6, cfg.n_layers as i64, (cfg.n_heads * cfg.d_head) as i64]);

    // Files: the authors' CSV layouts, and a round trip of the tensors.
    let dir = Attribution::dir(&run, SampleFilter::Accepted);
    let neurons = std::fs::read_to_string(dir.join("neurons/anger.csv")).unwrap();
    assert!(neurons.starts_with("layer,neuron,C_mean,C_pos,C_neg,beta,H_mean\n"));
    assert_eq!(neurons.lines().count(), 1 + cfg.n_layers * cfg.d_mlp);
    let heads_csv = std::fs::read_to_string(dir.join("heads/disgust.csv")).unwrap();
    assert!(heads_csv.starts_with("layer,head,mean_importance,std_importance,samples,baseline_mean\n"));
    assert_eq!(heads_csv.lines().count(), 1 + cfg.n_layers * cfg.n_heads);
    assert!(heads_csv.lines().nth(1).unwrap().split(',').nth(4) == Some("2"), "disgust has 2 samples");
    let loaded = Attribution::load(&run, SampleFilter::Accepted).unwrap();
    assert_eq!(max_diff(&loaded.neurons.c_mean, &got.neurons.c_mean), 0.0);
    assert_eq!(max_diff(&loaded.heads.std, &got.heads.std), 0.0);
    assert_eq!(max_diff(&loaded.delta_mu.attn, &got.delta_mu.attn), 0.0);

    // All samples: every group complete, kept beside the accepted ones.
    let all = attribute(&run, m, &AttributeOptions { samples: SampleFilter::All, ..opts.clone() }).unwrap();
    assert_eq!((all.neurons.samples, all.delta_mu.groups), ([3; 6], 3));
    assert!(Attribution::dir(&run, SampleFilter::All).join("summary.json").exists());
    // The same pass with another batch size is another computation: refused under the same name.
    let err = attribute(&run, m, &AttributeOptions { batch_size: 4, ..opts }).unwrap_err().to_string();
    assert!(err.contains("other settings") && err.contains("batch_size: was 5, now 4"), "{err}");

    sweeps_on(&run, &got);
}

/// Section 6's sweeps on the small run: the branched target rows equal literal full forwards; the CSV has the
/// promised rows; head ablation at every position and enhancement run.
fn sweeps_on(run: &RunDir, a: &Attribution) {
    let m = common::smollm2();
    let cfg = m.transformer.config();
    let mut opts = SweepOptions::paper(SweepKind::Ablate, Units::Neurons, cfg);
    opts.ks = vec![0, 2, 4];
    opts.seeds = 2;
    opts.limit = Some(1);
    opts.batch_prompts = 2;
    opts.progress = false;
    let rows = run_sweep(run, m, &opts).unwrap();
    assert_eq!(rows.len(), 6 * (1 + 2 * 4));
    let csv = std::fs::read_to_string(csv_path(run, &opts)).unwrap();
    assert!(csv.starts_with("emotion,k,control,seed,n,delta_s_mean,delta_s_ci95\nanger,0,target,,3,0,0\n"), "{csv}");
    assert!(csv.contains("\nanger,2,random,mean,3,"), "{csv}");

    // anger, k = 2 by hand: zero the top-2 neurons of every layer at the last prompt token, full forwards.
    let test = emo_data::sev::spread(emo_data::Dataset::builtin().split(Split::Test), 1);
    let prompts: Vec<Vec<u32>> =
        emo_data::Valence::ALL.iter().map(|&v| m.encode_chat(&emo_data::elicitation_prompt(Emotion::Anger, &test[0], v)).unwrap()).collect();
    let dirs = EmotionDirections::load(&run.directions()).unwrap();
    let points: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::ResidPost).collect();
    let score = |edits: Option<&mut Interventions>| {
        let acts = capture(&prompts, &points, edits);
        let v = dirs.get(emo_directions::Site::ResidPost, Emotion::Anger);
        acts.iter()
            .enumerate()
            .map(|(l, x)| (x * v.get(l as i64)).sum_dim_intlist(-1, false, Kind::Double))
            .fold(Tensor::zeros([3], (Kind::Double, tch::Device::Cpu)), |s, x| s + x)
    };
    let row = (0..cfg.n_layers).fold(Intervention::none(), |iv, l| {
        iv.with(HookPoint::MlpPost(l), Edit::Zero(a.neurons.ranking(Emotion::Anger, l)[..2].iter().map(|&j| j as i64).collect()))
    });
    let mut edits = Interventions::new(vec![row; 3], Positions::LastPrompt);
    let want = f64::try_from((score(Some(&mut edits)) - score(None)).mean(Kind::Double)).unwrap();
    let got = rows.iter().find(|r| r.emotion == Emotion::Anger && r.k == 2 && r.control == "target").unwrap();
    assert!((got.mean - want).abs() < 1e-3 * want.abs().max(1.0), "branched {} vs full forwards {want}", got.mean);
    assert!(want.abs() > 1.0, "ablating the top neurons moved nothing: {want}");

    // Head ablation at every token pays full forwards; enhancement adds delta_mu to the top units.
    let mut heads =
        SweepOptions { ks: vec![0, 1], seeds: 1, positions: EditPositions::All, ..SweepOptions::paper(SweepKind::Ablate, Units::Heads, cfg) };
    heads.limit = Some(1);
    heads.progress = false;
    let rows = run_sweep(run, m, &heads).unwrap();
    assert!(rows.iter().all(|r| r.n == 3 && r.mean.is_finite()) && rows.len() == 6 * 4);
    assert!(csv_path(run, &heads).ends_with("sweeps/ablate-heads-all.csv"));
    let mut enhance = SweepOptions { ks: vec![0, 4], seeds: 1, ..SweepOptions::paper(SweepKind::Enhance, Units::Neurons, cfg) };
    enhance.limit = Some(1);
    enhance.progress = false;
    let rows = run_sweep(run, m, &enhance).unwrap();
    let target = rows.iter().find(|r| r.k == 4 && r.control == "target").unwrap();
    assert!(target.mean.abs() > 0.0, "adding delta_mu changed nothing");
    // The CSV reads back as written; a malformed line names its file and line.
    assert_eq!(read_csv(&csv_path(run, &enhance)).unwrap(), rows);
    let broken = run.path.join("sweeps").join("broken.csv.txt");
    std::fs::write(&broken, format!("{CSV_HEADER}\nanger,4,target,,3,1.5,0.1\nanger,x,target,,3,1.5,0.1\n")).unwrap();
    let err = read_csv(&broken).unwrap_err().to_string();
    assert!(err.contains("broken.csv.txt:3") && err.contains("k `x`"), "{err}");
    // Fig. 3 from the run's three sweeps: neurons ablated, heads ablated (all positions), neurons enhanced.
    let fig3 = emo_attribution::figures::write_fig3(run).unwrap().expect("the run has sweeps");
    assert!(fig3.png.is_file() && fig3.svg.is_file() && fig3.width > fig3.height / 2);
    let svg = std::fs::read_to_string(&fig3.svg).unwrap();
    for title in ["ablate of neurons, last token", "ablate of heads, all tokens", "enhance of neurons, last token"] {
        assert!(svg.contains(title), "{title} missing from Fig. 3");
    }
    let err = run_sweep(run, m, &SweepOptions { ks: vec![0, 99], ..heads }).unwrap_err().to_string();
    assert!(err.contains("k = 99 is more than the 9 heads per layer"), "{err}");
}

#[test]
fn random_controls_are_reproducible_draws_of_distinct_units() {
    let a = random_units(1536, 8, 3, Emotion::Fear, 12);
    assert_eq!(a, random_units(1536, 8, 3, Emotion::Fear, 12));
    assert_ne!(a, random_units(1536, 8, 4, Emotion::Fear, 12));
    assert_ne!(a, random_units(1536, 8, 3, Emotion::Fear, 13));
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&u| u < 1536) && a.len() == 8);
    assert_eq!(random_units(9, 9, 0, Emotion::Anger, 0), (0..9).collect::<Vec<_>>());
    // Roughly uniform: over many draws every unit of a small layer comes up.
    let mut seen = [0usize; 9];
    for seed in 0..200 {
        for u in random_units(9, 2, seed, Emotion::Anger, 5) {
            seen[u] += 1;
        }
    }
    assert!(seen.iter().all(|&c| c > 20), "{seen:?}");
}
