//! The interpretability researcher's three daily tasks, each in at most three statements, printed as one JSON
//! line to compare with Hugging Face hooks on the same ids (tests/interp_basics.rs does, in every test run):
//! cache a site, zero-ablate a neuron and read the logits, steer generation with a vector.
//!
//! `cargo run --release --example interp_basics [-- DEVICE]` (cpu by default, or cuda / cuda:N).
use emotion_circuits::prelude::*;
use serde_json::json;

const PROMPT: &str = "The meeting moved to Friday.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = emotion_circuits::model::device::parse_device(&std::env::args().nth(1).unwrap_or_else(|| "cpu".into()))?;
    let model = Model::load("smollm2-135m", LoadOptions::new(device, Kind::Float))?;
    let ids = model.to_tokens(PROMPT)?; // no chat template: the text as Hugging Face's tokenizer(text) gives it

    // 1. Cache a site (and the attention pattern of layer 3).
    let (_, cache) = model.run_with_cache(PROMPT, |p| p == HookPoint::ResidPost(10) || p == HookPoint::AttnPattern(3))?;
    let resid = cache.by_name("blocks.10.hook_resid_post")?.get(0).get(-1); // [d_model], last token

    // 2. Zero-ablate neuron 123 of layer 5 and read the last position's logits.
    let mut ablate = Interventions::all_rows(Intervention::zero(HookPoint::MlpPost(5), [123]), Positions::All);
    let logits = model.run_with_hooks(PROMPT, &mut HookSet::new().with(&mut ablate))?.get(0).get(-1);

    // 3. Steer generation with a vector: "I love" - "I hate" (ActAdd's pair) at the residual entering layer 6,
    //    added at the last prompt token and every generated one.
    let (_, pair) = model.run_with_cache(["I love", "I hate"], |p| p == HookPoint::ResidPre(6))?;
    let v = pair.at("resid_pre", 6)?.get(0).get(-1) - pair.at("resid_pre", 6)?.get(1).get(-1);
    let mut steer = Interventions::all_rows(Intervention::add(HookPoint::ResidPre(6), v), Positions::LastPromptAndGenerated);
    let steered = model.generate_ids(&ids, &GenerationConfig::greedy(20), &mut HookSet::new().with(&mut steer))?;

    let (top, top_ids) = logits.topk(5, -1, true, true);
    let top: Vec<(i64, f32)> = Vec::<i64>::try_from(&top_ids)?.into_iter().zip(Vec::<f32>::try_from(&top)?).collect();
    let pattern = cache.get(HookPoint::AttnPattern(3)).expect("cached").get(0).get(0).get(-1); // head 0, last query
    let line = json!({
        "input_ids": ids[0],
        "resid_post_10_last_first8": Vec::<f32>::try_from(&resid.narrow(0, 0, 8).to_kind(Kind::Float))?,
        "ablate_l5_n123_last_logits_top5": top,
        "pattern_l3_h0_last_row_sum": pattern.sum(Kind::Float).double_value(&[]),
        "steered_text": model.tokenizer.decode(&steered[0].tokens, true)?,
    });
    println!("{line}");
    Ok(())
}
