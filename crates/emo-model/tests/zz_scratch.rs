use emo_model::*;
#[test]
fn scratch() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let t0 = std::time::Instant::now();
    let g = gguf::GgufFile::open(&path).unwrap();
    let cfg = TransformerConfig::from_gguf(&g).unwrap();
    eprintln!("{cfg:?}");
    let m = Transformer::load(cfg.clone(), &weights::GgufWeights::new(&g, cfg.clone()), tch::Device::Cpu, tch::Kind::Float).unwrap();
    eprintln!("load {:?}", t0.elapsed());
    let ids: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    let (x, v, l) = generate::left_pad(&[ids.clone()], 0).unwrap();
    let mut st = DecodeState::new(&l, cfg.n_layers, tch::Device::Cpu, false);
    let lg = m.forward_chunk(&x, &v, &mut st, &mut HookSet::new(), LogitsFor::Last).unwrap();
    let lg = Vec::<f32>::try_from(lg.view(-1)).unwrap();
    std::fs::write("/tmp/ours.f32", lg.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let g = generate::generate(&m, &[ids], &GenerationConfig::greedy(20), 0, &mut HookSet::new()).unwrap();
    eprintln!("{:?}", g);
}
