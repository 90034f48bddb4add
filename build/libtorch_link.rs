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
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
