//! Continuous batching and sampling on the real default model: a sequence gets the tokens it gets alone,
//! whoever joins or leaves the batch around it.
mod common;

use emo_model::batcher::row_hooks;
use emo_model::kv_cache::left_pad;
use emo_model::{
    BatchRequest, Capture, ChatMessage, ContinuousBatch, DecodeState, Edit, Event, GenerationConfig, Guard, GuardHold, HookPoint, HookSet,
    Intervention, LogitsFor, Positions, Readout, Readouts, RowControl, Sampling, StopReason,
};
use tch::{Kind, Tensor};

fn prompts() -> Vec<Vec<u32>> {
    let m = common::smollm2();
    ["Hi", "Name three colours.", "Write one sentence about the sea and the wind.", "What is 2 + 2?", "Tell me a story."]
        .iter()
        .map(|p| m.encode_chat(&[ChatMessage::user(*p)]).unwrap())
        .collect()
}

/// A residual edit strong enough to change the reply.
fn steer(seed: i64) -> RowControl {
    tch::manual_seed(seed);
    let v = Tensor::randn([576], (Kind::Float, tch::Device::Cpu));
    let v = &v / v.norm();
    let edits = (10..14).fold(Intervention::none(), |i, l| i.with(HookPoint::ResidPost(l), Edit::AddRms(v.shallow_clone(), 8.0)));
    RowControl::none().with(Positions::LastPromptAndGenerated, edits)
}

fn alone(prompt: &[u32], cfg: &GenerationConfig, control: &RowControl) -> (Vec<u32>, StopReason) {
    let m = common::smollm2();
    let mut hooks = row_hooks(&[control]);
    let mut set = HookSet::new();
    for h in hooks.iter_mut() {
        set.push(h);
    }
    let g = emo_model::generate::generate(&m.transformer, &[prompt.to_vec()], cfg, m.pad_token_id(), &mut set).unwrap();
    (g[0].tokens.clone(), g[0].stop)
}

fn collect(events: &[Event], id: u64) -> (Vec<u32>, Option<StopReason>) {
    let mut toks = Vec::new();
    let mut stop = None;
    for e in events {
        match e {
            Event::Token { id: i, token } if *i == id => toks.push(*token),
            Event::Finished { id: i, stop: s } if *i == id => stop = Some(*s),
            _ => {}
        }
    }
    (toks, stop)
}

#[test]
fn rows_joining_and_leaving_get_the_tokens_they_get_alone() {
    let m = common::smollm2();
    let p = prompts();
    let eos = m.eos_token_ids.clone();
    let plain = GenerationConfig { eos_token_ids: eos.clone(), ..GenerationConfig::greedy(24) };
    let paper = GenerationConfig { eos_token_ids: eos.clone(), max_new_tokens: 18, ..GenerationConfig::modulation() };
    let short = GenerationConfig { eos_token_ids: eos.clone(), ..GenerationConfig::greedy(5) };
    // (id, prompt, settings, edits, step at which it joins)
    let plan: Vec<(u64, usize, GenerationConfig, RowControl, usize)> = vec![
        (0, 0, plain.clone(), RowControl::none(), 0),
        (1, 1, paper.clone(), steer(1), 0),
        (2, 2, short.clone(), RowControl::none(), 3),
        (3, 3, plain.clone(), steer(2), 3),
        (4, 4, paper.clone(), RowControl::none(), 9),
        (5, 1, plain.clone(), RowControl::none(), 9),
    ];
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id());
    let mut events = Vec::new();
    let mut step = 0;
    let mut max_rows = 0;
    loop {
        let joining: Vec<BatchRequest> = plan
            .iter()
            .filter(|r| r.4 == step)
            .map(|r| BatchRequest { id: r.0, prompt: p[r.1].clone(), config: r.2.clone(), control: r.3.clone() })
            .collect();
        events.extend(batch.admit(joining).unwrap());
        max_rows = max_rows.max(batch.len());
        if batch.is_empty() && step > 9 {
            break;
        }
        events.extend(batch.step().unwrap());
        step += 1;
    }
    assert!(max_rows >= 4, "the batch held {max_rows} rows at most");
    let mut differs = 0;
    for (id, prompt, cfg, control, _) in &plan {
        let (tokens, stop) = collect(&events, *id);
        let (want, want_stop) = alone(&p[*prompt], cfg, control);
        assert_eq!(tokens, want, "sequence {id}");
        assert_eq!(stop, Some(want_stop), "sequence {id}");
        if !control.is_none() {
            let (unsteered, _) = alone(&p[*prompt], cfg, &RowControl::none());
            differs += (unsteered != want) as usize;
        }
    }
    assert_eq!(differs, 2, "each steered row should differ from its plain reply");
}

#[test]
fn a_cancelled_row_leaves_and_the_others_go_on() {
    let m = common::smollm2();
    let p = prompts();
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ignore_eos: true, ..GenerationConfig::greedy(12) };
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id());
    let reqs = (0..3).map(|i| BatchRequest { id: i, prompt: p[i as usize].clone(), config: cfg.clone(), control: RowControl::none() }).collect();
    let mut events = batch.admit(reqs).unwrap();
    events.extend(batch.step().unwrap());
    assert!(batch.cancel(1).unwrap());
    assert!(!batch.cancel(1).unwrap(), "cancelling twice is a no-op");
    assert_eq!(batch.ids(), vec![0, 2]);
    while !batch.is_empty() {
        events.extend(batch.step().unwrap());
    }
    for id in [0u64, 2] {
        let (tokens, stop) = collect(&events, id);
        assert_eq!(tokens, alone(&p[id as usize], &cfg, &RowControl::none()).0, "sequence {id}");
        assert_eq!(stop, Some(StopReason::Length));
    }
    assert_eq!(collect(&events, 1).0.len(), 2, "the cancelled row produced two tokens and stopped");
}

#[test]
fn sampling_is_reproducible_and_batch_invariant() {
    let m = common::smollm2();
    let p = prompts();
    let sampled = |seed| GenerationConfig {
        eos_token_ids: m.eos_token_ids.clone(),
        ignore_eos: true,
        sampling: Sampling { temperature: 0.9, top_k: 40, top_p: 0.95, seed },
        ..GenerationConfig::greedy(16)
    };
    let a = alone(&p[1], &sampled(11), &RowControl::none()).0;
    assert_eq!(a, alone(&p[1], &sampled(11), &RowControl::none()).0, "same seed, same tokens");
    assert_ne!(a, alone(&p[1], &sampled(12), &RowControl::none()).0, "another seed, other tokens");
    assert_ne!(a, alone(&p[1], &GenerationConfig { sampling: Sampling::greedy(), ..sampled(11) }, &RowControl::none()).0);
    // In a padded batch beside other rows, and in a continuous batch, the row draws the same tokens.
    let g =
        emo_model::generate::generate(&m.transformer, &[p[2].clone(), p[1].clone()], &sampled(11), m.pad_token_id(), &mut HookSet::new()).unwrap();
    assert_eq!(g[1].tokens, a);
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id());
    let mut events = batch.admit(vec![BatchRequest { id: 0, prompt: p[0].clone(), config: sampled(5), control: RowControl::none() }]).unwrap();
    events.extend(batch.step().unwrap());
    events.extend(batch.admit(vec![BatchRequest { id: 1, prompt: p[1].clone(), config: sampled(11), control: RowControl::none() }]).unwrap());
    while !batch.is_empty() {
        events.extend(batch.step().unwrap());
    }
    assert_eq!(collect(&events, 1).0, a);
}

#[test]
fn enqueued_prompts_prefill_in_chunks_beside_running_rows_and_get_the_tokens_they_get_alone() {
    let m = common::smollm2();
    let p = prompts();
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ignore_eos: true, ..GenerationConfig::greedy(10) };
    let controls = [RowControl::none(), steer(3), RowControl::none(), steer(4)];
    let shortest = p.iter().map(Vec::len).min().unwrap();
    // A budget below every prompt: each is run in chunks on its own state (steered rows too, whose edit
    // falls on the last prompt token, in the last chunk); a budget above two prompts batches short ones.
    for budget in [shortest / 3, 2 * p.iter().map(Vec::len).max().unwrap()] {
        let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id()).with_prefill_tokens(budget);
        let mut events = batch.admit(vec![BatchRequest { id: 9, prompt: p[4].clone(), config: cfg.clone(), control: RowControl::none() }]).unwrap();
        let reqs: Vec<BatchRequest> = (0..4)
            .map(|i| BatchRequest { id: i, prompt: p[i as usize].clone(), config: cfg.clone(), control: controls[i as usize].clone() })
            .collect();
        batch.enqueue(reqs).unwrap();
        assert_eq!(batch.pending(), 4);
        let mut steps = 0;
        while !batch.is_empty() {
            let out = batch.step().unwrap();
            // The running row gets its token at every step while the others prefill.
            if collect(&events, 9).0.len() < 10 {
                assert!(out.iter().any(|e| matches!(e, Event::Token { id: 9, .. })), "budget {budget}, step {steps}: row 9 waited");
            }
            events.extend(out);
            steps += 1;
        }
        if budget < shortest {
            assert!(steps > 10, "budget {budget}: prompts of {shortest}+ tokens took {steps} steps, so they ran in chunks");
        }
        for (id, control) in controls.iter().enumerate() {
            let (tokens, stop) = collect(&events, id as u64);
            assert_eq!(tokens, alone(&p[id], &cfg, control).0, "budget {budget}, sequence {id}");
            assert_eq!(stop, Some(StopReason::Length));
        }
    }
    // A queued request can be cancelled before its prompt ran.
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id()).with_prefill_tokens(4);
    batch.enqueue(vec![BatchRequest { id: 1, prompt: p[1].clone(), config: cfg.clone(), control: RowControl::none() }]).unwrap();
    batch.step().unwrap();
    assert!(batch.cancel(1).unwrap());
    assert!(batch.is_empty());
    // What would fail a shared step is refused before it is queued.
    let bad = |prompt: Vec<u32>| BatchRequest { id: 2, prompt, config: cfg.clone(), control: RowControl::none() };
    assert!(batch.enqueue(vec![bad(Vec::new())]).is_err());
    assert!(batch.enqueue(vec![bad(vec![u32::MAX])]).is_err());
    assert_eq!(batch.pending(), 0);
}

#[test]
fn a_long_prompt_yields_between_blocks_to_arriving_requests_and_nobody_s_tokens_change() {
    let m = common::smollm2();
    let p = prompts();
    let n_layers = m.transformer.config().n_layers;
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ignore_eos: true, ..GenerationConfig::greedy(6) };
    // A long prompt of three chunks of the budget (the last one shorter), steered, and a short prompt that fits
    // the budget.
    let long: Vec<u32> = p[1..].concat();
    let budget = p[0].len();
    let chunks = long.len().div_ceil(budget);
    assert!(chunks >= 3, "{} tokens in chunks of {budget}", long.len());
    let run = |short_at: Option<usize>| {
        let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id()).with_prefill_tokens(budget);
        batch.enqueue(vec![BatchRequest { id: 1, prompt: long.clone(), config: cfg.clone(), control: steer(5) }]).unwrap();
        let (mut events, mut steps, mut first_long) = (Vec::new(), 0, None);
        while !batch.is_empty() {
            if Some(steps) == short_at {
                batch.enqueue(vec![BatchRequest { id: 2, prompt: p[0].clone(), config: cfg.clone(), control: RowControl::none() }]).unwrap();
                // The step after it arrives starts it: its first token comes before the long chunk ends.
                let out = batch.step_until(&|| true).unwrap();
                assert!(out.iter().any(|e| matches!(e, Event::Token { id: 2, .. })), "the short request waited: {out:?}");
                assert_eq!(batch.pending(), 1, "the long prompt is still prefilling");
                events.extend(out);
            } else {
                // Always interrupted: a long prompt running alone advances one block per step.
                events.extend(batch.step_until(&|| true).unwrap());
            }
            steps += 1;
            if first_long.is_none() && !collect(&events, 1).0.is_empty() {
                first_long = Some(steps);
            }
        }
        (events, first_long.unwrap())
    };
    let (events, first) = run(None);
    assert_eq!(first, n_layers * chunks, "alone and always interrupted, each step runs one block of a chunk");
    assert_eq!(collect(&events, 1).0, alone(&long, &cfg, &steer(5)).0);
    // The short request arrives in the middle of the second chunk.
    let (events, _) = run(Some(n_layers + n_layers / 2));
    assert_eq!(collect(&events, 1).0, alone(&long, &cfg, &steer(5)).0, "the long prompt's tokens");
    assert_eq!(collect(&events, 2), (alone(&p[0], &cfg, &RowControl::none()).0, Some(StopReason::Length)), "the short request's tokens");
}

#[test]
fn regrouped_rows_attend_to_what_they_attended_to_even_with_padding_between_their_slots() {
    let m = common::smollm2();
    let p = prompts();
    let n_layers = m.transformer.config().n_layers;
    let (a, b) = (&p[1], &p[2]);
    assert!(a.len() - 4 < b.len() - 6, "row 0's second chunk must be the shorter");
    // Two chunks, each left-padded: row 0 gets padding between its first and second chunk's slots.
    let prefilled = || {
        let mut state = DecodeState::new(&[a.len() as i64, b.len() as i64], n_layers, tch::Device::Cpu, true);
        for chunk in [vec![a[..4].to_vec(), b[..6].to_vec()], vec![a[4..].to_vec(), b[6..].to_vec()]] {
            let (ids, valid, _) = left_pad(&chunk, m.pad_token_id()).unwrap();
            let _ = m.transformer.forward_chunk(&ids, &valid, &mut state, &mut HookSet::new(), LogitsFor::Skip).unwrap();
        }
        state
    };
    let step = |state: &mut DecodeState, tokens: &[i64]| {
        let n = tokens.len() as i64;
        let ones = Tensor::ones([n, 1], (Kind::Bool, tch::Device::Cpu));
        m.transformer.forward_chunk(&Tensor::from_slice(tokens).view([n, 1]), &ones, state, &mut HookSet::new(), LogitsFor::Last).unwrap()
    };
    let mut kept = prefilled();
    let expected = step(&mut kept, &[42, 43]);
    // The rows swapped, so that each lands where the other was.
    let mut regrouped = DecodeState::regroup(vec![(prefilled(), vec![1, 0])], 4).unwrap();
    let got = step(&mut regrouped, &[43, 42]);
    let diff = (got - expected.index_select(0, &Tensor::from_slice(&[1i64, 0]))).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits after the regroup differ by {diff}");
}

#[test]
fn finished_rows_leave_a_generate_batch_and_the_others_keep_their_tokens_and_edits() {
    let m = common::smollm2();
    let p = prompts();
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ..GenerationConfig::greedy(40) };
    let controls: Vec<RowControl> = (0..p.len()).map(|i| if i % 2 == 1 { steer(i as i64) } else { RowControl::none() }).collect();
    let refs: Vec<&RowControl> = controls.iter().collect();
    let mut hooks = row_hooks(&refs);
    let point = HookPoint::ResidPost(3);
    let mut cap = Capture::new([point], Positions::Generated);
    let mut set = HookSet::new();
    for h in hooks.iter_mut() {
        set.push(h);
    }
    set.push(&mut cap);
    let batched = emo_model::generate::generate(&m.transformer, &p, &cfg, m.pad_token_id(), &mut set).unwrap();
    drop(set);
    let lens: Vec<usize> = batched.iter().map(|g| g.tokens.len()).collect();
    assert!(lens.iter().min() < lens.iter().max(), "the replies should end at different lengths: {lens:?}");
    for (i, g) in batched.iter().enumerate() {
        assert_eq!((g.tokens.clone(), g.stop), alone(&p[i], &cfg, &controls[i]), "row {i}");
    }
    // Every generated token a row was fed was seen under its own row id; a batch that kept its finished rows
    // would have run every row at every decoding step.
    let rows = Vec::<i64>::try_from(&cap.get(point).unwrap().rows).unwrap();
    let seen: Vec<usize> = (0..p.len()).map(|i| rows.iter().filter(|&&r| r == i as i64).count()).collect();
    let fed: Vec<usize> = batched.iter().map(|g| if g.stop == StopReason::Eos { g.tokens.len() } else { g.tokens.len() - 1 }).collect();
    let steps = *fed.iter().max().unwrap();
    for i in 0..p.len() {
        assert!(seen[i] >= fed[i] && seen[i] <= steps, "row {i}: seen at {} steps, fed {} tokens, {steps} steps run", seen[i], fed[i]);
    }
    assert!(seen.iter().any(|&s| s < steps), "no row left the batch: seen {seen:?}, {steps} steps");
}

/// A readout at two late layers of SmolLM2 (30 layers): three random unit directions.
fn probe() -> (Readout, Tensor) {
    tch::manual_seed(11);
    let m = Tensor::randn([3, 576], (Kind::Float, tch::Device::Cpu));
    let m = &m / m.norm_scalaropt_dim(2, [1], true);
    let r = Readout::new(vec![(HookPoint::ResidPost(20), m.shallow_clone()), (HookPoint::ResidPost(24), m.shallow_clone())]).unwrap();
    (r, m)
}

/// The scores of the states that chose `reply` after `prompt`, from one plain forward over both
/// (independent of the readout hook): mean over the two layers of `m · h` at positions plen-1 .. plen-1+n.
fn reference_scores(prompt: &[u32], reply: &[u32], m: &Tensor) -> Vec<Vec<f32>> {
    let model = common::smollm2();
    let seq: Vec<u32> = prompt.iter().chain(reply).copied().collect();
    let points = [HookPoint::ResidPost(20), HookPoint::ResidPost(24)];
    let (_, cache) = model.run_with_cache(vec![seq], |p| points.contains(&p)).unwrap();
    (0..reply.len())
        .map(|i| {
            let pos = (prompt.len() - 1 + i) as i64;
            let s: Tensor =
                points.iter().map(|&p| m.mv(&cache.require(p).unwrap().get(0).get(pos).to_kind(Kind::Float))).reduce(|a, b| a + b).unwrap();
            Vec::<f32>::try_from(s / 2.0).unwrap()
        })
        .collect()
}

fn readouts_of(events: &[Event], id: u64) -> Vec<Vec<f32>> {
    let scores = |e: &Event| match e {
        Event::Readout { id: i, scores } if *i == id => Some(scores.clone()),
        _ => None,
    };
    events.iter().filter_map(scores).collect()
}

#[test]
fn readouts_score_the_state_that_chose_each_token_and_guards_act_only_from_where_they_fire() {
    let m = common::smollm2();
    let p = prompts();
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ignore_eos: true, ..GenerationConfig::greedy(14) };
    let (readout, matrix) = probe();
    let read = RowControl { readout: Some(readout.clone()), ..RowControl::none() };
    // Where a guard would fire in the plain reply of prompt 2: the first score j and token k >= 1 whose score
    // is above every earlier one of that score, with tokens left after it.
    let (plain2, _) = alone(&p[2], &cfg, &RowControl::none());
    let plain_scores = reference_scores(&p[2], &plain2, &matrix);
    let series = |j: usize| -> Vec<f32> { plain_scores.iter().map(|s| s[j]).collect() };
    let max_before = |s: &[f32], k: usize| s[..k].iter().cloned().fold(f32::MIN, f32::max);
    let (j, k) = (0..3)
        .flat_map(|j| (1..plain2.len() - 3).map(move |k| (j, k)))
        .find(|&(j, k)| series(j)[k] > max_before(&series(j), k) + 0.05)
        .unwrap_or_else(|| panic!("no rising score in {plain_scores:?}"));
    let sj = series(j);
    let threshold = f64::from((sj[k] + max_before(&sj, k)) / 2.0);
    let action = steer(7).edits[0].1.clone();
    let guard = |threshold: f64| RowControl {
        guard: Some(Guard { score: j, threshold, action: vec![(Positions::Generated, action.clone())], hold: GuardHold::Rest }),
        ..read.clone()
    };
    // Row 0 plain, row 1 a guard that never fires, row 2 one that fires at k, row 3 a long prompt in chunks
    // that joins later; all read.
    let long: Vec<u32> = p[1..4].concat();
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id()).with_prefill_tokens(p[2].len() + 2);
    let mut events = batch
        .admit(vec![
            BatchRequest { id: 0, prompt: p[0].clone(), config: cfg.clone(), control: read.clone() },
            BatchRequest { id: 2, prompt: p[2].clone(), config: cfg.clone(), control: guard(threshold) },
        ])
        .unwrap();
    let mut step = 0;
    while !batch.is_empty() {
        if step == 2 {
            let join = |id, prompt: &Vec<u32>, control: RowControl| BatchRequest { id, prompt: prompt.clone(), config: cfg.clone(), control };
            batch.enqueue(vec![join(1, &p[1], guard(1e9)), join(3, &long, read.clone())]).unwrap();
        }
        events.extend(batch.step().unwrap());
        step += 1;
    }
    let close = |got: &[Vec<f32>], want: &[Vec<f32>], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: one readout per token");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{what}, token {i}: {g:?} against {w:?}");
            }
        }
    };
    for (id, prompt) in [(0u64, &p[0]), (1, &p[1]), (3, &long)] {
        let (tokens, _) = collect(&events, id);
        assert_eq!(tokens, alone(prompt, &cfg, &RowControl::none()).0, "sequence {id}: reading (and a guard that never fires) changes nothing");
        close(&readouts_of(&events, id), &reference_scores(prompt, &tokens, &matrix), &format!("sequence {id}"));
    }
    assert!(!events.iter().any(|e| matches!(e, Event::Guard { id: 0 | 1 | 3, .. })));
    // The guard fires once its score crosses, at token k: tokens up to k are the plain ones, and the rest are
    // those of the same steering applied from token k's position on.
    let fired: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Guard { id: 2, .. })).collect();
    assert_eq!(
        fired,
        vec![&Event::Guard { id: 2, active: true, at_token: k + 1 }],
        "crossing at token {k} of score {j}: {sj:?} (threshold {threshold})"
    );
    let (guarded, _) = collect(&events, 2);
    assert_eq!(guarded[..=k], plain2[..=k]);
    let from_k = RowControl::none().with(Positions::Range((p[2].len() + k) as i64, 1 << 40), action.clone());
    assert_eq!(guarded, alone(&p[2], &cfg, &from_k).0, "the guarded reply is the reply steered from token {k}'s position on");
    assert_ne!(guarded, plain2, "the guard's steering changes the reply");
    // Until it fired the readouts are the plain reply's.
    close(&readouts_of(&events, 2)[..=k], &reference_scores(&p[2], &plain2, &matrix)[..=k], "guarded sequence");
    // A guard without a readout score to watch, or with a NaN threshold, is refused before it runs.
    let mut bad = |control: RowControl| batch.enqueue(vec![BatchRequest { id: 9, prompt: p[0].clone(), config: cfg.clone(), control }]);
    assert!(bad(RowControl { readout: None, ..guard(1.0) }).unwrap_err().to_string().contains(&format!("guard watches score {j}")));
    assert!(bad(guard(f64::NAN)).unwrap_err().to_string().contains("not a finite number"));
}

#[test]
fn generate_reads_every_row_through_finished_rows_leaving() {
    let m = common::smollm2();
    let p = prompts();
    let (readout, matrix) = probe();
    // Short budgets end some rows early, so the batch regroups while the others go on.
    let cfg = GenerationConfig { eos_token_ids: m.eos_token_ids.clone(), ..GenerationConfig::greedy(12) };
    let prompts = vec![p[0].clone(), p[3].clone(), p[4].clone()];
    let mut readouts = Readouts::new(vec![Some(readout.clone()), None, Some(readout)]);
    let out = emo_model::generate::generate(&m.transformer, &prompts, &cfg, m.pad_token_id(), &mut HookSet::new().with(&mut readouts)).unwrap();
    let forwards = readouts.take().unwrap();
    for (row, g) in out.iter().enumerate() {
        let got: Vec<Vec<f32>> = forwards.iter().take(g.tokens.len()).map(|f| f[row].clone().unwrap_or_default()).collect();
        if row == 1 {
            assert!(got.iter().all(Vec::is_empty), "a row without a readout reads nothing");
            continue;
        }
        let want = reference_scores(&prompts[row], &g.tokens, &matrix);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-3 * (1.0 + y.abs())), "row {row}, token {i}: {a:?} against {b:?}");
        }
    }
    assert!(Readout::new(vec![]).is_err());
    assert!(Readout::new(vec![
        (HookPoint::ResidPost(1), Tensor::zeros([3, 576], (Kind::Float, tch::Device::Cpu))),
        (HookPoint::ResidPost(2), Tensor::zeros([2, 576], (Kind::Float, tch::Device::Cpu)))
    ])
    .is_err());
}
