//! `emo-build`: the one call a build script makes so that its package's binaries, tests and examples run
//! against LibTorch without anything exported at run time.
//!
//! ```no_run
//! // The whole body of `fn main` in build.rs, in a crate that depends on emotion-circuits and lists
//! // emo-build under [build-dependencies]:
//! emo_build::link_libtorch();
//! ```
//!
//! It adds two link arguments and one compile-time variable:
//! - an rpath to LibTorch's `lib/`, so the loader finds `libtorch_cpu.so` and friends;
//! - `libtorch_cuda.so` linked with `--no-as-needed` where it exists: nothing references a CUDA symbol, and the
//!   default `--as-needed` would drop it (emo-model also opens it at run time, so this is belt and braces);
//! - `EMO_LIBTORCH_VERSION`, LibTorch's version, for run manifests.
//!
//! LibTorch's folder comes from torch-sys (`DEP_TCH_LIBTORCH_LIB`, given to packages that depend on
//! torch-sys directly), else from `$LIBTORCH/lib` (the variable torch-sys itself reads).
use std::path::{Path, PathBuf};

/// Emits the link arguments and `EMO_LIBTORCH_VERSION` for the calling build script's package; does
/// nothing when LibTorch's folder is unknown (then torch-sys's own build fails with its own message).
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(lib) = libtorch_lib() else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=EMO_LIBTORCH_LIB={}", lib.display());
    if let Some(version) = libtorch_version(&lib) {
        println!("cargo:rustc-env=EMO_LIBTORCH_VERSION={version}");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}

/// LibTorch's `lib/` folder, as torch-sys found it or as `$LIBTORCH` names it.
pub fn libtorch_lib() -> Option<PathBuf> {
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        return Some(PathBuf::from(lib));
    }
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let lib = root.join("lib");
    Some(lib.canonicalize().unwrap_or(lib))
}

/// The LibTorch version: a Python wheel's `torch/version.py`, or a LibTorch zip's `build-version`, one
/// folder above `lib/`.
pub fn libtorch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        println!("cargo:rerun-if-changed={}", root.join("version.py").display());
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    Some(text.trim().to_string()).filter(|v| !v.is_empty())
}
