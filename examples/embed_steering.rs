//! The smallest complete program that embeds emotion steering: load the default model, load the directions
//! an `emo directions` run wrote, and answer one message plainly and steered towards each of two emotions.
//!
//! `cargo run --release --example embed_steering -- RUN_OR_DIRECTIONS [ALPHA]` (a run folder or its
//! `directions.safetensors`; alpha defaults to the paper's 8).
use emotion_circuits::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().ok_or("usage: embed_steering RUN_OR_DIRECTIONS [ALPHA]")?);
    let path = if path.is_dir() { path.join("directions.safetensors") } else { path };
    let alpha: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8.0);

    let model = Model::load("smollm2-135m", LoadOptions::default())?;
    let steerer = Steerer::from_file(&model, &path)?.alpha(alpha);
    let message = [ChatMessage::user("My flight was delayed by three hours.")];
    println!("plain:   {}", steerer.chat(&message)?);
    for emotion in [Emotion::Anger, Emotion::Happiness] {
        println!("{:<8} {}", format!("{emotion}:"), steerer.clone().emotion(emotion).chat(&message)?);
    }
    Ok(())
}
