//! Paper section 5, step 4: `report.md` with the run's tables and figures beside the paper's numbers.
//!
//! `cargo run --release --example section5_4_report -- RUN`.
fn main() -> anyhow::Result<()> {
    let run = emo_directions::RunDir::new(std::env::args().nth(1).unwrap_or_else(|| "runs/example".into()));
    println!("{}", emo_directions::report::write_report(&run)?.display());
    Ok(())
}
