//! What circuit modulation costs during cached generation: the same neutral prompts generated plainly and
//! modulated (every row towards its own emotion, neurons at the last position of every forward call, heads
//! at every position), forced to the same length, interleaved repetitions; prints both rates and their ratio.
//!
//! `cargo run --release --example modulation_cost -- CIRCUITS_DIR [ROWS] [NEW_TOKENS] [REPS] [DEVICE]`
use std::time::Instant;

use emo_data::{Dataset, Emotion, Split, Valence};
use emo_model::{GenerationConfig, HookSet, LoadOptions, Model};
use emo_modulate::{CircuitSet, Modulation};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next().ok_or_else(|| anyhow::anyhow!("usage: modulation_cost CIRCUITS_DIR [ROWS] [NEW_TOKENS] [REPS] [DEVICE]"))?,
    );
    let rows: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let new_tokens: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let reps: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let device = emo_model::device::parse_device(&args.next().unwrap_or_else(|| "cpu".into()))?;
    let model = Model::load("smollm2-135m", LoadOptions { device, ..Default::default() })?;
    let cfg = model.transformer.config();
    let set = CircuitSet::load_for(&dir, cfg)?;
    let scenarios = emo_data::sev::spread(Dataset::builtin().split(Split::Test), rows.div_ceil(3));
    let prompts = scenarios
        .iter()
        .flat_map(|s| Valence::ALL.map(|v| model.encode_chat(&emo_data::neutral_prompt(s, v))))
        .take(rows)
        .collect::<emo_model::Result<Vec<_>>>()?;
    let per_row: Vec<Option<(Emotion, f64)>> = (0..prompts.len()).map(|i| Some((set.circuits[i % set.circuits.len()].emotion, 1.0))).collect();
    let config = GenerationConfig { max_new_tokens: new_tokens, ignore_eos: true, ..GenerationConfig::modulation() };
    let modulation = Modulation::new(&set);
    let (mut plain, mut modulated) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        model.generate_ids(&prompts, &config, &mut HookSet::new())?;
        plain.push(t.elapsed().as_secs_f64());
        let mut hooks = HookSet::new();
        for h in modulation.hooks_for(&per_row)? {
            hooks.push_owned(h);
        }
        let t = Instant::now();
        model.generate_ids(&prompts, &config, &mut hooks)?;
        modulated.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, m) = (median(&mut plain), median(&mut modulated));
    let tokens = (prompts.len() * new_tokens) as f64;
    println!(
        "{{\"rows\": {}, \"new_tokens\": {new_tokens}, \"reps\": {reps}, \"plain_tokens_per_s\": {:.1}, \"modulated_tokens_per_s\": {:.1}, \"throughput_ratio\": {:.3}}}",
        prompts.len(),
        tokens / p,
        tokens / m,
        p / m
    );
    Ok(())
}
