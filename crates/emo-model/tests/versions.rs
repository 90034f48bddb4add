//! The versions run manifests record are the real ones.

#[test]
fn tch_version_matches_the_lock_file() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
    let entry = lock.split("[[package]]").find(|p| p.contains("name = \"tch\"\n")).expect("tch in Cargo.lock");
    let version = entry.lines().find_map(|l| l.strip_prefix("version = ")).unwrap().trim_matches('"');
    assert_eq!(emo_model::TCH_VERSION, version);
}

#[test]
fn libtorch_version_is_read_at_build_time() {
    let v = emo_model::LIBTORCH_VERSION;
    assert_ne!(v, "unknown", "the build script did not find LibTorch's version");
    assert!(v.starts_with("2."), "{v}");
}
