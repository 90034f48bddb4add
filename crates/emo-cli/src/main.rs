//! The `emo` command; everything it does lives in the library (`emo_cli`).
fn main() {
    emo_cli::main()
}
