// Its binaries, tests and examples link LibTorch: rpath, CUDA backend, version (see emo-build).
fn main() {
    emo_build::link_libtorch();
}
