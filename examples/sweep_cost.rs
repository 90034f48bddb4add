//! The cost of the paper's largest sweep, the sublayer importance of section 7 (every sublayer x 4 alphas x
//! 6 emotions, injected into the sublayer's output at the last prompt token of a neutral prompt, read as
//! `<ln_final, v_ref>`), measured on a few prompts through `emo_run::Sweep` (prefix branching) and
//! extrapolated to the 480 prompts of a full split. Directions are random unit vectors: the cost does not
//! depend on their values.
//!
//! `cargo run --release --example sweep_cost -- [PROMPTS] [DEVICE]`
mod common;

use std::time::Instant;

use emo_data::{Dataset, Split, Valence};
use emo_model::{Edit, Intervention, LoadOptions, Model, Positions, Sublayer};
use emo_run::{paper, Metric, Sweep};
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let mut args = common::Args::new("sweep_cost [PROMPTS] [DEVICE]");
    let n: usize = args.or("n", 4)?;
    let device = args.device()?;
    let model = Model::load("smollm2-135m", LoadOptions { device, ..Default::default() })?;
    let cfg = model.transformer.config();
    let scenarios = emo_data::sev::spread(Dataset::builtin().split(Split::Test), n.div_ceil(3));
    let prompts = scenarios
        .iter()
        .flat_map(|s| Valence::ALL.map(|v| model.encode_chat(&emo_data::neutral_prompt(s, v))))
        .take(n)
        .collect::<emo_model::Result<Vec<_>>>()?;

    tch::manual_seed(0);
    let unit = |t: Tensor| &t / t.norm();
    let v_ref = unit(Tensor::randn([cfg.d_model as i64], (Kind::Float, tch::Device::Cpu)));
    let mut interventions = Vec::new();
    for _emotion in 0..6 {
        let v_local = unit(Tensor::randn([cfg.d_model as i64], (Kind::Float, tch::Device::Cpu)));
        for s in Sublayer::all(cfg.n_layers) {
            for alpha in paper::IMPORTANCE_ALPHAS {
                interventions.push(Intervention::none().with(s.output(), Edit::Add(&v_local * (alpha * 20.0))));
            }
        }
    }
    // One metric direction for every row here; the real sweep reads each emotion's v_ref.
    let metric = Metric::final_state(&v_ref)?;
    let mut sweep = Sweep::new(&prompts, &interventions, Positions::LastPrompt, &metric);
    sweep.max_rows = 256;
    sweep.progress = true;
    let start = Instant::now();
    let table = sweep.run(&model)?;
    let secs = start.elapsed().as_secs_f64();
    let rows = (prompts.len() * interventions.len()) as f64;
    let full = 480.0 * interventions.len() as f64;
    println!(
        "{} prompts x {} interventions = {rows} rows in {secs:.1} s: {:.0} rows/s; a full split (480 prompts, {full} rows) \
         would take {:.1} min (table {:?})",
        prompts.len(),
        interventions.len(),
        rows / secs,
        full / (rows / secs) / 60.0,
        table.size()
    );
    Ok(())
}
