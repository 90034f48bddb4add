//! Hook semantics on the real default model: identity hooks change nothing, edits act only from their
//! position on, and positions mean the same with and without the KV cache and at any padding.
mod common;

use emo_model::{Capture, Edit, FnHook, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, LogitsFor, Positions};
use tch::{Kind, Tensor};

fn prompts() -> Vec<Vec<u32>> {
    let m = common::smollm2();
    common::conversations().iter().map(|c| m.encode_chat(c).unwrap()).collect()
}

fn full_logits(rows: &[Vec<u32>], hooks: &mut HookSet) -> Tensor {
    let m = common::smollm2();
    m.transformer.forward_rows(rows, m.pad_token_id(), hooks, LogitsFor::All).unwrap()
}

#[test]
fn hook_point_names_round_trip() {
    let all = HookPoint::all(30);
    assert_eq!(all.len(), 1 + 21 * 30 + 3);
    for p in all {
        assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
    }
    assert_eq!(HookPoint::AttnZ(3).to_string(), "blocks.3.attn.hook_z");
    assert_eq!(HookPoint::MlpPost(0).to_string(), "blocks.0.mlp.hook_post");
    assert_eq!(HookPoint::LnFinal.to_string(), "ln_final.hook_normalized");
    assert_eq!(HookPoint::AttnPattern(2).to_string(), "blocks.2.attn.hook_pattern");
    assert_eq!(HookPoint::Ln2Scale(4).to_string(), "blocks.4.ln2.hook_scale");
    assert_eq!(HookPoint::MlpPreLinear(1).to_string(), "blocks.1.mlp.hook_pre_linear");
    assert_eq!(HookPoint::AttnRotK(7).at_layer(9), HookPoint::AttnRotK(9));
    let err = "blocks.x.hook_resid_post".parse::<HookPoint>().unwrap_err().to_string();
    assert!(err.contains("blocks.x.hook_resid_post"), "{err}");
}

#[test]
fn identity_hooks_change_nothing() {
    let rows = prompts();
    let base = full_logits(&rows, &mut HookSet::new());
    let n = common::smollm2().transformer.config().n_layers;
    let identity = |points: Vec<HookPoint>| {
        let mut set = HookSet::new();
        for p in points {
            set.push_owned(FnHook::new(p, |act: &Tensor, _ctx: &emo_model::HookContext| Ok(Some(act.copy()))));
        }
        full_logits(&rows, &mut set)
    };
    // Exactly, except where hooking needs another computation: the attention scores and pattern exist only in
    // explicit attention, which rounds differently from the fused kernel, and per-head results are summed
    // instead of going through one matmul.
    let explicit = |p: &HookPoint| matches!(p, HookPoint::AttnScores(_) | HookPoint::AttnPattern(_) | HookPoint::AttnResult(_));
    let hooked = identity(HookPoint::all(n).into_iter().filter(|p| !explicit(p)).collect());
    assert_eq!(f64::try_from((&hooked - &base).abs().max()).unwrap(), 0.0);
    let hooked = identity(HookPoint::all(n));
    assert!(f64::try_from((&hooked - &base).abs().max()).unwrap() < 1e-3);
}

#[test]
fn an_edit_at_position_p_changes_nothing_before_p() {
    let rows = vec![prompts().remove(0)];
    let base = full_logits(&rows, &mut HookSet::new());
    let p = 20;
    let d = common::smollm2().transformer.config().d_model as i64;
    let v = Tensor::ones([d], (Kind::Float, tch::Device::Cpu));
    let mut edit = Interventions::all_rows(Intervention::add_rms(HookPoint::ResidPost(5), v, 8.0), Positions::Range(p, p + 1));
    let edited = full_logits(&rows, &mut HookSet::new().with(&mut edit));
    let before = (edited.narrow(1, 0, p) - base.narrow(1, 0, p)).abs().max();
    let after = (edited.narrow(1, p, 1) - base.narrow(1, p, 1)).abs().max();
    assert_eq!(f64::try_from(before).unwrap(), 0.0);
    assert!(f64::try_from(after).unwrap() > 1e-2, "the edit did nothing at its own position");
}

#[test]
fn hook_errors_are_reported_not_panics() {
    let rows = vec![prompts().remove(3)];
    let m = common::smollm2();
    let bad = Tensor::ones([7], (Kind::Float, tch::Device::Cpu));
    let mut edit = Interventions::all_rows(Intervention::add(HookPoint::ResidMid(2), bad), Positions::All);
    let err = m.generate_ids(&rows, &GenerationConfig::greedy(3), &mut HookSet::new().with(&mut edit)).unwrap_err().to_string();
    assert!(err.contains("blocks.2.hook_resid_mid"), "{err}");
    // A hook returning the wrong shape is refused with the point's name.
    let mut set = HookSet::new();
    set.push_owned(FnHook::new(HookPoint::MlpOut(1), |act: &Tensor, _: &emo_model::HookContext| Ok(Some(act.narrow(2, 0, 3)))));
    let err = m.generate_ids(&rows, &GenerationConfig::greedy(3), &mut set).unwrap_err().to_string();
    assert!(err.contains("blocks.1.hook_mlp_out") && err.contains("shape"), "{err}");
}

#[test]
fn kv_cache_gives_the_logits_of_a_full_reforward() {
    let m = common::smollm2();
    let rows = vec![prompts().remove(1)];
    let plen = rows[0].len() as i64;
    let mut cap = Capture::new([HookPoint::Logits], Positions::LastPromptAndGenerated);
    let cfg = GenerationConfig { ignore_eos: true, ..GenerationConfig::greedy(40) };
    let gen = m.generate_ids(&rows, &cfg, &mut HookSet::new().with(&mut cap)).unwrap();
    assert_eq!(gen[0].tokens.len(), 40);
    let cached = cap.get(HookPoint::Logits).unwrap();
    // Logits exist for the last prompt token and the first 39 generated tokens.
    assert_eq!(Vec::<i64>::try_from(&cached.positions).unwrap(), (plen - 1..plen + 39).collect::<Vec<_>>());

    let mut seq = rows[0].clone();
    seq.extend(&gen[0].tokens[..39]);
    let full = full_logits(&[seq], &mut HookSet::new());
    let reference = full.narrow(1, plen - 1, 40).squeeze_dim(0);
    let diff = f64::try_from((cached.values - reference).abs().max()).unwrap();
    assert!(diff < 1e-3, "cached vs full logits differ by {diff}");
    // And greedy without the cache (re-running everything per step) picks the same tokens.
    let nocache = GenerationConfig { use_cache: false, ..cfg };
    let gen2 = m.generate_ids(&rows, &nocache, &mut HookSet::new()).unwrap();
    assert_eq!(gen[0].tokens, gen2[0].tokens);
}

#[test]
fn a_padded_batch_gives_each_prompt_its_own_output() {
    let m = common::smollm2();
    let rows = prompts();
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    assert!(lens.iter().min() != lens.iter().max(), "prompts should differ in length: {lens:?}");
    let cfg = GenerationConfig::greedy(24);
    let points = [HookPoint::ResidPost(10), HookPoint::AttnZ(3)];
    let mut cap = Capture::new(points, Positions::LastPrompt);
    let batch = m.generate_ids(&rows, &cfg, &mut HookSet::new().with(&mut cap)).unwrap();
    let batched = cap.per_row(HookPoint::ResidPost(10), rows.len()).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let mut cap1 = Capture::new(points, Positions::LastPrompt);
        let alone = m.generate_ids(std::slice::from_ref(row), &cfg, &mut HookSet::new().with(&mut cap1)).unwrap();
        assert_eq!(batch[i].tokens, alone[0].tokens, "prompt {i}");
        let single = cap1.per_row(HookPoint::ResidPost(10), 1).unwrap();
        let diff = f64::try_from((batched.get(i as i64) - single.get(0)).abs().max()).unwrap();
        assert!(diff < 1e-4, "prompt {i}: captured residual differs by {diff}");
    }
}

#[test]
fn positions_mean_the_same_with_and_without_the_cache() {
    let m = common::smollm2();
    let rows: Vec<Vec<u32>> = prompts().into_iter().take(2).collect();
    let d = m.transformer.config().d_model as i64;
    tch::manual_seed(1);
    let v = Tensor::randn([d], (Kind::Float, tch::Device::Cpu));
    let run = |use_cache: bool| {
        let mut steer =
            Interventions::all_rows(Intervention::add_rms(HookPoint::ResidPost(8), v.shallow_clone(), 4.0), Positions::LastPromptAndGenerated);
        let mut cap = Capture::new([HookPoint::ResidPost(12)], Positions::Generated);
        let cfg = GenerationConfig { use_cache, ignore_eos: true, ..GenerationConfig::greedy(12) };
        let out = m.generate_ids(&rows, &cfg, &mut HookSet::new().with(&mut steer).with(&mut cap)).unwrap();
        (out, cap)
    };
    let (with, cap_with) = run(true);
    let (without, cap_without) = run(false);
    assert_eq!(with, without);
    // Without the cache every step re-runs every position, so keep the last capture of each (row, position).
    let a = cap_with.get(HookPoint::ResidPost(12)).unwrap();
    let b = cap_without.get(HookPoint::ResidPost(12)).unwrap();
    let key = |c: &emo_model::hooks::Captured| {
        let rows = Vec::<i64>::try_from(&c.rows).unwrap();
        let pos = Vec::<i64>::try_from(&c.positions).unwrap();
        let mut map = std::collections::BTreeMap::new();
        for (i, k) in rows.into_iter().zip(pos).enumerate() {
            map.insert(k, i as i64);
        }
        map
    };
    let (ka, kb) = (key(&a), key(&b));
    assert_eq!(ka.keys().collect::<Vec<_>>(), kb.keys().collect::<Vec<_>>());
    for (k, &ia) in &ka {
        let diff = f64::try_from((a.values.get(ia) - b.values.get(kb[k])).abs().max()).unwrap();
        assert!(diff < 1e-3, "{k:?}: {diff}");
    }
}

#[test]
fn ablation_zeroes_chosen_neurons_and_heads_at_chosen_tokens() {
    let rows = vec![prompts().remove(0)];
    let plen = rows[0].len() as i64;
    let base = full_logits(&rows, &mut HookSet::new());
    let both = Intervention::zero(HookPoint::MlpPost(3), [5, 17, 1000]).with(HookPoint::AttnZ(4), Edit::Zero(vec![2]));
    let mut ablate = Interventions::all_rows(both, Positions::LastPrompt);
    // Registered after the ablation, the capture sees its result.
    let mut cap = Capture::new([HookPoint::MlpPost(3), HookPoint::AttnZ(4)], Positions::All);
    let ablated = full_logits(&rows, &mut HookSet::new().with(&mut ablate).with(&mut cap));
    let mlp = cap.get(HookPoint::MlpPost(3)).unwrap().values; // [plen, d_mlp]
    let z = cap.get(HookPoint::AttnZ(4)).unwrap().values; // [plen, heads, d_head]
    let last = mlp.get(plen - 1);
    for unit in [5, 17, 1000] {
        assert_eq!(f64::try_from(last.get(unit)).unwrap(), 0.0);
        assert!(f64::try_from(mlp.narrow(0, 0, plen - 1).select(1, unit).abs().sum(Kind::Float)).unwrap() > 0.0);
    }
    assert_eq!(f64::try_from(z.get(plen - 1).get(2).abs().sum(Kind::Float)).unwrap(), 0.0);
    assert!(f64::try_from(z.get(plen - 1).get(1).abs().sum(Kind::Float)).unwrap() > 0.0);
    let before = f64::try_from((ablated.narrow(1, 0, plen - 1) - base.narrow(1, 0, plen - 1)).abs().max()).unwrap();
    let at = f64::try_from((ablated.narrow(1, plen - 1, 1) - base.narrow(1, plen - 1, 1)).abs().max()).unwrap();
    assert_eq!(before, 0.0);
    assert!(at > 0.0);
    // An out-of-range unit is an error naming the point.
    let mut bad = Interventions::all_rows(Intervention::zero(HookPoint::MlpPost(0), [99_999]), Positions::All);
    let m = common::smollm2();
    let err = m.generate_ids(&rows, &GenerationConfig::greedy(2), &mut HookSet::new().with(&mut bad)).unwrap_err();
    assert!(err.to_string().contains("blocks.0.mlp.hook_post"), "{err}");
}

/// One model shared by several threads (the server's and sweeps' use of `Sync`): each thread's forward passes,
/// hooked with its own edit and capture, give what they give on one thread.
#[test]
fn one_model_serves_several_threads_at_once() {
    let m = common::smollm2();
    let rows = prompts();
    let point = HookPoint::ResidPost(12);
    tch::manual_seed(3);
    let v = Tensor::randn([576], (Kind::Float, tch::Device::Cpu));
    // Plain numbers, not a tensor, cross the threads (a tensor is not Sync).
    let v = Vec::<f32>::try_from(&v / v.norm()).unwrap();
    let run = |i: usize| {
        let mut scale = Interventions::all_rows(Intervention::add_rms(point, Tensor::from_slice(&v), 2.0 * i as f64), Positions::All);
        let mut capture = Capture::new([HookPoint::LnFinal], Positions::LastPrompt);
        let logits =
            m.transformer.forward_rows(&rows, m.pad_token_id(), &mut HookSet::new().with(&mut scale).with(&mut capture), LogitsFor::Last).unwrap();
        (logits, capture.per_row(HookPoint::LnFinal, rows.len()).unwrap())
    };
    let alone: Vec<_> = (0..4).map(run).collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|i| s.spawn(move || (0..3).map(|_| run(i)).collect::<Vec<_>>())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, runs) in together.iter().enumerate() {
        for (logits, normed) in runs {
            assert!(logits.allclose(&alone[i].0, 1e-4, 1e-4, false), "thread {i}: logits differ from the single-thread run");
            assert!(normed.allclose(&alone[i].1, 1e-5, 1e-5, false), "thread {i}: captured ln_final differs");
        }
    }
    // The edits differ between threads, so the comparison can tell threads apart.
    assert!(!alone[0].0.allclose(&alone[3].0, 1e-3, 1e-3, false));
}
