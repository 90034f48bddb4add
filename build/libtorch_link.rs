//! Shared build script for every package that links a binary (CLI, tests, examples, benches).
//!
//! tch's libtorch comes from a Python venv; two link-time details make binaries work without the user
//! exporting anything:
//! - an rpath to libtorch's folder, so the loader finds `libtorch_cpu.so` and friends;
//! - `libtorch_cuda.so` linked with `--no-as-needed`, because nothing in our code references a CUDA symbol
//!   and the default `--as-needed` would drop it, leaving `Cuda::is_available()` false even on a GPU machine.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build/libtorch_link.rs");
    // Set by torch-sys (links = "tch") for its direct dependents.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // The LibTorch version, for run manifests: a Python wheel's `torch/version.py`, or a LibTorch zip's
    // `build-version`, one folder above `lib/`.
    if let Some(version) = libtorch_version(Path::new(&lib)) {
        println!("cargo:rustc-env=EMO_LIBTORCH_VERSION={version}");
    }
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}

fn libtorch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        println!("cargo:rerun-if-changed={}", root.join("version.py").display());
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    Some(text.trim().to_string()).filter(|v| !v.is_empty())
}
