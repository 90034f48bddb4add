//! GGUF parsing and dequantisation against gguf-py (the reference Python implementation shipped with
//! llama.cpp), plus error handling on damaged files and the writer's round trip.
//!
//! Needs the two offline models and a venv with gguf-py: `scripts/setup.sh --test`. Models are looked
//! up in `$EMO_MODELS_DIR` (default `<workspace>/.cache/models`), Python at `$EMO_PYTHON` (default
//! `<workspace>/.venv/bin/python`). Missing prerequisites fail the tests; they are never skipped.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use common::{models_dir, Rng};
use emo_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use emo_model::{quant, ModelError};
use half::{bf16, f16};
use serde_json::Value;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
const SETUP: &str = "run `scripts/setup.sh --test` to install the test prerequisites";
/// Tensors above this many elements are not sent through gguf-py (its numpy path needs several
/// temporaries of the full size); every type still has smaller tensors in these files.
const MAX_REFERENCE_ELEMENTS: u64 = 32 << 20;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// Serialises the tests that stream whole models, so timings are not skewed and memory stays bounded.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(p.is_file(), "model {} is missing: {SETUP}", p.display());
    p
}

fn python() -> PathBuf {
    let py = common::python();
    let ok = Command::new(&py).args(["-c", "import gguf, numpy"]).output();
    assert!(
        matches!(&ok, Ok(o) if o.status.success()),
        "{} cannot import gguf-py ({:?}): {SETUP}",
        py.display(),
        ok.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    py
}

/// Runs tests/support/gguf_reference.py with `args`.
fn reference(args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/gguf_reference.py");
    let out = Command::new(python()).arg(&script).args(args).output().expect("run python");
    assert!(out.status.success(), "gguf_reference.py {:?} failed:\n{}", args, String::from_utf8_lossy(&out.stderr));
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("emo-gguf-{tag}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Max |a−b| after asserting the two are bit-identical (NaNs compare by bit pattern).
fn compare(what: &str, ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: element counts differ");
    let mut max = 0f32;
    let mut mismatches = 0usize;
    let mut first = None;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a.to_bits() != b.to_bits() {
            mismatches += 1;
            first.get_or_insert((i, *a, *b));
            max = max.max((a - b).abs());
        }
    }
    assert_eq!(mismatches, 0, "{what}: {mismatches} values differ, max |diff| {max}, first (index, ours, gguf-py) {first:?}");
    max
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("pattern in file")
}

/// The bytes of a GGUF string (u64 length + bytes), to locate keys and tensor names in a file.
fn gguf_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn patch(bytes: &mut [u8], at: usize, new: &[u8]) {
    bytes[at..at + new.len()].copy_from_slice(new);
}

fn assert_names_file(err: &ModelError, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
}

// ---------------------------------------------------------------------------------------------------
// Against gguf-py: real tensors, random blocks, metadata
// ---------------------------------------------------------------------------------------------------

#[test]
fn real_tensors_match_gguf_py() {
    let _g = heavy();
    let tmp = TempDir::new("real");
    let mut report: BTreeMap<String, (usize, u64, f32)> = BTreeMap::new();
    for name in [SMOL, QWEN] {
        let path = model(name);
        let file = GgufFile::open(&path).expect("open model");
        // First and last tensor of each type that gguf-py can handle comfortably.
        let mut picked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut types = std::collections::BTreeSet::new();
        for t in file.tensors() {
            types.insert(t.dtype.to_string());
            if t.n_elements() > MAX_REFERENCE_ELEMENTS {
                continue;
            }
            let v = picked.entry(t.dtype.to_string()).or_default();
            if v.len() < 2 {
                v.push(t.name.clone());
            } else if let Some(last) = v.last_mut() {
                *last = t.name.clone();
            }
        }
        assert_eq!(types.len(), picked.len(), "{name}: some type has no tensor small enough to compare");
        let names: Vec<String> = picked.values().flatten().cloned().collect();
        let mut args: Vec<std::ffi::OsString> = vec!["tensors".into(), path.clone().into(), tmp.0.clone().into()];
        args.extend(names.iter().map(Into::into));
        reference(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        for tname in &names {
            let info = file.tensor_info(tname).expect("picked tensor");
            let ours = file.dequantize(tname).expect("dequantize");
            let theirs = read_f32(&tmp.path(&format!("{tname}.f32")));
            let diff = compare(&format!("{name} {tname} ({})", info.dtype), &ours, &theirs);
            let e = report.entry(format!("{} ({name})", info.dtype)).or_default();
            e.0 += 1;
            e.1 += info.n_elements();
            e.2 = e.2.max(diff);
        }
    }
    for (ty, (n, elems, diff)) in &report {
        println!("{ty:<50} {n} tensors, {elems:>10} elements, max |diff| {diff}");
    }
}

#[test]
fn random_blocks_match_gguf_py() {
    let tmp = TempDir::new("blocks");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // F16, BF16, Q4_0 and Q5_K are absent from the real files; the others are repeated for coverage
    // of bit patterns the models do not happen to use.
    let types = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q5_K,
        GgmlType::F32,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    for ty in types {
        let (bs, ts) = (ty.block_size().unwrap(), ty.type_size().unwrap());
        let n_blocks = 32768 / bs;
        let mut data = Vec::with_capacity(n_blocks * ts);
        for _ in 0..n_blocks {
            let mut block = rng.bytes(ts);
            // Scale fields must be finite: gguf-py and we agree on NaN/inf anyway, but NaN payloads
            // would make the comparison about numpy's casting rather than the format.
            let finite_f16 = |rng: &mut Rng| f16::from_f32(rng.uniform(-2.0, 2.0)).to_le_bytes();
            match ty {
                GgmlType::F32 => block.copy_from_slice(&rng.uniform(-1e3, 1e3).to_le_bytes()),
                GgmlType::F16 => loop {
                    let v = f16::from_le_bytes([block[0], block[1]]);
                    if v.is_finite() {
                        break;
                    }
                    block.copy_from_slice(&rng.bytes(2));
                },
                GgmlType::BF16 => loop {
                    let v = bf16::from_le_bytes([block[0], block[1]]);
                    if v.is_finite() {
                        break;
                    }
                    block.copy_from_slice(&rng.bytes(2));
                },
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => patch(&mut block, 0, &finite_f16(&mut rng)),
                GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                    patch(&mut block, 0, &finite_f16(&mut rng));
                    patch(&mut block, 2, &finite_f16(&mut rng));
                }
                GgmlType::Q6_K => patch(&mut block, 208, &finite_f16(&mut rng)),
                _ => unreachable!(),
            }
            data.extend_from_slice(&block);
        }
        let bin = tmp.path(&format!("{ty}.bin"));
        let out = tmp.path(&format!("{ty}.f32"));
        std::fs::write(&bin, &data).unwrap();
        reference(&["blocks".as_ref(), ty.to_string().as_ref(), bin.as_os_str(), out.as_os_str()]);
        let ours = quant::dequantize(ty, &data, n_blocks * bs).expect("dequantize");
        let diff = compare(&format!("random {ty}"), &ours, &read_f32(&out));
        println!("random {ty:<5} {n_blocks:>5} blocks, {:>6} elements, max |diff| {diff}", n_blocks * bs);
    }
}

/// Compares one of our values with gguf_reference.py's JSON rendering of it.
fn scalar_matches(ours: &GgufValue, theirs: &Value) -> bool {
    match ours {
        GgufValue::F32(_) | GgufValue::F64(_) => theirs["f64_bits"].as_u64() == ours.as_f64().map(f64::to_bits),
        GgufValue::Bool(b) => theirs.as_bool() == Some(*b),
        GgufValue::String(s) => theirs.as_str() == Some(s.as_str()),
        GgufValue::Array(_) => false,
        v => match (v.as_i64(), v.as_u64()) {
            (Some(i), _) if theirs.as_i64() == Some(i) => true,
            (_, Some(u)) => theirs.as_u64() == Some(u),
            _ => false,
        },
    }
}

/// Number of non-array values in a (possibly nested) value, as gguf-py counts array data.
fn leaves(v: &GgufValue) -> u64 {
    match v {
        GgufValue::Array(items) => items.iter().map(leaves).sum(),
        _ => 1,
    }
}

/// Asserts that our parse of `path` agrees with gguf-py's on every key and every tensor.
fn assert_metadata_matches(path: &Path, file: &GgufFile, tmp: &TempDir) {
    let json_path = tmp.path("meta.json");
    reference(&["meta".as_ref(), path.as_os_str(), json_path.as_os_str()]);
    let doc: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let name = path.display();
    assert_eq!(doc["version"].as_u64(), Some(file.version() as u64), "{name}: version");
    assert_eq!(doc["alignment"].as_u64(), Some(file.alignment()), "{name}: alignment");
    assert_eq!(doc["data_offset"].as_u64(), Some(file.data_offset()), "{name}: data offset");

    let fields = doc["fields"].as_array().unwrap();
    assert_eq!(fields.len(), file.metadata().len(), "{name}: number of metadata keys");
    for (f, (key, value)) in fields.iter().zip(file.metadata()) {
        assert_eq!(f["key"].as_str(), Some(key.as_str()), "{name}: key order");
        assert_eq!(f["type"].as_str(), Some(value.type_name()), "{name}: type of {key}");
        match value {
            GgufValue::Array(items) => {
                assert_eq!(f["len"].as_u64(), Some(items.len() as u64), "{name}: length of {key}");
                assert_eq!(f["leaves"].as_u64(), Some(leaves(value)), "{name}: leaf count of {key}");
                if let (Some(first), Some(last)) = (items.first(), items.last()) {
                    assert_eq!(f["elem_type"].as_str(), Some(first.type_name()), "{name}: element type of {key}");
                    if !matches!(first, GgufValue::Array(_)) {
                        assert!(scalar_matches(first, &f["first"]), "{name}: {key}[0] = {first:?} vs {}", f["first"]);
                        assert!(scalar_matches(last, &f["last"]), "{name}: {key}[-1] = {last:?} vs {}", f["last"]);
                    }
                }
            }
            v => assert!(scalar_matches(v, &f["value"]), "{name}: {key} = {v:?} vs {}", f["value"]),
        }
    }

    let tensors = doc["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensors().len(), "{name}: number of tensors");
    for (t, ours) in tensors.iter().zip(file.tensors()) {
        let tn = &ours.name;
        assert_eq!(t["name"].as_str(), Some(tn.as_str()), "{name}: tensor order");
        assert_eq!(t["type"].as_u64(), Some(ours.dtype.to_u32() as u64), "{name}: type of {tn}");
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(dims, ours.dims, "{name}: dims of {tn}");
        assert_eq!(t["offset"].as_u64(), Some(ours.offset), "{name}: offset of {tn}");
        assert_eq!(t["n_bytes"].as_u64(), ours.n_bytes(), "{name}: byte size of {tn}");
        assert_eq!(file.tensor_data(tn).unwrap().len() as u64, ours.n_bytes().unwrap());
    }
}

#[test]
fn metadata_matches_gguf_py() {
    let _g = heavy();
    let tmp = TempDir::new("meta");
    for (name, arch, blocks, vocab, eps) in [(SMOL, "llama", 30, 49152, 1e-5f32), (QWEN, "qwen2", 24, 151936, 1e-6)] {
        let path = model(name);
        let file = GgufFile::open(&path).expect("open model");
        assert_metadata_matches(&path, &file, &tmp);
        assert_eq!(file.architecture().unwrap(), arch);
        assert_eq!(file.get_u64(&format!("{arch}.block_count")).unwrap(), blocks);
        assert_eq!(file.get_array("tokenizer.ggml.tokens").unwrap().len(), vocab);
        assert_eq!(file.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap() as f32, eps);
        println!(
            "{name}: v{}, {} keys, {} tensors, data at {}, {arch} with {blocks} blocks and {vocab} tokens",
            file.version(),
            file.metadata().len(),
            file.tensors().len(),
            file.data_offset()
        );
    }
}

#[test]
fn whole_files_dequantize_and_timing() {
    let _g = heavy();
    for name in [SMOL, QWEN] {
        let file = GgufFile::open(model(name)).expect("open model");
        // Warm the page cache so the timing is of decoding, not of the disk.
        let mut sum = 0u64;
        for t in file.tensors() {
            sum = sum.wrapping_add(file.tensor_data(&t.name).unwrap().iter().step_by(4096).map(|&b| b as u64).sum());
        }
        let start = Instant::now();
        let mut elements = 0u64;
        for t in file.tensors() {
            let v = file.dequantize(&t.name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v.len() as u64, t.n_elements());
            elements += v.len() as u64;
        }
        let dt = start.elapsed();
        println!(
            "{name}: dequantized {} tensors, {elements} elements in {:.3} s ({:.0} M elements/s) [{sum}]",
            file.tensors().len(),
            dt.as_secs_f64(),
            elements as f64 / dt.as_secs_f64() / 1e6
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------

fn every_value() -> Vec<(String, GgufValue)> {
    use GgufValue::*;
    vec![
        ("general.architecture".into(), String("llama".into())),
        ("t.u8".into(), U8(200)),
        ("t.i8".into(), I8(-5)),
        ("t.u16".into(), U16(60000)),
        ("t.i16".into(), I16(-30000)),
        ("t.u32".into(), U32(4_000_000_000)),
        ("t.i32".into(), I32(-2_000_000_000)),
        ("t.f32".into(), F32(1.5e-7)),
        ("t.bool".into(), Bool(true)),
        ("t.string".into(), String("héllo ☃".into())),
        ("t.u64".into(), U64(u64::MAX)),
        ("t.i64".into(), I64(i64::MIN)),
        ("t.f64".into(), F64(-2.25e300)),
        ("t.array_u32".into(), Array(vec![U32(1), U32(2), U32(3)])),
        ("t.array_str".into(), Array(vec![String("a".into()), String(std::string::String::new())])),
        ("t.array_f32".into(), Array(vec![F32(0.25), F32(-1.0)])),
        ("t.array_bool".into(), Array(vec![Bool(false), Bool(true)])),
        ("t.array_empty".into(), Array(vec![])),
        ("t.array_nested".into(), Array(vec![Array(vec![I32(1), I32(2)]), Array(vec![I32(3)])])),
    ]
}

fn write_sample(path: &Path) -> (Vec<f32>, Vec<f32>) {
    let matrix: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
    let vector: Vec<f32> = (0..7).map(|i| (i as f32).sin()).collect();
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.add_metadata(k, v);
    }
    w.add_f32_tensor("t.matrix", &[3, 5], &matrix).unwrap();
    w.add_f32_tensor("t.vector", &[7], &vector).unwrap();
    w.write(path).unwrap();
    (matrix, vector)
}

#[test]
fn writer_round_trip() {
    let tmp = TempDir::new("writer");
    let path = tmp.path("sample.gguf");
    let (matrix, vector) = write_sample(&path);
    assert!(!tmp.path("sample.gguf.tmp").exists(), "temporary file left behind");

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.metadata(), every_value().as_slice());
    assert_eq!(file.get("t.u64"), Some(&GgufValue::U64(u64::MAX)));
    assert_eq!(file.get_u64("t.u8").unwrap(), 200);
    assert_eq!(file.get_f64("t.i32").unwrap(), -2e9);
    assert_eq!(file.get_str("t.string").unwrap(), "héllo ☃");
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get("t.bool").and_then(GgufValue::as_bool), Some(true));

    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["t.matrix", "t.vector"]);
    let m = file.tensor_info("t.matrix").unwrap();
    assert_eq!((m.dims.as_slice(), m.shape(), m.dtype, m.n_elements()), (&[5u64, 3][..], vec![3i64, 5], GgmlType::F32, 15));
    for t in file.tensors() {
        assert_eq!(t.offset % 32, 0, "{} not aligned", t.name);
    }
    assert_eq!(file.dequantize("t.matrix").unwrap(), matrix);
    assert_eq!(file.dequantize("t.vector").unwrap(), vector);

    // A custom alignment is honoured on both sides.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", GgufValue::U32(64));
    w.add_f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32_tensor("b", &[2], &[4.0, 5.0]).unwrap();
    let p64 = tmp.path("align64.gguf");
    w.write(&p64).unwrap();
    let f64_ = GgufFile::open(&p64).unwrap();
    assert_eq!(f64_.alignment(), 64);
    assert!(f64_.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f64_.dequantize("b").unwrap(), [4.0, 5.0]);

    // Invalid writer input.
    let mut w = GgufWriter::new();
    assert!(matches!(w.add_f32_tensor("x", &[2, 2], &[1.0; 3]), Err(ModelError::InvalidArgument(_))));
    w.add_f32_tensor("x", &[1], &[1.0]).unwrap();
    assert!(matches!(w.add_f32_tensor("x", &[1], &[1.0]), Err(ModelError::InvalidArgument(_))));
    w.add_metadata("general.alignment", GgufValue::U32(48));
    assert!(matches!(w.write(tmp.path("bad.gguf")), Err(ModelError::InvalidArgument(_))));
    let mut w = GgufWriter::new();
    w.add_metadata("mixed", GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]));
    assert!(matches!(w.write(tmp.path("bad.gguf")), Err(ModelError::InvalidArgument(_))));
}

#[test]
fn writer_output_reads_in_gguf_py() {
    let tmp = TempDir::new("writer-py");
    let path = tmp.path("sample.gguf");
    write_sample(&path);
    let file = GgufFile::open(&path).unwrap();
    assert_metadata_matches(&path, &file, &tmp);
    let out = tmp.path("out");
    std::fs::create_dir(&out).unwrap();
    reference(&["tensors".as_ref(), path.as_os_str(), out.as_os_str(), "t.matrix".as_ref(), "t.vector".as_ref()]);
    for name in ["t.matrix", "t.vector"] {
        compare(name, &file.dequantize(name).unwrap(), &read_f32(&out.join(format!("{name}.f32"))));
    }
}

// ---------------------------------------------------------------------------------------------------
// Damaged files
// ---------------------------------------------------------------------------------------------------

#[test]
fn truncated_real_file_is_a_typed_error() {
    let _g = heavy();
    let src = model(SMOL);
    let full = std::fs::read(&src).unwrap();
    let data_offset = GgufFile::open(&src).unwrap().data_offset() as usize;
    let tmp = TempDir::new("trunc");
    let cuts = [
        ("empty", 0),
        ("magic", 3),
        ("version", 6),
        ("counts", 20),
        ("first key", 30),
        ("metadata strings", 300),
        ("token array", 500_000),
        ("tensor infos", data_offset - 2000),
        ("last tensor info", data_offset - 40),
        ("first tensor data", data_offset + 1000),
        ("middle of data", full.len() / 2),
        ("last byte", full.len() - 1),
    ];
    for (what, cut) in cuts {
        let path = tmp.path(&format!("cut-{cut}.gguf"));
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = GgufFile::open(&path).expect_err(what);
        assert!(matches!(err, ModelError::Truncated { .. }), "{what}: expected Truncated, got {err}");
        assert_names_file(&err, &path);
        println!("{what:>18} @ {cut:>8}: {err}");
    }
}

/// A small writer-made file to patch: keys `k.aa`, `k.bb`, `k.arr`, `k.flag`, tensors `a` [2,32],
/// `b` [32], `c` [3].
fn small_file(tmp: &TempDir) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("k.aa", GgufValue::String("hello".into()));
    w.add_metadata("k.bb", GgufValue::U32(7));
    w.add_metadata("k.arr", GgufValue::Array(vec![GgufValue::U16(1); 4]));
    w.add_metadata("k.flag", GgufValue::Bool(true));
    w.add_f32_tensor("a", &[2, 32], &[0.5; 64]).unwrap();
    w.add_f32_tensor("b", &[32], &[1.5; 32]).unwrap();
    w.add_f32_tensor("c", &[3], &[2.5; 3]).unwrap();
    let path = tmp.path("small.gguf");
    w.write(&path).unwrap();
    std::fs::read(&path).unwrap()
}

/// Position just after a tensor's name in its info.
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let s = gguf_str(name);
    // Tensor names follow the metadata, so search from the end of the last key's entry.
    let after_meta = find(bytes, &gguf_str("k.flag")) + gguf_str("k.flag").len() + 5;
    after_meta + find(&bytes[after_meta..], &s) + s.len()
}

fn open_patched(tmp: &TempDir, tag: &str, bytes: &[u8]) -> (PathBuf, emo_model::Result<GgufFile>) {
    let path = tmp.path(&format!("{tag}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    let r = GgufFile::open(&path);
    (path, r)
}

#[test]
fn corrupt_headers_are_format_errors() {
    let tmp = TempDir::new("corrupt");
    let good = small_file(&tmp);

    let mut b = good.clone();
    b[0] = b'X';
    let (p, r) = open_patched(&tmp, "magic", &b);
    let err = r.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("not a GGUF file"), "{err}");
    assert_names_file(&err, &p);

    for (v, text) in [(1u32, "unsupported GGUF version 1"), (99, "unsupported GGUF version 99"), (3u32.swap_bytes(), "big-endian")] {
        let mut b = good.clone();
        patch(&mut b, 4, &v.to_le_bytes());
        let (p, r) = open_patched(&tmp, &format!("version{v}"), &b);
        let err = r.unwrap_err();
        assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains(text), "{err}");
        assert_names_file(&err, &p);
    }

    // Absurd string length on the first key: past the end (Truncated) or overflowing (Format).
    for (len, truncated) in [(u64::MAX / 2, true), (u64::MAX - 3, false)] {
        let mut b = good.clone();
        patch(&mut b, 24, &len.to_le_bytes());
        let (p, r) = open_patched(&tmp, "strlen", &b);
        let err = r.unwrap_err();
        assert_eq!(matches!(err, ModelError::Truncated { .. }), truncated, "{err}");
        assert!(matches!(err, ModelError::Truncated { .. } | ModelError::Format { .. }), "{err}");
        assert_names_file(&err, &p);
    }

    // Absurd array count, absurd tensor count: an error, not a huge allocation.
    let arr = find(&good, &gguf_str("k.arr")) + gguf_str("k.arr").len();
    for count in [1u64 << 40, u64::MAX] {
        let mut b = good.clone();
        patch(&mut b, arr + 8, &count.to_le_bytes());
        let (p, r) = open_patched(&tmp, "arrcount", &b);
        let err = r.unwrap_err();
        assert!(matches!(err, ModelError::Truncated { .. } | ModelError::Format { .. }), "{err}");
        assert!(err.to_string().contains("k.arr"), "{err}");
        assert_names_file(&err, &p);
    }
    let mut b = good.clone();
    patch(&mut b, 8, &u64::MAX.to_le_bytes());
    let err = open_patched(&tmp, "tcount", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");

    // Unknown value type, bad bool, invalid UTF-8, duplicate key.
    let bb = find(&good, &gguf_str("k.bb")) + gguf_str("k.bb").len();
    let mut b = good.clone();
    patch(&mut b, bb, &99u32.to_le_bytes());
    let err = open_patched(&tmp, "vtype", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("unknown value type 99"), "{err}");
    let flag = find(&good, &gguf_str("k.flag")) + gguf_str("k.flag").len() + 4;
    let mut b = good.clone();
    b[flag] = 2;
    let err = open_patched(&tmp, "bool", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("k.flag"), "{err}");
    let mut b = good.clone();
    let hello = find(&good, b"hello");
    b[hello] = 0xFF;
    let err = open_patched(&tmp, "utf8", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("UTF-8"), "{err}");
    let mut b = good.clone();
    patch(&mut b, bb - 2, b"aa");
    let err = open_patched(&tmp, "dupkey", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("duplicate metadata key"), "{err}");
}

#[test]
fn corrupt_tensor_infos() {
    let tmp = TempDir::new("tinfo");
    let good = small_file(&tmp);
    // Info layout after the name: u32 n_dims, u64 dims[n], u32 type, u64 offset.
    let a = tensor_info_at(&good, "a"); // 2 dims
    let b_ = tensor_info_at(&good, "b"); // 1 dim
    let c = tensor_info_at(&good, "c"); // 1 dim

    // Unknown type id: the file opens (other tensors stay usable), the tensor itself is UnsupportedQuant.
    let mut b = good.clone();
    patch(&mut b, a + 4 + 16, &200u32.to_le_bytes());
    let (p, r) = open_patched(&tmp, "unknown-type", &b);
    let file = r.expect("a file with an unknown tensor type still opens");
    assert_eq!(file.tensor_info("a").unwrap().dtype, GgmlType::Other(200));
    for err in [file.dequantize("a").unwrap_err(), file.tensor_data("a").unwrap_err()] {
        assert!(matches!(&err, ModelError::UnsupportedQuant { tensor, .. } if tensor == "a"), "{err}");
        assert!(err.to_string().contains("`a`") && err.to_string().contains("200"), "{err}");
        assert_names_file(&err, &p);
    }
    assert_eq!(file.dequantize("b").unwrap(), vec![1.5; 32]);

    // A known type with no dequantizer (Q5_1): raw bytes available, dequantize refuses.
    let mut b = good.clone();
    patch(&mut b, b_ + 4 + 8, &7u32.to_le_bytes());
    let (_, r) = open_patched(&tmp, "q5_1", &b);
    let file = r.unwrap();
    assert_eq!(file.tensor_data("b").unwrap().len(), 24);
    let err = file.dequantize("b").unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedQuant { .. }) && err.to_string().contains("Q5_1"), "{err}");

    // A quantised type whose row is not a whole number of blocks.
    let mut b = good.clone();
    patch(&mut b, c + 4 + 8, &2u32.to_le_bytes());
    let err = open_patched(&tmp, "rowblocks", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("`c`"), "{err}");

    // Too many dimensions.
    let mut b = good.clone();
    patch(&mut b, a, &5u32.to_le_bytes());
    let err = open_patched(&tmp, "ndims", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("dimensions"), "{err}");

    // Element count overflowing.
    let mut b = good.clone();
    patch(&mut b, a + 4, &(u64::MAX / 2).to_le_bytes());
    let err = open_patched(&tmp, "bigdims", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err}");

    // Data offsets past the end (Truncated) and overflowing (Format).
    for (off, truncated) in [(1u64 << 40, true), (u64::MAX - 8, false)] {
        let mut b = good.clone();
        patch(&mut b, b_ + 4 + 8 + 4, &off.to_le_bytes());
        let (p, r) = open_patched(&tmp, "offset", &b);
        let err = r.unwrap_err();
        assert_eq!(matches!(err, ModelError::Truncated { .. }), truncated, "{err}");
        assert!(err.to_string().contains("`b`"), "{err}");
        assert_names_file(&err, &p);
    }

    // Duplicate tensor name.
    let mut b = good.clone();
    patch(&mut b, b_ - 1, b"a");
    let err = open_patched(&tmp, "dupname", &b).1.unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }) && err.to_string().contains("duplicate tensor"), "{err}");

    // A bad general.alignment.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", GgufValue::U32(64));
    w.add_f32_tensor("x", &[1], &[1.0]).unwrap();
    let p = tmp.path("align.gguf");
    w.write(&p).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    let at = find(&b, &gguf_str("general.alignment")) + gguf_str("general.alignment").len() + 4;
    patch(&mut b, at, &48u32.to_le_bytes());
    let (p, r) = open_patched(&tmp, "align48", &b);
    let err = r.unwrap_err();
    assert!(matches!(err, ModelError::Metadata { .. }) && err.to_string().contains("general.alignment"), "{err}");
    assert_names_file(&err, &p);
}

#[test]
fn lookups_report_key_tensor_and_file() {
    let tmp = TempDir::new("lookup");
    small_file(&tmp);
    let path = tmp.path("small.gguf");
    let file = GgufFile::open(&path).unwrap();
    for err in [
        file.get_u64("k.aa").unwrap_err(),
        file.get_str("k.bb").unwrap_err(),
        file.get_f64("missing.key").unwrap_err(),
        file.get_array("k.flag").unwrap_err(),
        file.architecture().unwrap_err(),
    ] {
        assert!(matches!(err, ModelError::Metadata { .. }), "{err}");
        assert_names_file(&err, &path);
    }
    assert!(file.get_f64("k.bb").unwrap() == 7.0);
    assert_eq!(file.get_array("k.arr").unwrap().len(), 4);
    let err = file.dequantize("nope").unwrap_err();
    assert!(matches!(&err, ModelError::MissingTensor { name, .. } if name == "nope"), "{err}");
    assert_names_file(&err, &path);
    assert!(matches!(file.tensor_data("nope"), Err(ModelError::MissingTensor { .. })));
    assert!(file.get("nope").is_none() && file.tensor_info("nope").is_none());
    let err = GgufFile::open(tmp.path("does-not-exist.gguf")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

#[test]
fn value_accessors() {
    use GgufValue::*;
    assert_eq!(I8(-1).as_u64(), None);
    assert_eq!(I32(5).as_u64(), Some(5));
    assert_eq!(U64(u64::MAX).as_i64(), None);
    assert_eq!(U64(3).as_i64(), Some(3));
    assert_eq!(Bool(true).as_u64(), None);
    assert_eq!(Bool(true).as_f64(), None);
    assert_eq!(F32(0.5).as_f64(), Some(0.5));
    assert_eq!(I16(-2).as_f64(), Some(-2.0));
    assert_eq!(String("x".into()).as_str(), Some("x"));
    assert_eq!(Array(vec![U8(1)]).as_array().map(<[_]>::len), Some(1));
    assert_eq!(GgmlType::from_u32(12), GgmlType::Q4_K);
    assert_eq!(GgmlType::from_u32(23).to_string(), "IQ4_XS (id 23)");
    assert_eq!(GgmlType::Q6_K.to_string(), "Q6_K");
    for id in 0..64 {
        assert_eq!(GgmlType::from_u32(id).to_u32(), id);
    }
}
