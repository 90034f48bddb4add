//! Packed int4 weights ([`emo_model::packed`]) against the dequantized path on the real offline models: the
//! codes decode to the file's own weights, logits and hook outputs agree within the error bf16 products bring,
//! weight readers see the packed weights, and the packed model holds less memory.
mod common;

use emo_model::gguf::GgufFile;
use emo_model::packed::QuantRows;
use emo_model::{
    Capture, Edit, GenerationConfig, HookPoint, HookSet, Intervention, Interventions, LoadOptions, LogitsFor, Model, Positions, WeightFormat,
};
use tch::{Device, Kind, Tensor};

fn load(alias: &str, kind: Kind, weights: WeightFormat) -> Model {
    Model::load(alias, LoadOptions::new(Device::Cpu, kind).weights(weights)).unwrap_or_else(|e| panic!("{e}\n(run `scripts/setup.sh --test` first)"))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

/// Token rows from real chat prompts.
fn rows(m: &Model) -> Vec<Vec<u32>> {
    common::conversations().iter().take(3).map(|c| m.encode_chat(c).unwrap()).collect()
}

#[test]
fn int4_codes_decode_to_the_files_own_weights() {
    for alias in ["smollm2-135m", "qwen2.5-coder-0.5b"] {
        let path = common::model_file(alias);
        let gguf = GgufFile::open(&path).unwrap();
        let mut checked = 0;
        for info in gguf.tensors().iter().filter(|t| QuantRows::bits(t.dtype).is_some() && t.dims.len() == 2).take(40) {
            let shape = info.shape();
            let (n, k) = (shape[0] as usize, shape[1] as usize);
            let rows = QuantRows::from_ggml(info.dtype, gguf.tensor_data(&info.name).unwrap(), n, k).unwrap().unwrap();
            let reference = gguf.dequantize(&info.name).unwrap();
            let ours = rows.dequantize();
            // c·s + z and ggml's own formulas differ only in f32 rounding.
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = reference.iter().zip(&ours).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= scale * 1e-6, "{alias} {} ({}): max |diff| {worst} for weights up to {scale}", info.name, info.dtype);
            checked += 1;
        }
        assert!(checked > 0, "{alias}: no packable tensor found");
    }
}

#[test]
fn packed_logits_and_hooks_match_the_dequantized_path() {
    for alias in ["smollm2-135m", "qwen2.5-coder-0.5b"] {
        packed_matches_dequantized(alias);
    }
}

/// The opt-in 1.5B model (`scripts/setup.sh --model qwen2.5-coder-1.5b`), by hand:
/// `cargo test --release -p emo-model --test packed -- --ignored`.
#[test]
#[ignore]
fn packed_matches_the_dequantized_path_on_the_opt_in_model() {
    packed_matches_dequantized("qwen2.5-coder-1.5b");
}

fn packed_matches_dequantized(alias: &str) {
    let exact = load(alias, Kind::Float, WeightFormat::Dequantized);
    let bf16 = load(alias, Kind::BFloat16, WeightFormat::Dequantized);
    let packed = load(alias, Kind::Float, WeightFormat::Packed);
    // SmolLM2's file is Q4_1 throughout; Qwen's "Q4_K_M" is mostly Q5_0 (its rows of 896 are no whole
    // number of 256-value K-quant blocks) with Q8_0, Q4_K and some Q6_K (scales per 16 values: dense).
    let (bytes, n_packed, n_all) = packed.transformer.weight_bytes();
    let min_packed = if alias == "smollm2-135m" { n_all } else { n_all / 2 };
    assert!(n_packed >= min_packed, "{alias}: only {n_packed} of {n_all} matrices packed");
    assert!(bytes < exact.transformer.weight_bytes().0, "{alias}: packing saved no memory");

    let rows = rows(&exact);
    let pad = exact.pad_token_id();
    let layer = exact.transformer.config().n_layers / 2;
    let run = |m: &Model| {
        let mut cap = Capture::new([HookPoint::ResidPost(layer), HookPoint::MlpPost(layer)], Positions::LastPrompt);
        let logits = m.transformer.forward_rows(&rows, pad, &mut HookSet::new().with(&mut cap), LogitsFor::Last).unwrap();
        let resid = cap.per_row(HookPoint::ResidPost(layer), rows.len()).unwrap();
        (logits, resid)
    };
    let (l_exact, r_exact) = run(&exact);
    let (l_bf16, r_bf16) = run(&bf16);
    let (l_packed, r_packed) = run(&packed);
    let (d_bf16, d_packed) = (max_diff(&l_exact, &l_bf16), max_diff(&l_exact, &l_packed));
    let (h_bf16, h_packed) = (max_diff(&r_exact, &r_bf16), max_diff(&r_exact, &r_packed));
    eprintln!("{alias}: max |logit diff| vs f32: bf16 {d_bf16:.4}, packed {d_packed:.4}; resid_post {layer}: bf16 {h_bf16:.4}, packed {h_packed:.4}");
    // Packed products run in bf16, so the packed path may differ from f32 as much as a bf16 model does, and
    // not much more.
    assert!(d_packed <= 2.0 * d_bf16 + 1e-3, "{alias}: packed logits {d_packed} from f32, bf16's {d_bf16}");
    assert!(h_packed <= 2.0 * h_bf16 + 1e-3, "{alias}: packed resid_post {h_packed} from f32, bf16's {h_bf16}");
    // Same next token on every row.
    assert_eq!(l_packed.argmax(-1, false), l_exact.argmax(-1, false), "{alias}: packed greedy token differs");

    // An edit changes the packed model's residual as it changes the exact model's.
    let dir = Tensor::randn([exact.transformer.config().d_model as i64], (Kind::Float, Device::Cpu));
    let edited = |m: &Model| {
        let row = || Intervention::none().with(HookPoint::ResidPost(layer), Edit::Add(&dir * 4.0));
        let mut edit = Interventions::new((0..rows.len()).map(|_| row()).collect(), Positions::All);
        let mut cap = Capture::new([HookPoint::ResidPost(layer)], Positions::LastPrompt);
        let _ = m.transformer.forward_rows(&rows, pad, &mut HookSet::new().with(&mut edit).with(&mut cap), LogitsFor::Skip).unwrap();
        cap.per_row(HookPoint::ResidPost(layer), rows.len()).unwrap()
    };
    let shift_exact = edited(&exact) - &r_exact;
    let shift_packed = edited(&packed) - &r_packed;
    assert!(max_diff(&shift_exact, &shift_packed) <= 2.0 * h_bf16 + 1e-3, "{alias}: the edit moved packed resid_post differently");
}

#[test]
fn weight_readers_see_the_packed_weights() {
    let exact = load("smollm2-135m", Kind::Float, WeightFormat::Dequantized);
    let packed = load("smollm2-135m", Kind::Float, WeightFormat::Packed);
    for layer in [0, 5, 29] {
        for (a, b) in [
            (exact.transformer.w_down(layer).unwrap(), packed.transformer.w_down(layer).unwrap()),
            (exact.transformer.w_o(layer).unwrap(), packed.transformer.w_o(layer).unwrap()),
        ] {
            assert_eq!(a.size(), b.size());
            assert_eq!(b.kind(), Kind::Float);
            // Only the scales and zeros were rounded to bf16 (8 significant bits).
            let scale = a.abs().max().double_value(&[]);
            let d = max_diff(&a, &b);
            assert!(d > 0.0 && d <= scale / 64.0, "layer {layer}: max |diff| {d} for weights up to {scale}");
        }
    }
}

#[test]
fn packed_generation_runs_greedy_chat() {
    let packed = load("smollm2-135m", Kind::BFloat16, WeightFormat::Packed);
    let convs = common::conversations();
    let replies = packed.generate_chat(&convs[..2], &GenerationConfig::greedy(12), &mut HookSet::new()).unwrap();
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert!(!r.generated.tokens.is_empty());
        assert!(!r.text.trim().is_empty(), "empty reply");
    }
}

#[test]
fn weight_format_names_parse_and_bad_ones_are_refused() {
    assert_eq!(WeightFormat::parse("packed").unwrap(), WeightFormat::Packed);
    assert_eq!(WeightFormat::parse("dequantized").unwrap(), WeightFormat::Dequantized);
    let e = WeightFormat::parse("int3").unwrap_err().to_string();
    assert!(e.contains("int3"), "{e}");
}

#[test]
fn prefix_branching_on_packed_weights_equals_full_forwards() {
    let m = load("smollm2-135m", Kind::Float, WeightFormat::Packed);
    let t = &m.transformer;
    let prompts = rows(&m);
    let layer = 12;
    let d = t.config().d_model as i64;
    tch::manual_seed(7);
    let ivs = [
        Intervention::none(),
        Intervention::none().with(HookPoint::MlpPost(layer), Edit::Zero(vec![3, 17, 400])),
        Intervention::none().with(HookPoint::ResidPost(layer), Edit::AddRms(Tensor::randn([d], (Kind::Float, Device::Cpu)), 4.0)),
    ];
    let which: Vec<usize> = (0..ivs.len()).map(|i| i % prompts.len()).collect();
    let mut prefix = t.prefill_prefix(&prompts, m.pad_token_id()).unwrap();
    let mut edits = Interventions::new(ivs.to_vec(), Positions::LastPrompt);
    let branched = t.forward_branches(&mut prefix, &which, &mut HookSet::new().with(&mut edits), LogitsFor::Last).unwrap();
    let full_rows: Vec<Vec<u32>> = which.iter().map(|&p| prompts[p].clone()).collect();
    let mut edits = Interventions::new(ivs.to_vec(), Positions::LastPrompt);
    let full = t.forward_rows(&full_rows, m.pad_token_id(), &mut HookSet::new().with(&mut edits), LogitsFor::Last).unwrap();
    let d = max_diff(&branched.squeeze(), &full.squeeze());
    let scale = full.abs().max().double_value(&[]);
    eprintln!("packed: branched vs full max |logit diff| {d:.2e} (logits up to {scale:.1})");
    // Both run the same packed products; only batch composition and bf16 accumulation order differ.
    assert!(d <= scale * 1e-2, "branched {d} vs full, logits up to {scale}");
}
