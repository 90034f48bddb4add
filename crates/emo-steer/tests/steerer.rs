//! `Steerer` on the real default model: its settings are checked before anything runs, and the paper's
//! defaults are what it starts from.
use emo_steer::{ChatMessage, Emotion, EmotionDirections, GenerationConfig, LoadOptions, Model, Steerer};
use tch::{Device, Kind, Tensor};

fn directions(n_layers: i64, d_model: i64) -> EmotionDirections {
    tch::manual_seed(11);
    let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2, [-1].as_slice(), true);
    EmotionDirections {
        resid_mid: unit(Tensor::randn([6, n_layers, d_model], (Kind::Float, Device::Cpu))),
        resid_post: unit(Tensor::randn([6, n_layers, d_model], (Kind::Float, Device::Cpu))),
    }
}

#[test]
fn settings_are_checked_and_default_to_the_papers() {
    let model =
        Model::load("smollm2-135m", LoadOptions::new(Device::Cpu, Kind::Float)).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh` first)"));
    let e = Steerer::new(&model, directions(24, 896)).err().unwrap().to_string();
    assert!(e.contains("[24 layers, 896]") && e.contains("30 layers of width 576"), "{e}");

    let steerer = Steerer::new(&model, directions(30, 576)).unwrap();
    // The paper's layers 11-20 of 28, scaled to 30; alpha 8 at hook_resid_post, one edit per layer.
    let edit = steerer.edit(Emotion::Fear).unwrap();
    let points: Vec<String> = edit.edits.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(points.first().map(String::as_str), Some("blocks.12.hook_resid_post"));
    assert_eq!(points.len(), 10);

    let msg = [ChatMessage::user("The train was late again.")];
    let e = steerer.clone().layers(25, 30).emotion(Emotion::Fear).chat(&msg).unwrap_err().to_string();
    assert!(e.contains("layer range 25..=30") && e.contains("0..30"), "{e}");
    let e = steerer.clone().alpha(f64::NAN).emotion(Emotion::Fear).chat(&msg).unwrap_err().to_string();
    assert!(e.contains("alpha NaN"), "{e}");

    // No emotion: plain generation with the steering decoding.
    let gen = GenerationConfig { max_new_tokens: 8, ..GenerationConfig::steering() };
    let plain = model.generate_chat(&[msg.to_vec()], &gen, &mut emo_model::HookSet::new()).unwrap();
    assert_eq!(steerer.clone().generation(gen.clone()).chat(&msg).unwrap(), plain[0].text);
    assert_ne!(steerer.generation(gen).emotion(Emotion::Fear).chat(&msg).unwrap(), plain[0].text);
}

#[test]
fn a_traced_reply_is_the_reply_with_the_scores_of_the_states_that_chose_its_tokens() {
    let model = Model::load("smollm2-135m", LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let dirs = directions(30, 576);
    let gen = GenerationConfig { max_new_tokens: 8, ..GenerationConfig::steering() };
    let steerer = Steerer::new(&model, dirs.clone()).unwrap().generation(gen.clone()).emotion(Emotion::Sadness).alpha(4.0);
    let msg = [ChatMessage::user("The train was late again.")];
    let (reply, trace) = steerer.chat_traced(&msg).unwrap();
    assert_eq!(reply, steerer.chat(&msg).unwrap(), "reading changes nothing");
    assert_eq!(trace.tokens.concat(), reply, "the pieces are the reply");
    // The reference layers: 21-25 of 28, scaled to SmolLM2's 30.
    let tracer = steerer.tracer().unwrap();
    assert_eq!(tracer.layers(), (23, 27));
    // The steered state, read independently: the same steering through the plain hooks, cached.
    let prompt = model.encode_chat(&msg).unwrap();
    let tokens = model
        .generate_ids(std::slice::from_ref(&prompt), &gen, &mut emo_model::HookSet::new().with(&mut steerer.hook(&[Some(Emotion::Sadness)]).unwrap()))
        .unwrap()[0]
        .tokens
        .clone();
    assert_eq!(trace.scores.len(), tokens.len());
    for (i, scores) in trace.scores.iter().enumerate() {
        // Token i was chosen at the state of the sequence's position plen-1+i, under the same edits: in one
        // forward over the sequence, those of the last prompt token and every token after it.
        let seq: Vec<u32> = prompt.iter().chain(&tokens[..i]).copied().collect();
        let from_last_prompt = emo_model::Positions::Range(prompt.len() as i64 - 1, 1 << 40);
        let mut hook = steerer.clone().positions(from_last_prompt).hook(&[Some(Emotion::Sadness)]).unwrap();
        let (_, cache) = model
            .run_with_cache_and_hooks(
                vec![seq.clone()],
                |p| matches!(p, emo_model::HookPoint::ResidPost(23..=27)),
                &mut emo_model::HookSet::new().with(&mut hook),
            )
            .unwrap();
        for (j, e) in Emotion::ALL.iter().enumerate() {
            let want: f64 = (23..=27)
                .map(|l| {
                    let h = cache.require(emo_model::HookPoint::ResidPost(l)).unwrap().get(0).get(seq.len() as i64 - 1);
                    h.dot(&dirs.resid_post.get(e.index() as i64).get(l as i64)).double_value(&[])
                })
                .sum::<f64>()
                / 5.0;
            assert!((f64::from(scores[j]) - want).abs() <= 1e-3 * (1.0 + want.abs()), "token {i}, {e}: {} against {want}", scores[j]);
        }
    }
    let mean = trace.mean();
    assert_eq!(mean.len(), 6);
    assert!(trace.top().is_some());
}
