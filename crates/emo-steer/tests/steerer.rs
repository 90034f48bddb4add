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
