//! One model across several devices, tested without a GPU: the default model placed over `cpu,cpu` (two
//! entries that are the same device) runs every path of a split model — the residual, positions and masks
//! moved at the boundary, each layer's KV cache made on its device, hooks given contexts on their layer's
//! device, the head on the last device — and must give exactly what the one-device model gives: logits,
//! cached activations, hooked forwards, generation with a KV cache, prefix branching and continuous batching.
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use emo_model::device::parse_devices;
use emo_model::{
    BatchRequest, ChatMessage, ContinuousBatch, Edit, Event, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, LoadOptions,
    LogitsFor, Model, Positions, RowControl,
};
use tch::{Device, Kind, Tensor};

/// SmolLM2 placed over `cpu,cpu`.
fn split() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let opts = LoadOptions::new(Device::Cpu, Kind::Float).devices(vec![Device::Cpu, Device::Cpu]);
        Model::load("smollm2-135m", opts).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh --test` first)"))
    })
}

/// The largest difference, equal values (masked scores' -inf too) counting 0.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    f64::try_from((&a - &b).abs().masked_fill(&a.eq_tensor(&b), 0.0).max()).unwrap()
}

/// Rows of different lengths, so the batch is left-padded.
fn rows() -> Vec<Vec<u32>> {
    let m = common::smollm2();
    common::conversations().iter().take(3).map(|c| m.encode_chat(c).unwrap()).collect()
}

fn unit(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let v = Tensor::randn([n], (Kind::Float, Device::Cpu));
    &v / v.norm()
}

#[test]
fn the_layers_are_split_in_halves() {
    let t = &split().transformer;
    let p = t.placement();
    assert_eq!(p.devices(), &[Device::Cpu, Device::Cpu]);
    assert_eq!(p.ranges(), &[0..15, 15..30], "{p}");
    assert!(p.is_split());
    assert!(!common::smollm2().transformer.placement().is_split());
    // The same weights; the tied unembedding on the "other" entry is the embedding itself (one device: no copy).
    assert_eq!(t.weight_bytes(), common::smollm2().transformer.weight_bytes());
    assert_eq!(max_diff(&t.unembed(), &common::smollm2().transformer.unembed()), 0.0);
}

#[test]
fn a_forward_gives_the_same_logits() {
    let (one, two) = (common::smollm2(), split());
    let rows = rows();
    let a = one.transformer.forward_rows(&rows, one.pad_token_id(), &mut HookSet::new(), LogitsFor::All).unwrap();
    let b = two.transformer.forward_rows(&rows, two.pad_token_id(), &mut HookSet::new(), LogitsFor::All).unwrap();
    assert_eq!(b.device(), two.transformer.device(), "logits come back on the first device");
    assert_eq!(max_diff(&a, &b), 0.0);
    let a = one.transformer.forward_rows(&rows, one.pad_token_id(), &mut HookSet::new(), LogitsFor::Last).unwrap();
    let b = two.transformer.forward_rows(&rows, two.pad_token_id(), &mut HookSet::new(), LogitsFor::Last).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn run_with_cache_captures_the_same_activations() {
    let (one, two) = (common::smollm2(), split());
    let text = "The meeting moved to Friday, and nobody told me.";
    let (la, ca) = one.run_with_cache(text, |_| true).unwrap();
    let (lb, cb) = two.run_with_cache(text, |_| true).unwrap();
    assert_eq!(max_diff(&la, &lb), 0.0);
    let points: Vec<HookPoint> = ca.points().collect();
    assert_eq!(points, cb.points().collect::<Vec<_>>());
    assert!(points.len() > 30 * 20, "every point of every layer is cached ({} points)", points.len());
    for p in points {
        assert_eq!(max_diff(ca.require(p).unwrap(), cb.require(p).unwrap()), 0.0, "{p}");
    }
    // Analyses that stack layers from both devices.
    let (sa, _) = ca.accumulated_resid(None, true).unwrap();
    let (sb, _) = cb.accumulated_resid(None, true).unwrap();
    assert_eq!(max_diff(&sa, &sb), 0.0);
    let (lens_a, _) = ca.logit_lens(&one.transformer, -1, false).unwrap();
    let (lens_b, _) = cb.logit_lens(&two.transformer, -1, false).unwrap();
    assert_eq!(max_diff(&lens_a, &lens_b), 0.0);
}

/// Edits on both sides of the boundary, per-row interventions and a closure that uses the context's masks.
fn hooked_logits(m: &Model, devices_seen: &mut Vec<(HookPoint, Device)>) -> Tensor {
    let d = m.transformer.config().d_model as i64;
    let per_row = vec![
        Intervention::none().with(HookPoint::MlpPost(5), Edit::Zero(vec![3, 17, 400])),
        Intervention::none().with(HookPoint::ResidPost(20), Edit::AddRms(unit(d, 1), 6.0)),
        Intervention::none().with(HookPoint::ResidPost(10), Edit::AddRms(unit(d, 2), 4.0)).with(HookPoint::AttnZ(16), Edit::Zero(vec![1, 2])),
    ];
    let mut edits = Interventions::new(per_row, Positions::All);
    let t = &m.transformer;
    let mut hooks = HookSet::new()
        .with(&mut edits)
        .on(HookPoint::MlpPost(22), |act, ctx| {
            // Halve every neuron at the last prompt token: the mask comes from the context, on the act's device.
            let last = ctx.mask(&Positions::LastPrompt).unsqueeze(-1).to_kind(act.kind());
            Ok(Some(act * (1.0 - 0.5 * last)))
        })
        .on(HookPoint::ResidPre(3), |act, _| {
            devices_seen.push((HookPoint::ResidPre(3), act.device()));
            Ok(None)
        });
    t.forward_rows(&rows(), m.pad_token_id(), &mut hooks, LogitsFor::All).unwrap()
}

#[test]
fn a_hooked_forward_with_edits_gives_the_same_logits() {
    let (one, two) = (common::smollm2(), split());
    let mut seen = Vec::new();
    let a = hooked_logits(one, &mut seen);
    let b = hooked_logits(two, &mut seen);
    assert_eq!(max_diff(&a, &b), 0.0);
    let plain = one.transformer.forward_rows(&rows(), one.pad_token_id(), &mut HookSet::new(), LogitsFor::All).unwrap();
    assert!(max_diff(&a, &plain) > 1.0, "the edits change the logits");
    assert_eq!(seen.len(), 2);
}

#[test]
fn hooks_see_activations_on_their_layers_device() {
    let m = split();
    let t = &m.transformer;
    let seen: Rc<RefCell<Vec<(HookPoint, Device, Device)>>> = Rc::default();
    {
        let points =
            [HookPoint::Embed, HookPoint::ResidPost(0), HookPoint::ResidPost(14), HookPoint::ResidPre(15), HookPoint::AttnZ(29), HookPoint::LnFinal];
        let mut hooks = HookSet::new();
        for p in points {
            let seen = Rc::clone(&seen);
            hooks = hooks.on(p, move |act, ctx| {
                seen.borrow_mut().push((p, act.device(), ctx.positions.device()));
                Ok(None)
            });
        }
        let _ = t.forward_rows(&rows(), m.pad_token_id(), &mut hooks, LogitsFor::Last).unwrap();
    }
    let seen = seen.take();
    assert_eq!(seen.len(), 6);
    for (p, act, pos) in seen {
        let want = match p.layer() {
            Some(l) => t.layer_device(l),
            None if p == HookPoint::Embed => t.device(),
            None => t.unembed_device(),
        };
        assert_eq!((act, pos), (want, want), "{p}");
    }
    assert_eq!(t.layer_device(14), t.placement().devices()[0]);
    assert_eq!(t.placement().stage_of(15), 1);
}

#[test]
fn greedy_generation_with_the_kv_cache_gives_the_same_tokens() {
    let (one, two) = (common::smollm2(), split());
    let convs = common::conversations();
    let cfg = GenerationConfig::greedy(24);
    let a = one.generate_chat(&convs, &cfg, &mut HookSet::new()).unwrap();
    let b = two.generate_chat(&convs, &cfg, &mut HookSet::new()).unwrap();
    let ta: Vec<_> = a.iter().map(|r| (r.generated.tokens.clone(), r.generated.stop)).collect();
    let tb: Vec<_> = b.iter().map(|r| (r.generated.tokens.clone(), r.generated.stop)).collect();
    assert_eq!(ta, tb);
    assert!(ta.iter().any(|(t, _)| t.len() >= 10));
    // Steered at layers on both devices, with the paper's processors: the same again, and not the plain reply.
    let d = one.transformer.config().d_model as i64;
    let steer = |m: &Model| {
        let edits = (10..20).fold(Intervention::none(), |i, l| i.with(HookPoint::ResidPost(l), Edit::AddRms(unit(d, 7), 6.0)));
        let mut hook = Interventions::all_rows(edits, Positions::LastPromptAndGenerated);
        let cfg = GenerationConfig { max_new_tokens: 24, ..GenerationConfig::steering() };
        let replies = m.generate_chat(&convs, &cfg, &mut HookSet::new().with(&mut hook)).unwrap();
        replies.into_iter().map(|r| r.generated.tokens).collect::<Vec<_>>()
    };
    let (sa, sb) = (steer(one), steer(two));
    assert_eq!(sa, sb);
    assert_ne!(sa, ta.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(), "steering changes the replies");
}

#[test]
fn prefix_branching_gives_the_same_logits() {
    let (one, two) = (common::smollm2(), split());
    let prompts = rows();
    let d = one.transformer.config().d_model as i64;
    // Rows starting in the first half, at the boundary and in the second half (the chunk then starts on the
    // second device from the prefix's clean residual).
    let run = |m: &Model, layer: usize| {
        let mut prefix = m.transformer.prefill_prefix(&prompts, m.pad_token_id()).unwrap();
        let rows: Vec<Intervention> = (0..6)
            .map(|k| match k % 3 {
                0 => Intervention::none().with(HookPoint::MlpPost(layer), Edit::Zero(vec![k, 100 + k])),
                1 => Intervention::none().with(HookPoint::ResidPost(layer), Edit::AddRms(unit(d, k), 5.0)),
                _ => Intervention::none().with(HookPoint::AttnZ(layer), Edit::Zero(vec![0, 3])),
            })
            .collect();
        let which: Vec<usize> = (0..6).map(|k| k % prompts.len()).collect();
        let mut edits = Interventions::new(rows, Positions::LastPrompt);
        let logits = m.transformer.forward_branches(&mut prefix, &which, &mut HookSet::new().with(&mut edits), LogitsFor::Last).unwrap();
        let clean = prefix.clean(HookPoint::ResidPost(29)).unwrap().shallow_clone();
        (logits, clean)
    };
    for layer in [4, 15, 22] {
        let (la, ca) = run(one, layer);
        let (lb, cb) = run(two, layer);
        assert_eq!(max_diff(&la, &lb), 0.0, "layer {layer}");
        assert_eq!(max_diff(&ca, &cb), 0.0, "layer {layer}");
    }
}

fn batch_events(m: &Model, prefill_tokens: usize) -> Vec<Event> {
    let d = m.transformer.config().d_model as i64;
    let prompts: Vec<Vec<u32>> = ["Hi", "Name three colours.", "Write one sentence about the sea and the wind.", "What is 2 + 2?"]
        .iter()
        .map(|p| m.encode_chat(&[ChatMessage::user(*p)]).unwrap())
        .collect();
    let eos = m.eos_token_ids.clone();
    let plain = GenerationConfig { eos_token_ids: eos.clone(), ..GenerationConfig::greedy(14) };
    let paper = GenerationConfig { eos_token_ids: eos, max_new_tokens: 10, ..GenerationConfig::modulation() };
    let steer = {
        let edits = (12..18).fold(Intervention::none(), |i, l| i.with(HookPoint::ResidPost(l), Edit::AddRms(unit(d, 3), 8.0)));
        RowControl::none().with(Positions::LastPromptAndGenerated, edits)
    };
    // (id, prompt, settings, edits, step at which it joins)
    let plan =
        [(0u64, 0, &plain, RowControl::none(), 0), (1, 1, &paper, steer.clone(), 0), (2, 2, &plain, steer, 2), (3, 3, &paper, RowControl::none(), 5)];
    let mut batch = ContinuousBatch::new(&m.transformer, m.pad_token_id()).with_prefill_tokens(prefill_tokens);
    let mut events = Vec::new();
    // A prompt fed in chunks may run one block per step while other rows decode: many steps.
    for step in 0..5000 {
        let joining: Vec<BatchRequest> = plan
            .iter()
            .filter(|r| r.4 == step)
            .map(|r| BatchRequest { id: r.0, prompt: prompts[r.1].clone(), config: r.2.clone(), control: r.3.clone() })
            .collect();
        batch.enqueue(joining).unwrap();
        events.extend(batch.step().unwrap());
        if batch.is_empty() && batch.pending() == 0 && step > 5 {
            break;
        }
    }
    events
}

#[test]
fn the_continuous_batcher_gives_the_same_events() {
    let (one, two) = (common::smollm2(), split());
    // Prompts fed in short chunks: a chunk pauses between blocks, on either side of the boundary.
    for prefill in [8, 512] {
        let a = batch_events(one, prefill);
        let b = batch_events(two, prefill);
        let tokens = a.iter().filter(|e| matches!(e, Event::Token { .. })).count();
        assert!(tokens >= 30, "{tokens} tokens");
        // Where a long prompt's chunk pauses depends on timing, so compare each sequence, not the interleaving.
        for id in 0..4 {
            assert_eq!(per_sequence(&a, id), per_sequence(&b, id), "sequence {id}, prefill budget {prefill}");
        }
    }
}

fn per_sequence(events: &[Event], id: u64) -> (Vec<u32>, String) {
    let mut tokens = Vec::new();
    let mut stop = String::new();
    for e in events {
        match e {
            Event::Token { id: i, token } if *i == id => tokens.push(*token),
            Event::Finished { id: i, stop: s } if *i == id => stop = format!("{s:?}"),
            _ => {}
        }
    }
    assert!(!stop.is_empty(), "sequence {id} finished");
    (tokens, stop)
}

#[test]
fn a_bad_device_list_is_named() {
    assert_eq!(parse_devices("cpu,cpu").unwrap(), vec![Device::Cpu, Device::Cpu]);
    assert_eq!(parse_devices("cpu").unwrap(), vec![Device::Cpu]);
    assert_eq!(parse_devices(" cpu , cpu ").unwrap(), vec![Device::Cpu, Device::Cpu]);
    let auto = parse_devices("auto").unwrap();
    let gpus = tch::Cuda::device_count() as usize;
    assert_eq!(auto, if gpus == 0 { vec![Device::Cpu] } else { (0..gpus).map(Device::Cuda).collect() });
    let err = parse_devices("cpu,tpu").unwrap_err().to_string();
    assert!(err.contains("`tpu`") && err.contains("cpu,tpu"), "{err}");
    let err = parse_devices("cpu,,cpu").unwrap_err().to_string();
    assert!(err.contains("entry 2 is empty"), "{err}");
    let err = parse_devices("cpu,auto").unwrap_err().to_string();
    assert!(err.contains("auto"), "{err}");
    let err = parse_devices(&format!("cpu,cuda:{}", gpus + 3)).unwrap_err().to_string();
    assert!(err.contains(&format!("CUDA device {}", gpus + 3)), "{err}");
    // Loading names the bad entry too, before any weight is read.
    let opts = LoadOptions::new(Device::Cpu, Kind::Float).devices(vec![Device::Cpu, Device::Cuda(gpus + 3)]);
    let err = Model::load("smollm2-135m", opts).err().expect("no such GPU").to_string();
    assert!(err.contains(&format!("CUDA device {}", gpus + 3)), "{err}");
}

#[test]
fn gemma_placed_over_two_devices_gives_the_same_logits() {
    // Sliding-window masks, Gemma 3's local rotation and a tied unembedding on the last device.
    let opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let one = Model::load("gemma-3-270m", opts.clone()).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh --test` first)"));
    let two = Model::load("gemma-3-270m", opts.devices(vec![Device::Cpu, Device::Cpu])).unwrap();
    assert!(two.transformer.placement().is_split());
    assert_eq!(two.transformer.placement().ranges()[0].end, one.transformer.config().n_layers / 2);
    let window = one.transformer.config().sliding_window.expect("Gemma 3 has local layers");
    let text: String = (0..400).map(|i| format!("word{i} ")).collect();
    let ids = vec![one.tokenizer.encode(&text, true).unwrap(), one.tokenizer.encode("A short one.", true).unwrap()];
    assert!(ids[0].len() > window, "longer than the local window ({} tokens, window {window})", ids[0].len());
    let a = one.transformer.forward_rows(&ids, one.pad_token_id(), &mut HookSet::new(), LogitsFor::Last).unwrap();
    let b = two.transformer.forward_rows(&ids, two.pad_token_id(), &mut HookSet::new(), LogitsFor::Last).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    let cfg = GenerationConfig { ignore_eos: true, ..GenerationConfig::greedy(8) };
    let ga = one.generate_ids(&ids, &cfg, &mut HookSet::new()).unwrap();
    let gb = two.generate_ids(&ids, &cfg, &mut HookSet::new()).unwrap();
    assert_eq!(ga, gb);
}
