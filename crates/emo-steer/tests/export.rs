//! Export formats: `.npy` / `.npz` and llama.cpp control vectors, round trips, damaged files, and
//! cross-checks against NumPy and gguf-py (the venv's, which `scripts/setup.sh --test` installs).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use emo_model::gguf::{GgufFile, GgufValue, GgufWriter};
use emo_steer::control_vector::{read_control_vector, write_control_vector};
use emo_steer::npy::{read_npy, read_npz, write_npy, write_npz};
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// A fresh scratch folder under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The venv's Python (`$EMO_PYTHON`, else `.venv/bin/python`, as emo-model's tests find it) with `modules`
/// importable, or a panic saying what to run: `scripts/setup.sh --test` installs them, so a missing one is a
/// broken set-up, never a reason to skip.
fn python_with(modules: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("EMO_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(p.exists(), "{} is missing: run `scripts/setup.sh --test`", p.display());
    let ok = Command::new(&p).args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import {modules}: run `scripts/setup.sh --test`", p.display());
    p
}

/// Runs a Python script with `dir` as its argument; panics with its output if it fails.
fn run_python(python: &Path, script: &str, dir: &Path) -> String {
    let out = Command::new(python).args(["-c", script]).arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "python failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn assert_same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), b.kind());
    assert_eq!(values(a), values(b));
}

/// The error of `r` as text, checking that it names `path`.
fn err_naming<T: std::fmt::Debug>(r: emo_steer::Result<T>, path: &Path) -> String {
    let msg = r.expect_err("expected an error").to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "error does not name {name}: {msg}");
    msg
}

/// A hand-built `.npy` image with any version, descr, order and shape text.
fn npy_image(major: u8, descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    let len_field = if major == 1 { 2 } else { 4 };
    while !(10 + len_field - 2 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Leftover temporary files in `dir` (there must be none after a write, good or bad).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect()
}

// ---------------------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------------------

#[test]
fn npy_round_trip_any_rank() {
    let dir = scratch("npy");
    for shape in [&[7][..], &[3, 5], &[2, 3, 4], &[], &[0, 3]] {
        let t = randn(shape);
        let path = dir.join(format!("r{}.npy", shape.len()));
        write_npy(&path, &t).unwrap();
        assert_same(&read_npy(&path).unwrap(), &t);
        // NumPy's layout: v1.0 header, data aligned to 64 bytes and nothing after it.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let data_start = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(data_start % 64, 0, "{shape:?}");
        assert_eq!(bytes[data_start - 1], b'\n');
        assert_eq!(bytes.len() - data_start, 4 * t.numel());
    }
    // Other float kinds are written as f32.
    let t = randn(&[4, 2]);
    let path = dir.join("f64.npy");
    write_npy(&path, &t.to_kind(Kind::Double)).unwrap();
    assert_same(&read_npy(&path).unwrap(), &t);
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn npy_reads_versions_2_3_f8_and_python2_headers() {
    let dir = scratch("npy-versions");
    let v = [1.5f32, -2.25, 3.0, 0.125, 7.0, -0.5];
    for (major, name) in [(1, "v1"), (2, "v2"), (3, "v3")] {
        let path = dir.join(format!("{name}.npy"));
        std::fs::write(&path, npy_image(major, "<f4", false, "(2, 3)", &f32_bytes(&v))).unwrap();
        let t = read_npy(&path).unwrap();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(values(&t), v);
    }
    let f8: Vec<f64> = vec![0.1, -1e-3, 3.5];
    let path = dir.join("f8.npy");
    std::fs::write(&path, npy_image(1, "<f8", false, "(3L,)", &f8.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())).unwrap();
    let t = read_npy(&path).unwrap();
    assert_eq!(t.kind(), Kind::Float);
    assert_eq!(values(&t), f8.iter().map(|&x| x as f32).collect::<Vec<_>>());
    // Fortran order is harmless for rank 1.
    let path = dir.join("fortran1.npy");
    std::fs::write(&path, npy_image(1, "<f4", true, "(6,)", &f32_bytes(&v))).unwrap();
    assert_eq!(values(&read_npy(&path).unwrap()), v);
}

#[test]
fn npy_bad_files_name_the_file_and_the_problem() {
    let dir = scratch("npy-bad");
    let v = f32_bytes(&[1.0; 6]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("fortran.npy", npy_image(1, "<f4", true, "(2, 3)", &v), "Fortran"),
        ("int.npy", npy_image(1, "<i4", false, "(2, 3)", &v), "'<i4'"),
        ("bigendian.npy", npy_image(1, ">f4", false, "(2, 3)", &v), "'>f4'"),
        ("f2.npy", npy_image(1, "<f2", false, "(3,)", &v), "'<f2'"),
        ("short.npy", npy_image(1, "<f4", false, "(2, 4)", &v), "needs 32 bytes"),
        ("long.npy", npy_image(1, "<f4", false, "(5,)", &v), "needs 20 bytes"),
        (
            "version.npy",
            {
                let mut b = npy_image(1, "<f4", false, "(6,)", &v);
                b[6] = 4;
                b
            },
            "version 4.0",
        ),
        ("noshape.npy", npy_image(1, "<f4", false, "None", &v), "'shape'"),
        ("header.npy", b"\x93NUMPY\x01\x00\xff\x00{'descr'".to_vec(), "truncated"),
        ("garbage.npy", b"this is not numpy at all".to_vec(), "not a NumPy"),
        ("empty.npy", Vec::new(), "not a NumPy"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = err_naming(read_npy(&path), &path);
        assert!(msg.contains(expect), "{name}: expected `{expect}` in: {msg}");
    }
    // A real structured dtype header (descr is a list).
    let path = dir.join("record.npy");
    let mut header = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&f32_bytes(&[1.0]));
    std::fs::write(&path, bytes).unwrap();
    assert!(err_naming(read_npy(&path), &path).contains("structured"));

    // A truncated real file.
    let path = dir.join("cut.npy");
    write_npy(&path, &randn(&[4, 4])).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    err_naming(read_npy(&path), &path);

    let missing = dir.join("missing.npy");
    err_naming(read_npy(&missing), &missing);
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = scratch("atomic");
    let path = dir.join("no-such-folder").join("a.npy");
    err_naming(write_npy(&path, &randn(&[3])), &path);
    let path = dir.join("int.npy");
    err_naming(write_npy(&path, &Tensor::from_slice(&[1i64, 2])), &path);
    err_naming(write_npy(&path, &Tensor::new()), &path);
    assert!(!path.exists());
    // Overwriting replaces the old file whole.
    let path = dir.join("a.npy");
    write_npy(&path, &randn(&[100])).unwrap();
    let t = randn(&[2]);
    write_npy(&path, &t).unwrap();
    assert_same(&read_npy(&path).unwrap(), &t);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

// ---------------------------------------------------------------------------------------------------
// .npz
// ---------------------------------------------------------------------------------------------------

#[test]
fn npz_round_trip_stored_entries_in_order() {
    let dir = scratch("npz");
    let named: Vec<(String, Tensor)> = vec![("resid_post".into(), randn(&[4, 8])), ("anger".into(), randn(&[8])), ("cube".into(), randn(&[2, 3, 4]))];
    let path = dir.join("d.npz");
    write_npz(&path, &named).unwrap();
    let back = read_npz(&path).unwrap();
    assert_eq!(back.len(), 3);
    for ((n1, t1), (n2, t2)) in named.iter().zip(&back) {
        assert_eq!(n1, n2);
        assert_same(t1, t2);
    }
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    for (i, name) in ["resid_post.npy", "anger.npy", "cube.npy"].iter().enumerate() {
        let entry = zip.by_index(i).unwrap();
        assert_eq!(entry.name(), *name);
        assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
    }

    // An empty archive, and one with deflated entries (as numpy.savez_compressed writes).
    let empty = dir.join("empty.npz");
    write_npz(&empty, &[]).unwrap();
    assert!(read_npz(&empty).unwrap().is_empty());
    let deflated = dir.join("deflated.npz");
    let t = randn(&[5, 5]);
    let tmp = dir.join("t.npy");
    write_npy(&tmp, &t).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(&deflated).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("x.npy", opts).unwrap();
    w.write_all(&std::fs::read(&tmp).unwrap()).unwrap();
    w.finish().unwrap();
    let back = read_npz(&deflated).unwrap();
    assert_eq!(back[0].0, "x");
    assert_same(&back[0].1, &t);
    assert!(leftovers(&dir).is_empty());
}

#[test]
fn npz_bad_input_is_reported() {
    let dir = scratch("npz-bad");
    let path = dir.join("dup.npz");
    let msg = err_naming(write_npz(&path, &[("a".into(), randn(&[2])), ("a".into(), randn(&[2]))]), &path);
    assert!(msg.contains("`a`"), "{msg}");
    err_naming(write_npz(&path, &[(String::new(), randn(&[2]))]), &path);
    assert!(!path.exists());

    let garbage = dir.join("garbage.npz");
    std::fs::write(&garbage, b"PK\x03\x04 definitely not a zip").unwrap();
    err_naming(read_npz(&garbage), &garbage);

    // A good archive cut short.
    let cut = dir.join("cut.npz");
    write_npz(&cut, &[("a".into(), randn(&[64]))]).unwrap();
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    err_naming(read_npz(&cut), &cut);

    // An entry that is not an array: the error names the archive and the entry.
    let bad = dir.join("bad-entry.npz");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
    w.start_file("notes.npy", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(b"hello").unwrap();
    w.finish().unwrap();
    let msg = err_naming(read_npz(&bad), &bad);
    assert!(msg.contains("notes.npy"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------
// Control vectors
// ---------------------------------------------------------------------------------------------------

#[test]
fn control_vector_round_trip() {
    let dir = scratch("cvec");
    let (l, d) = (5i64, 16i64);
    let dirs = randn(&[l, d]);
    let path = dir.join("anger.gguf");
    write_control_vector(&path, &dirs, "llama", 2.0).unwrap();
    assert!(leftovers(&dir).is_empty());

    let cv = read_control_vector(&path).unwrap();
    assert_eq!(cv.model_hint, "llama");
    assert_eq!(cv.layer_count, 4);
    assert_eq!(cv.d_model, 16);
    assert_eq!(cv.layers.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(cv.n_layers(), 5);
    let scaled = &dirs * 2.0;
    for (&n, t) in &cv.layers {
        assert_eq!(values(t), values(&scaled.get(n as i64)), "direction.{n}");
    }
    let dense = cv.to_tensor(5).unwrap();
    assert_eq!(dense.size(), [5, 16]);
    assert_eq!(values(&dense.get(0)), vec![0.0; 16], "row 0 is not exported");
    assert_eq!(values(&dense.narrow(0, 1, 4)), values(&scaled.narrow(0, 1, 4)));
    // A bigger model gets zero rows at the end; a smaller one is refused.
    let wide = cv.to_tensor(7).unwrap();
    assert_eq!(values(&wide.narrow(0, 5, 2)), vec![0.0; 32]);
    assert!(cv.to_tensor(4).is_err());

    // The metadata as llama.cpp sees it.
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get("general.architecture"), Some(&GgufValue::String("controlvector".into())));
    assert_eq!(g.get("controlvector.layer_count"), Some(&GgufValue::U32(4)));
    assert!(g.tensor_info("direction.0").is_none());
    assert_eq!(g.tensor_info("direction.4").unwrap().dims, [16]);
}

#[test]
fn control_vector_written_by_others_reads() {
    let dir = scratch("cvec-i32");
    // llama.cpp's cvector-generator writes layer_count as i32; direction tensors may be sparse.
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("controlvector".into()));
    w.add_metadata("controlvector.model_hint", GgufValue::String("qwen2".into()));
    w.add_metadata("controlvector.layer_count", GgufValue::I32(2));
    w.add_f32_tensor("direction.3", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    w.add_f32_tensor("direction.1", &[4], &[-1.0, 0.5, 0.0, 8.0]).unwrap();
    let path = dir.join("i32.gguf");
    w.write(&path).unwrap();
    let cv = read_control_vector(&path).unwrap();
    assert_eq!((cv.model_hint.as_str(), cv.layer_count, cv.d_model), ("qwen2", 2, 4));
    let dense = cv.to_tensor(cv.n_layers()).unwrap();
    assert_eq!(values(&dense), [0.0, 0.0, 0.0, 0.0, -1.0, 0.5, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn control_vector_bad_files_are_reported() {
    let dir = scratch("cvec-bad");
    type Build = fn(&mut GgufWriter);
    let cases: Vec<(&str, Build, &str)> = vec![
        ("arch.gguf", |w| w.add_metadata("general.architecture", GgufValue::String("llama".into())), "`llama`"),
        ("zero.gguf", |w| w.add_f32_tensor("direction.0", &[4], &[0.0; 4]).unwrap(), "direction.0"),
        ("name.gguf", |w| w.add_f32_tensor("blk.1.attn_q.weight", &[4], &[0.0; 4]).unwrap(), "blk.1.attn_q.weight"),
        ("num.gguf", |w| w.add_f32_tensor("direction.x", &[4], &[0.0; 4]).unwrap(), "direction.x"),
        ("neg.gguf", |w| w.add_f32_tensor("direction.-1", &[4], &[0.0; 4]).unwrap(), "direction.-1"),
        ("rank.gguf", |w| w.add_f32_tensor("direction.2", &[2, 2], &[0.0; 4]).unwrap(), "direction.2"),
        ("len.gguf", |w| w.add_f32_tensor("direction.2", &[3], &[0.0; 3]).unwrap(), "direction.2"),
        ("count.gguf", |w| w.add_metadata("controlvector.layer_count", GgufValue::String("4".into())), "layer_count"),
        ("hint.gguf", |w| w.add_metadata("controlvector.model_hint", GgufValue::U32(1)), "model_hint"),
    ];
    for (name, build, expect) in cases {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", GgufValue::String("controlvector".into()));
        w.add_metadata("controlvector.model_hint", GgufValue::String("llama".into()));
        w.add_metadata("controlvector.layer_count", GgufValue::U32(1));
        w.add_f32_tensor("direction.1", &[4], &[1.0; 4]).unwrap();
        build(&mut w);
        let path = dir.join(name);
        w.write(&path).unwrap();
        let msg = err_naming(read_control_vector(&path), &path);
        assert!(msg.contains(expect), "{name}: expected `{expect}` in: {msg}");
    }
    // No tensors at all.
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("controlvector".into()));
    w.add_metadata("controlvector.layer_count", GgufValue::U32(0));
    let path = dir.join("none.gguf");
    w.write(&path).unwrap();
    assert!(err_naming(read_control_vector(&path), &path).contains("no direction"));

    // Truncated and garbage files.
    let path = dir.join("cut.gguf");
    write_control_vector(&path, &randn(&[4, 32]), "llama", 1.0).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    err_naming(read_control_vector(&path), &path);
    let path = dir.join("garbage.gguf");
    std::fs::write(&path, b"not a gguf file, only text").unwrap();
    err_naming(read_control_vector(&path), &path);
    let path = dir.join("missing.gguf");
    err_naming(read_control_vector(&path), &path);

    // Bad inputs to the writer.
    let path = dir.join("w.gguf");
    err_naming(write_control_vector(&path, &randn(&[1, 8]), "llama", 1.0), &path);
    err_naming(write_control_vector(&path, &randn(&[8]), "llama", 1.0), &path);
    err_naming(write_control_vector(&path, &randn(&[3, 8]), "llama", f32::NAN), &path);
    let nan = randn(&[3, 8]);
    let _ = nan.get(2).get(5).fill_(f64::NAN);
    let msg = err_naming(write_control_vector(&path, &nan, "llama", 1.0), &path);
    assert!(msg.contains("row 2"), "{msg}");
    assert!(!path.exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

// ---------------------------------------------------------------------------------------------------
// Cross-checks with NumPy and gguf-py
// ---------------------------------------------------------------------------------------------------

const NUMPY_SCRIPT: &str = r#"
import json, sys
import numpy as np
d = sys.argv[1]
out = {}
a = np.load(d + "/rust.npy")
assert a.dtype == np.float32 and a.flags.c_contiguous, a.dtype
with open(d + "/rust.npy", "rb") as f:
    assert np.lib.format.read_magic(f) == (1, 0)
    np.lib.format.read_array_header_1_0(f)
    assert f.tell() % 64 == 0, f.tell()
out["npy"] = {"shape": list(a.shape), "values": a.ravel().tolist()}
z = np.load(d + "/rust.npz")
out["npz"] = {k: {"shape": list(z[k].shape), "values": z[k].ravel().tolist()} for k in z.files}
out["npz_order"] = list(z.files)
# Files for the Rust reader: numpy's own writers, every version, f8, compressed npz.
rng = np.random.default_rng(0)
x = rng.standard_normal((3, 4, 2)).astype(np.float32)
y = rng.standard_normal((5,))
np.save(d + "/py_f4.npy", x)
np.save(d + "/py_f8.npy", y)
for v in [(1, 0), (2, 0), (3, 0)]:
    with open(d + "/py_v%d.npy" % v[0], "wb") as f:
        np.lib.format.write_array(f, x, version=v)
np.save(d + "/py_fortran.npy", np.asfortranarray(x))
np.save(d + "/py_int.npy", np.arange(6, dtype=np.int32))
np.savez_compressed(d + "/py_z.npz", first=x, second=y.astype(np.float32))
np.savez(d + "/py_s.npz", x, y)
out["x"] = x.ravel().tolist()
out["y"] = y.ravel().tolist()
print(json.dumps(out))
"#;

#[test]
fn numpy_reads_ours_and_we_read_numpys() {
    let python = python_with("numpy");
    let dir = scratch("numpy");
    let a = randn(&[2, 3, 4]);
    write_npy(dir.join("rust.npy"), &a).unwrap();
    let named: Vec<(String, Tensor)> = vec![("zeta".into(), randn(&[6])), ("alpha".into(), randn(&[2, 2])), ("s".into(), randn(&[]))];
    write_npz(dir.join("rust.npz"), &named).unwrap();

    let out: serde_json::Value = serde_json::from_str(&run_python(&python, NUMPY_SCRIPT, &dir)).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let shape = |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    assert_eq!(shape(&out["npy"]["shape"]), a.size());
    assert_eq!(floats(&out["npy"]["values"]), values(&a));
    let order: Vec<&str> = out["npz_order"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(order, ["zeta", "alpha", "s"]);
    for (name, t) in &named {
        assert_eq!(shape(&out["npz"][name]["shape"]), t.size(), "{name}");
        assert_eq!(floats(&out["npz"][name]["values"]), values(t), "{name}");
    }

    let x = floats(&out["x"]);
    let y = floats(&out["y"]);
    for name in ["py_f4", "py_v1", "py_v2", "py_v3"] {
        let t = read_npy(dir.join(format!("{name}.npy"))).unwrap();
        assert_eq!(t.size(), [3, 4, 2], "{name}");
        assert_eq!(values(&t), x, "{name}");
    }
    let t = read_npy(dir.join("py_f8.npy")).unwrap();
    assert_eq!((t.size(), t.kind()), (vec![5], Kind::Float));
    assert_eq!(values(&t), y);
    let msg = read_npy(dir.join("py_fortran.npy")).unwrap_err().to_string();
    assert!(msg.contains("py_fortran.npy") && msg.contains("Fortran"), "{msg}");
    let msg = read_npy(dir.join("py_int.npy")).unwrap_err().to_string();
    assert!(msg.contains("py_int.npy") && msg.contains("'<i4'"), "{msg}");

    let z = read_npz(dir.join("py_z.npz")).unwrap();
    assert_eq!(z.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["first", "second"]);
    assert_eq!(values(&z[0].1), x);
    assert_eq!(values(&z[1].1), y);
    let s = read_npz(dir.join("py_s.npz")).unwrap();
    assert_eq!(s.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["arr_0", "arr_1"]);
    assert_eq!(values(&s[1].1), y);
}

const GGUF_SCRIPT: &str = r#"
import json, sys
import numpy as np
import gguf
d = sys.argv[1]
r = gguf.GGUFReader(d + "/rust.gguf")
f = r.fields
out = {
    "arch": f["general.architecture"].contents(),
    "hint": f["controlvector.model_hint"].contents(),
    "count": f["controlvector.layer_count"].contents(),
    "count_type": f["controlvector.layer_count"].types[0].name,
    "tensors": {t.name: {"type": t.tensor_type.name, "shape": [int(s) for s in t.shape],
                         "values": np.asarray(t.data).ravel().tolist()} for t in r.tensors},
}
# A control vector as repeng / llama.cpp's tools write it, for the Rust reader.
w = gguf.GGUFWriter(d + "/py.gguf", "controlvector")
w.add_string("controlvector.model_hint", "mistral")
w.add_int32("controlvector.layer_count", 2)
w.add_tensor("direction.2", np.array([1.0, 2.0, 3.0], dtype=np.float32))
w.add_tensor("direction.5", np.array([-1.0, 0.25, 9.0], dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(json.dumps(out))
"#;

#[test]
fn gguf_py_reads_our_control_vectors_and_we_read_its() {
    let python = python_with("numpy, gguf");
    let dir = scratch("gguf-py");
    let dirs = randn(&[4, 12]);
    write_control_vector(dir.join("rust.gguf"), &dirs, "llama", -1.5).unwrap();

    let out: serde_json::Value = serde_json::from_str(&run_python(&python, GGUF_SCRIPT, &dir)).unwrap();
    assert_eq!(out["arch"], "controlvector");
    assert_eq!(out["hint"], "llama");
    assert_eq!(out["count"], 3);
    assert_eq!(out["count_type"], "UINT32");
    let tensors = out["tensors"].as_object().unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    assert_eq!(names, ["direction.1", "direction.2", "direction.3"]);
    let scaled = &dirs * -1.5;
    for n in 1..4i64 {
        let t = &tensors[&format!("direction.{n}")];
        assert_eq!(t["type"], "F32");
        assert_eq!(t["shape"], serde_json::json!([12]));
        let got: Vec<f32> = t["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(got, values(&scaled.get(n)), "direction.{n}");
    }

    let cv = read_control_vector(dir.join("py.gguf")).unwrap();
    assert_eq!((cv.model_hint.as_str(), cv.layer_count, cv.d_model), ("mistral", 2, 3));
    assert_eq!(cv.layers.keys().copied().collect::<Vec<_>>(), [2, 5]);
    assert_eq!(values(&cv.layers[&5]), [-1.0, 0.25, 9.0]);
    let dense = cv.to_tensor(6).unwrap();
    assert_eq!(values(&dense.get(2)), [1.0, 2.0, 3.0]);
    assert_eq!(values(&dense.get(0)), [0.0; 3]);
}

#[test]
fn directions_convert_to_ndarray_with_the_same_values() {
    let (post, mid) = (randn(&[6, 3, 5]), randn(&[6, 3, 5]));
    let dirs = emo_steer::EmotionDirections { resid_mid: mid.shallow_clone(), resid_post: post.shallow_clone() };
    let arr = dirs.to_ndarray(emo_steer::Site::ResidPost).unwrap();
    assert_eq!(arr.shape(), &[6, 3, 5]);
    assert_eq!(arr.iter().copied().collect::<Vec<f32>>(), values(&post));
    assert_eq!(dirs.to_ndarray(emo_steer::Site::ResidMid).unwrap()[[2, 1, 4]], f32::try_from(mid.get(2).get(1).get(4)).unwrap());
}
