//! Paper section 5, step 4: `report.md` with the run's tables and figures beside the paper's numbers.
//!
//! `cargo run --release --example section5_4_report -- RUN`.
mod common;

fn main() -> anyhow::Result<()> {
    let run = common::Args::new("section5_4_report RUN").run();
    println!("{}", emo_directions::report::write_report(&run)?.display());
    Ok(())
}
