//! Compiles the three-function bridge to PyTorch's own tensor wrapping (`src/torch_python.cpp`) against the
//! LibTorch that tch links and the headers of the Python that builds us, and links `libtorch_python`.
//!
//! torch-sys has the same bridge behind its `python-extension` feature, but Cargo unifies features across a
//! build: turning it on here would link every binary of the workspace (`emo`, the tests) against
//! `libtorch_python` and so against a Python. Compiling the bridge in this crate keeps it here.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    emo_build::link_libtorch();
    let lib = emo_build::libtorch_lib().expect("LIBTORCH is not set (scripts/setup.sh links .venv/libtorch)");
    let root = lib.parent().expect("LibTorch's lib/ has a parent").to_path_buf();
    println!("cargo:rerun-if-changed=src/torch_python.cpp");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
        .output()
        .unwrap_or_else(|e| panic!("running {python} to find Python's headers: {e}"));
    assert!(out.status.success(), "{python} could not name its include folder: {}", String::from_utf8_lossy(&out.stderr));
    let py_include = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    cc::Build::new()
        .cpp(true)
        .file("src/torch_python.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(py_include)
        .flag("-std=c++17")
        .flag_if_supported("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .compile("emo_torch_python");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_python");
    // An installed wheel finds LibTorch in the torch package beside it (site-packages/torch/lib).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
