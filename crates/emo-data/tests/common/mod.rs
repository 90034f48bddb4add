//! The paper's files for the tests that compare against them.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The variable that makes a missing `../shared/upstream` fail the tests that read it.
pub const REQUIRE: &str = "EMO_REQUIRE_UPSTREAM";

/// `../shared/upstream` (the paper's SEV files and labeled replies, GPL-3.0, never copied here) when it holds
/// `file`. Without it the caller skips its comparison after a NOTICE — it is outside this repository and no
/// set-up script can fetch it — unless `EMO_REQUIRE_UPSTREAM` is set, when it is a failure.
pub fn upstream(file: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/upstream");
    if dir.join(file).exists() {
        return Some(dir);
    }
    let required = std::env::var_os(REQUIRE).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "{} is absent and {REQUIRE} is set", dir.join(file).display());
    eprintln!("NOTICE: {} is absent; the comparison with the paper's files does not run (set {REQUIRE} to make this fail)", dir.join(file).display());
    None
}
