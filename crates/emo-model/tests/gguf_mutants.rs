//! Issue 23 §4, bad input: over ten thousand deterministic mutants of the real GGUF files go through the
//! loading path a user hits (open, config, tokenizer, dequantisation, and `Model::load_gguf` for some):
//! SmolLM2 cut at every header field boundary (inside the vocabulary arrays at a sample), bit flips in
//! the header and in tensor infos, zero / off-by-one / 2^32 / 2^63 / u64::MAX counts, lengths, types,
//! dims and offsets, edge metadata values, data cut mid-tensor and NaN/Inf block scales; Qwen2.5 0.5B's
//! tensor infos and data the same way, fewer of them (its header costs three times more to parse).
//! Zero panics; every error names the mutant's file, and an error about a tensor names the tensor.
//!
//! Each mutant is a working copy of the model in tmpfs (`/dev/shm` when there is one) patched in place,
//! renamed to a unique name and restored, so no mutant costs a copy of the data section; one copy per
//! thread. About 3 minutes on 2 shared cores (10,436 mutants).
//! Needs the offline models: `scripts/setup.sh --test`; a missing model fails the test, never skips it.
mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

use common::Rng;
use emo_model::gguf::{GgmlType, GgufFile};
use emo_model::{LoadOptions, Model, ModelError, Tokenizer, TransformerConfig, WeightFormat};
use half::f16;

// ---------------------------------------------------------------------------------------------------
// Where the header's fields are
// ---------------------------------------------------------------------------------------------------

/// What a header field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Magic,
    Version,
    TensorCount,
    KvCount,
    KeyLen,
    Key,
    ValueType,
    /// A fixed-size scalar value (its GGUF type in [`Span::vtype`]).
    Value,
    StrLen,
    Str,
    ArrType,
    ArrCount,
    NameLen,
    Name,
    NDims,
    Dim,
    DType,
    Offset,
}

/// The metadata entry or tensor info a field belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    File,
    Meta(usize),
    Tensor(usize),
}

/// One field of the header.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: usize,
    field: Field,
    owner: Owner,
    /// Inside the elements of a metadata array (the vocabulary makes these most of the header).
    in_array: bool,
    /// GGUF value type of a `Value` field.
    vtype: u32,
}

/// The header of a valid GGUF file, walked independently of the loader.
struct Layout {
    spans: Vec<Span>,
    keys: Vec<String>,
    tensor_names: Vec<String>,
    /// Where the first tensor info starts: bytes before it are the metadata (what the tokenizer reads).
    infos_start: usize,
    end_of_infos: usize,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    spans: Vec<Span>,
}

impl Walker<'_> {
    fn take(&mut self, len: usize, field: Field, owner: Owner, in_array: bool, vtype: u32) -> &[u8] {
        self.spans.push(Span { start: self.pos, len, field, owner, in_array, vtype });
        self.pos += len;
        &self.b[self.pos - len..self.pos]
    }

    fn u32(&mut self, field: Field, owner: Owner, in_array: bool) -> u32 {
        u32::from_le_bytes(self.take(4, field, owner, in_array, 0).try_into().unwrap())
    }

    fn u64(&mut self, field: Field, owner: Owner, in_array: bool) -> u64 {
        u64::from_le_bytes(self.take(8, field, owner, in_array, 0).try_into().unwrap())
    }

    fn string(&mut self, len_field: Field, field: Field, owner: Owner, in_array: bool) -> String {
        let n = self.u64(len_field, owner, in_array) as usize;
        String::from_utf8(self.take(n, field, owner, in_array, 0).to_vec()).expect("the real file has UTF-8 strings")
    }

    fn value(&mut self, ty: u32, owner: Owner, in_array: bool) {
        match ty {
            8 => {
                self.string(Field::StrLen, Field::Str, owner, in_array);
            }
            9 => {
                let elem = self.u32(Field::ArrType, owner, in_array);
                let n = self.u64(Field::ArrCount, owner, in_array);
                for _ in 0..n {
                    self.value(elem, owner, true);
                }
            }
            t => {
                let len = match t {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    t => panic!("value type {t} in the real file"),
                };
                self.take(len, Field::Value, owner, in_array, t);
            }
        }
    }
}

fn layout(b: &[u8]) -> Layout {
    let mut w = Walker { b, pos: 0, spans: Vec::new() };
    let top = Owner::File;
    w.take(4, Field::Magic, top, false, 0);
    w.u32(Field::Version, top, false);
    let n_tensors = w.u64(Field::TensorCount, top, false);
    let n_kv = w.u64(Field::KvCount, top, false);
    let mut keys = Vec::new();
    for i in 0..n_kv as usize {
        keys.push(w.string(Field::KeyLen, Field::Key, Owner::Meta(i), false));
        let ty = w.u32(Field::ValueType, Owner::Meta(i), false);
        w.value(ty, Owner::Meta(i), false);
    }
    let infos_start = w.pos;
    let mut tensor_names = Vec::new();
    for i in 0..n_tensors as usize {
        let o = Owner::Tensor(i);
        tensor_names.push(w.string(Field::NameLen, Field::Name, o, false));
        let nd = w.u32(Field::NDims, o, false);
        for _ in 0..nd {
            w.u64(Field::Dim, o, false);
        }
        w.u32(Field::DType, o, false);
        w.u64(Field::Offset, o, false);
    }
    Layout { end_of_infos: w.pos, spans: w.spans, keys, tensor_names, infos_start }
}

// ---------------------------------------------------------------------------------------------------
// Mutants
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The file cut at a header field boundary.
    Truncate,
    /// One bit flipped anywhere in the header.
    FlipHeader,
    /// One bit flipped in a tensor info.
    FlipInfo,
    /// A count, length, type, dim or offset set to 0, 2^32, 2^63, u64::MAX, ...
    Huge,
    /// A scalar metadata value (or a token type) set to an edge value.
    MetaValue,
    /// The file cut inside a tensor's data.
    TruncateData,
    /// A quantised block's scale set to NaN or ±Inf.
    NanScale,
}

#[derive(Clone, Debug)]
enum Edit {
    /// New bytes at an offset (same length: the rest of the file is unchanged).
    Patch(usize, Vec<u8>),
    /// The file cut to this many bytes.
    Cut(u64),
}

#[derive(Clone, Debug)]
struct Mutant {
    kind: Kind,
    edit: Edit,
    /// What was changed, for the failure list.
    what: String,
    /// The tensor (by index in the original file) the edit concerns, to dequantize it.
    tensor: Option<usize>,
    /// The tensor every error must name: an edit of its dims, type or offset leaves the rest of the
    /// header as it was, so whatever fails concerns that tensor.
    must_name: Option<String>,
    /// Whether what the tokenizer reads (the `tokenizer.*` keys) may differ from the original's; if not,
    /// building it would repeat the unmutated file's test at ~0.1 s a time.
    touches_tokenizer: bool,
    /// Send it through the whole `Model::load_gguf` whenever the cheaper stages pass: an edited
    /// dimension of the config is what reaches LibTorch's reshapes.
    full_load: bool,
}

fn describe(span: &Span, lay: &Layout) -> String {
    let owner = match span.owner {
        Owner::File => String::new(),
        Owner::Meta(i) => format!(" of key `{}`", lay.keys[i]),
        Owner::Tensor(i) => format!(" of tensor `{}`", lay.tensor_names[i]),
    };
    let elem = if span.in_array { " (array element)" } else { "" };
    format!("{:?}{owner}{elem} @ {}", span.field, span.start)
}

/// Whether a bit flip or a new value in `span` keeps the header's layout, so that errors must concern
/// the span's tensor.
fn layout_preserving(span: &Span) -> Option<usize> {
    match (span.field, span.owner) {
        (Field::Dim | Field::DType | Field::Offset, Owner::Tensor(i)) => Some(i),
        _ => None,
    }
}

fn tensor_of(span: &Span) -> Option<usize> {
    match span.owner {
        Owner::Tensor(i) => Some(i),
        _ => None,
    }
}

/// The `{arch}.*` metadata keys the config reads as widths (a smaller `block_count` is only a shallower
/// model, and slow to load in full).
const DIMENSION_KEYS: [&str; 6] =
    [".embedding_length", ".feed_forward_length", ".attention.head_count", ".attention.head_count_kv", ".attention.key_length", ".vocab_size"];

/// Edge values for a field of `width` bytes holding `orig`: off by one, doubled, halved, and the powers
/// of two where sizes overflow; with `small`, the small counts a config value could plausibly hold too.
fn edge_values(width: usize, orig: u64, small: bool) -> Vec<u64> {
    let max = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
    let mut v = vec![0, 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63, u64::MAX];
    v.extend([orig.wrapping_add(1), orig.wrapping_sub(1), orig.wrapping_mul(2), orig / 2]);
    if small {
        v.extend([2, 3, 5, 7, 15, 63, 1000, 1 << 16, 1 << 24, orig.wrapping_add(32)]);
    }
    let mut v: Vec<u64> = v.into_iter().filter(|&x| x <= max && x != orig).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn le_bytes(value: u64, width: usize) -> Vec<u8> {
    value.to_le_bytes()[..width].to_vec()
}

/// How many mutants of each kind one model gets.
struct Plan {
    tag: &'static str,
    alias: &'static str,
    /// Random bit flips anywhere in the header.
    header_flips: usize,
    /// Random bit flips in tensor infos.
    info_flips: usize,
    /// Tensor infos that get a cut at each of their field boundaries (the first four, the last four, and
    /// random others).
    cut_sample: usize,
    /// Tensor infos, picked the same way, that get every edge value in each field.
    huge_sample: usize,
    /// Cuts and edge values in the metadata's fields, and edge values in its scalar values.
    metadata_edges: bool,
    /// Tensors whose data is cut (three ways), and whose block scales are made NaN / ±Inf.
    data_tensors: usize,
    /// `Model::load_gguf` for every edited dimension key that passes the cheaper stages.
    full_dims: bool,
    /// `Model::load_gguf` for this many mutants of each other kind that pass the cheaper stages.
    full_per_kind: usize,
}

/// Every mutant of one file, as `plan` says.
fn mutants(bytes: &[u8], lay: &Layout, file: &GgufFile, rng: &mut Rng, plan: &Plan) -> Vec<Mutant> {
    let header = &bytes[..lay.end_of_infos];
    let mut out = Vec::new();
    // A flip or new value in a length, count or type shifts everything after it; in a value, only its key.
    let tok = |span: &Span| match (span.owner, span.field) {
        (Owner::Tensor(_), _) => false,
        (Owner::Meta(i), Field::Value | Field::Str) => lay.keys[i].starts_with("tokenizer."),
        _ => true,
    };

    let n_tensors = lay.tensor_names.len();
    let mut pick = |n: usize| {
        let mut sample: Vec<usize> = (0..4).chain(n_tensors - 4..n_tensors).collect();
        while sample.len() < n.min(n_tensors) {
            sample.push(rng.below(n_tensors));
            sample.sort_unstable();
            sample.dedup();
        }
        sample.sort_unstable();
        sample
    };
    let (cut_sample, huge_sample) = (pick(plan.cut_sample), pick(plan.huge_sample));
    let in_sample = |s: &Span, sample: &[usize]| match s.owner {
        Owner::Tensor(i) => sample.binary_search(&i).is_ok(),
        _ => !s.in_array && (plan.metadata_edges || s.owner == Owner::File),
    };

    // (a) Truncation at every field boundary outside array elements, and at a sample inside each array
    // (the vocabulary alone has ~100k), plus inside the padding before the data.
    let mut cuts = Vec::new();
    let mut array_boundaries: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for s in &lay.spans {
        match (s.in_array, s.owner) {
            (true, Owner::Meta(i)) => array_boundaries.entry(i).or_default().push(s.start),
            _ if in_sample(s, &cut_sample) => cuts.push((s.start, describe(s, lay))),
            _ => {}
        }
    }
    for (key, starts) in array_boundaries.into_iter().filter(|_| plan.metadata_edges) {
        let mut picked: Vec<usize> = starts.iter().take(8).chain(starts.iter().rev().take(8)).copied().collect();
        picked.extend((0..48).map(|_| starts[rng.below(starts.len())]));
        picked.sort_unstable();
        picked.dedup();
        cuts.extend(picked.into_iter().map(|at| (at, format!("inside array `{}` @ {at}", lay.keys[key]))));
    }
    cuts.push((lay.end_of_infos, "end of tensor infos".into()));
    cuts.push((file.data_offset() as usize, "data offset (no data)".into()));
    for (at, what) in cuts {
        out.push(Mutant {
            kind: Kind::Truncate,
            edit: Edit::Cut(at as u64),
            what,
            tensor: None,
            must_name: None,
            touches_tokenizer: true,
            full_load: false,
        });
    }

    // (b) Bit flips anywhere in the header (mostly the vocabulary), and in the tensor infos.
    let span_at = |pos: usize| -> &Span {
        let i = lay.spans.partition_point(|s| s.start <= pos) - 1;
        &lay.spans[i]
    };
    for _ in 0..plan.header_flips {
        let pos = rng.below(header.len());
        let bit = rng.below(8);
        let s = span_at(pos);
        out.push(Mutant {
            kind: Kind::FlipHeader,
            edit: Edit::Patch(pos, vec![header[pos] ^ (1 << bit)]),
            what: format!("bit {bit} of byte {pos} in {}", describe(s, lay)),
            tensor: tensor_of(s),
            must_name: None,
            touches_tokenizer: tok(s),
            full_load: false,
        });
    }
    let info_spans: Vec<&Span> = lay.spans.iter().filter(|s| s.start >= lay.infos_start && s.len > 0).collect();
    for _ in 0..plan.info_flips {
        // Numeric fields twice as often as names: they are what the loader computes with.
        let s = loop {
            let s = info_spans[rng.below(info_spans.len())];
            if s.field != Field::Name || rng.below(3) == 0 {
                break s;
            }
        };
        let pos = s.start + rng.below(s.len);
        let bit = rng.below(8);
        out.push(Mutant {
            kind: Kind::FlipInfo,
            edit: Edit::Patch(pos, vec![header[pos] ^ (1 << bit)]),
            what: format!("bit {bit} of byte {pos} in {}", describe(s, lay)),
            tensor: tensor_of(s),
            must_name: layout_preserving(s).map(|i| lay.tensor_names[i].clone()),
            touches_tokenizer: false,
            full_load: false,
        });
    }

    // (c) Huge (and zero, and off-by-one) counts, lengths, types, dims and offsets.
    for s in &lay.spans {
        let countlike = matches!(
            s.field,
            Field::TensorCount
                | Field::KvCount
                | Field::KeyLen
                | Field::ValueType
                | Field::StrLen
                | Field::ArrType
                | Field::ArrCount
                | Field::NameLen
                | Field::NDims
                | Field::Dim
                | Field::DType
                | Field::Offset
        );
        if !countlike || !in_sample(s, &huge_sample) {
            continue;
        }
        let orig = header[s.start..s.start + s.len].iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        for v in edge_values(s.len, orig, false) {
            out.push(Mutant {
                kind: Kind::Huge,
                edit: Edit::Patch(s.start, le_bytes(v, s.len)),
                what: format!("{} = {v}", describe(s, lay)),
                tensor: tensor_of(s),
                must_name: layout_preserving(s).map(|i| lay.tensor_names[i].clone()),
                touches_tokenizer: tok(s),
                full_load: false,
            });
        }
    }

    // Scalar metadata values (the config's dims, token ids, flags) at edge values; a sample of token types.
    let mut token_types = Vec::new();
    for s in lay.spans.iter().filter(|s| s.field == Field::Value && plan.metadata_edges) {
        let key = match s.owner {
            Owner::Meta(i) => &lay.keys[i],
            _ => continue,
        };
        let dimension = DIMENSION_KEYS.iter().any(|k| key.ends_with(k));
        if s.in_array {
            if key == "tokenizer.ggml.token_type" {
                token_types.push(*s);
            }
            continue;
        }
        let orig = header[s.start..s.start + s.len].iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        let values: Vec<Vec<u8>> = match s.vtype {
            6 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e-30, 1e30].iter().map(|v| v.to_le_bytes().to_vec()).collect(),
            12 => [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0, 1e-300, 1e300].iter().map(|v| v.to_le_bytes().to_vec()).collect(),
            7 => vec![vec![0], vec![1], vec![2], vec![255]],
            _ => edge_values(s.len, orig, true).into_iter().map(|v| le_bytes(v, s.len)).collect(),
        };
        for v in values {
            out.push(Mutant {
                kind: Kind::MetaValue,
                what: format!("{} = {v:02x?}", describe(s, lay)),
                edit: Edit::Patch(s.start, v),
                tensor: None,
                must_name: None,
                touches_tokenizer: tok(s),
                full_load: dimension && plan.full_dims,
            });
        }
    }
    // A chat template that no longer compiles: `{%` opening an unterminated `{#` comment.
    if let Some(k) = lay.keys.iter().position(|k| k == "tokenizer.chat_template" && plan.metadata_edges) {
        let s = lay.spans.iter().find(|s| s.owner == Owner::Meta(k) && s.field == Field::Str).expect("template bytes");
        if let Some(at) = header[s.start..s.start + s.len].windows(2).position(|w| w == b"{%") {
            out.push(Mutant {
                kind: Kind::MetaValue,
                edit: Edit::Patch(s.start + at + 1, b"#".to_vec()),
                what: format!("`{{%` at {} of the chat template made `{{#`", s.start + at),
                tensor: None,
                must_name: None,
                touches_tokenizer: true,
                full_load: true,
            });
        }
    }
    for _ in 0..token_types.len().min(15) {
        let s = token_types[rng.below(token_types.len())];
        for v in [-1i32, 0, 2, 3, 4, 5, 6, i32::MAX] {
            let what = format!("{} = {v}", describe(&s, lay));
            let edit = Edit::Patch(s.start, v.to_le_bytes()[..s.len].to_vec());
            out.push(Mutant { kind: Kind::MetaValue, edit, what, tensor: None, must_name: None, touches_tokenizer: true, full_load: false });
        }
    }

    // (d) NaN / ±Inf in the first, a middle and the last block's scales of a sample of tensors.
    let infos = file.tensors();
    for _ in 0..plan.data_tensors {
        let i = rng.below(infos.len());
        let t = &infos[i];
        let (Some(ts), Some(n_bytes)) = (t.dtype.type_size(), t.n_bytes()) else { continue };
        let n_blocks = (n_bytes / ts as u64) as usize;
        let block = [0, n_blocks / 2, n_blocks - 1][rng.below(3)];
        let scale_at: &[usize] = match t.dtype {
            GgmlType::Q6_K => &[208],
            // d and the min / dmin after it.
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            _ => &[0],
        };
        let specials: Vec<Vec<u8>> = if t.dtype == GgmlType::F32 {
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].iter().map(|v| v.to_le_bytes().to_vec()).collect()
        } else {
            [f16::NAN, f16::INFINITY, f16::NEG_INFINITY].iter().map(|v| v.to_le_bytes().to_vec()).collect()
        };
        for &at in scale_at {
            for v in &specials {
                let pos = t.offset as usize + block * ts + at;
                out.push(Mutant {
                    kind: Kind::NanScale,
                    edit: Edit::Patch(pos, v.clone()),
                    what: format!("scale byte {at} of block {block} of `{}` ({}) = {v:02x?}", t.name, t.dtype),
                    tensor: Some(i),
                    must_name: None,
                    touches_tokenizer: false,
                    full_load: false,
                });
            }
        }
    }

    // (d) The file cut inside a tensor's data (one byte in, half way, one byte short) for a sample of tensors.
    for _ in 0..plan.data_tensors {
        let i = rng.below(infos.len());
        let t = &infos[i];
        let Some(n) = t.n_bytes() else { continue };
        for cut in [t.offset + 1, t.offset + n / 2, t.offset + n - 1] {
            let what = format!("data cut at {cut}, inside `{}` ({}..{})", t.name, t.offset, t.offset + n);
            out.push(Mutant {
                kind: Kind::TruncateData,
                edit: Edit::Cut(cut),
                what,
                tensor: Some(i),
                must_name: None,
                touches_tokenizer: false,
                full_load: false,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Running them
// ---------------------------------------------------------------------------------------------------

thread_local! {
    /// Set while a mutant runs on this thread: its panics are recorded, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The last recorded panic's message and location on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

/// A working copy of a model in the scratch folder, renamed to each mutant's name.
struct Subject {
    tag: String,
    dir: PathBuf,
    current: PathBuf,
}

impl Subject {
    /// The copy in the first of `dirs` with room for it (a container's `/dev/shm` may be 64 MB).
    fn new(tag: String, original: &[u8], dirs: &[PathBuf]) -> Self {
        let mut failures = Vec::new();
        for dir in dirs {
            let current = dir.join(format!("{tag}-work.gguf"));
            match std::fs::write(&current, original) {
                Ok(()) => return Subject { tag, dir: dir.clone(), current },
                Err(e) => {
                    let _ = std::fs::remove_file(&current);
                    failures.push(format!("{}: {e}", current.display()));
                }
            }
        }
        panic!("no room for a working copy: {failures:?}");
    }

    /// Renames the copy to a name unique to mutant `n`, so an error naming the file is seen to name
    /// this one.
    fn rename(&mut self, kind: Kind, n: usize) -> PathBuf {
        let next = self.dir.join(format!("{}-{kind:?}-{n:05}.gguf", self.tag));
        std::fs::rename(&self.current, &next).unwrap();
        self.current = next.clone();
        next
    }

    fn file(&self) -> File {
        OpenOptions::new().write(true).open(&self.current).unwrap()
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.current);
    }
}

/// What happened to the mutants of one kind.
#[derive(Default, Debug)]
struct Tally {
    loaded: usize,
    errors: usize,
    panics: usize,
    full_loads: usize,
    /// Summed over the workers.
    seconds: f64,
}

/// Tallies by kind, panics and misnamed errors, from one worker or merged.
#[derive(Default)]
struct Outcome {
    tallies: BTreeMap<Kind, Tally>,
    panics: Vec<String>,
    problems: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        for (kind, t) in other.tallies {
            let mine = self.tallies.entry(kind).or_default();
            mine.loaded += t.loaded;
            mine.errors += t.errors;
            mine.panics += t.panics;
            mine.full_loads += t.full_loads;
            mine.seconds += t.seconds;
        }
        self.panics.extend(other.panics);
        self.problems.extend(other.problems);
    }
}

/// The largest tensor a mutant dequantizes (SmolLM2's embedding has 28M elements).
const MAX_DEQUANTIZED: u64 = 32 << 20;

/// How far down the loading path a mutant goes.
#[derive(Clone, Copy)]
struct Depth {
    tokenizer: bool,
    full: bool,
}

/// Checks one error: it names the file, and the tensor the mutant concerns when there is one.
fn check_error(e: &ModelError, path: &Path, stage: &str, m: &Mutant, tensor: Option<&str>, problems: &mut Vec<String>) {
    let msg = e.to_string();
    let file = path.file_name().unwrap().to_string_lossy();
    if !msg.contains(&*file) {
        problems.push(format!("{:?} [{}] {stage}: error does not name the file: {msg}", m.kind, m.what));
    }
    for name in m.must_name.as_deref().into_iter().chain(tensor) {
        if !msg.contains(&format!("`{name}`")) {
            problems.push(format!("{:?} [{}] {stage}: error does not name tensor `{name}`: {msg}", m.kind, m.what));
        }
    }
}

/// Sends the mutant file through the loader: open, config, tokenizer (when its input changed), the
/// mutated tensor's dequantisation, and `Model::load_gguf` when `depth.full` and the rest passed.
/// Returns whether every stage succeeded; errors are checked into `problems`.
fn load(path: &Path, m: &Mutant, depth: Depth, problems: &mut Vec<String>) -> bool {
    let f = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            check_error(&e, path, "open", m, None, problems);
            return false;
        }
    };
    let mut ok = true;
    if let Err(e) = TransformerConfig::from_gguf(&f) {
        check_error(&e, path, "config", m, None, problems);
        ok = false;
    }
    if depth.tokenizer {
        if let Err(e) = Tokenizer::from_gguf(&f) {
            check_error(&e, path, "tokenizer", m, None, problems);
            ok = false;
        }
    }
    // The mutated tensor, by position (a flipped name is still the tensor at that index); not Qwen's
    // 136M-element embedding, a second a time (its bounds were checked by `open`).
    if let Some(info) = m.tensor.and_then(|i| f.tensors().get(i)).filter(|t| t.n_elements() <= MAX_DEQUANTIZED) {
        let name = info.name.clone();
        match f.dequantize(&name) {
            Ok(v) => assert_eq!(v.len() as u64, info.n_elements(), "`{name}` dequantized to the wrong element count"),
            Err(e) => {
                check_error(&e, path, "dequantize", m, Some(&name), problems);
                ok = false;
            }
        }
    }
    drop(f);
    if ok && depth.full {
        // Both loading paths: dequantized, and packed int4 (which reads the quantized blocks itself).
        for weights in [WeightFormat::Dequantized, WeightFormat::Packed] {
            let opts = LoadOptions::new(tch::Device::Cpu, tch::Kind::Float).weights(weights);
            if let Err(e) = Model::load_gguf(path, opts) {
                check_error(&e, path, "Model::load_gguf", m, None, problems);
                ok = false;
                break;
            }
        }
    }
    ok
}

/// Runs `list` (patches, then cuts from the longest down) on one working copy.
fn run_worker(tag: String, list: Vec<&Mutant>, original: &[u8], dirs: &[PathBuf], full_per_kind: usize) -> Outcome {
    let mut subject = Subject::new(tag.clone(), original, dirs);
    let mut out = Outcome::default();
    // Full loads of the undirected kinds are slow: `full_per_kind`, spread over the kind's mutants.
    let mut per_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for m in &list {
        *per_kind.entry(m.kind).or_default() += 1;
    }
    let mut seen: BTreeMap<Kind, usize> = BTreeMap::new();
    for (n, m) in list.iter().enumerate() {
        let path = subject.rename(m.kind, n);
        match &m.edit {
            Edit::Patch(at, bytes) => subject.file().write_all_at(bytes, *at as u64).unwrap(),
            Edit::Cut(len) => subject.file().set_len(*len).unwrap(),
        }
        let tally = out.tallies.entry(m.kind).or_default();
        let index = seen.entry(m.kind).or_default();
        *index += 1;
        let stride = per_kind[&m.kind] / full_per_kind.max(1);
        let spread = tally.full_loads < full_per_kind && *index > tally.full_loads * stride;
        let full = (m.full_load || spread) && matches!(m.edit, Edit::Patch(..));
        let depth = Depth { tokenizer: m.touches_tokenizer, full };
        let t0 = Instant::now();
        QUIET.with(|q| q.set(true));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut found = Vec::new();
            let ok = load(&path, m, depth, &mut found);
            (ok, found)
        }));
        QUIET.with(|q| q.set(false));
        tally.seconds += t0.elapsed().as_secs_f64();
        match result {
            Ok((ok, found)) => {
                out.problems.extend(found);
                if ok {
                    tally.loaded += 1;
                    tally.full_loads += usize::from(full);
                } else {
                    tally.errors += 1;
                }
            }
            Err(payload) => {
                tally.panics += 1;
                // The hook's message has the location; a panic on a rayon thread leaves only the payload.
                let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
                    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
                });
                // LibTorch's messages carry a C++ backtrace.
                let msg: String = msg.split("\\nException raised").next().unwrap_or_default().chars().take(400).collect();
                let line = format!("{tag} {:?} [{}]: {msg}", m.kind, m.what);
                eprintln!("PANIC {line}");
                out.panics.push(line);
            }
        }
        if n % 2000 == 1999 {
            eprintln!("{tag}: {} of {} mutants", n + 1, list.len());
        }
        if let Edit::Patch(at, bytes) = &m.edit {
            subject.file().write_all_at(&original[*at..*at + bytes.len()], *at as u64).unwrap();
        }
    }
    out
}

/// Runs every mutant of one model on `workers` threads, each with its own working copy.
fn run_model(plan: &Plan, dirs: &[PathBuf], workers: usize) -> Outcome {
    let src = common::model_file(plan.alias);
    let original = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let reference = GgufFile::open(&src).unwrap_or_else(|e| panic!("the unmutated model does not open: {e}"));
    let lay = layout(&original);
    assert_eq!(lay.tensor_names.len(), reference.tensors().len());
    assert!(lay.end_of_infos as u64 <= reference.data_offset());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ original.len() as u64);
    let mut list = mutants(&original, &lay, &reference, &mut rng, plan);
    drop(reference);
    // Patches first (each is undone), then cuts from the longest down, so each cut only shortens the copy.
    list.sort_by_key(|m| match m.edit {
        Edit::Patch(..) => (0, 0),
        Edit::Cut(c) => (1, u64::MAX - c),
    });
    let mut outcome = Outcome::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine: Vec<&Mutant> = list.iter().skip(w).step_by(workers).collect();
                let (original, tag) = (&original, format!("{}{w}", plan.tag));
                let full = plan.full_per_kind.div_ceil(workers);
                scope.spawn(move || run_worker(tag, mine, original, dirs, full))
            })
            .collect();
        for h in handles {
            outcome.merge(h.join().expect("a worker failed outside the loader"));
        }
    });
    outcome
}

/// Where the working copies go: tmpfs first when there is one (they are rewritten thousands of times),
/// the system temp dir as the fallback.
fn scratch_dirs() -> Vec<PathBuf> {
    let name = format!("emo-gguf-mutants-{}", std::process::id());
    let mut dirs = Vec::new();
    for base in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        let dir = base.join(&name);
        if base.is_dir() && std::fs::create_dir_all(&dir).is_ok() {
            dirs.push(dir);
        }
    }
    assert!(!dirs.is_empty(), "no scratch folder for the mutants");
    dirs
}

/// Removes the scratch folders however the test ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn ten_thousand_mutants_of_the_real_files_never_panic() {
    let start = Instant::now();
    install_panic_recorder();
    let dirs = scratch_dirs();
    let _cleanup = Cleanup(dirs.clone());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let plans = [
        Plan {
            tag: "smollm2",
            alias: "smollm2-135m",
            header_flips: 600,
            info_flips: 4000,
            cut_sample: 272,
            huge_sample: 20,
            metadata_edges: true,
            data_tensors: 40,
            full_dims: true,
            full_per_kind: 2,
        },
        // Qwen's header is three times SmolLM2's (a 152k vocabulary), so every mutant costs three times
        // more: its tensor infos (its own quant types, biases, Qwen2 layout), fewer of them.
        Plan {
            tag: "qwen",
            alias: "qwen2.5-coder-0.5b",
            header_flips: 0,
            info_flips: 150,
            cut_sample: 10,
            huge_sample: 8,
            metadata_edges: false,
            data_tensors: 20,
            full_dims: false,
            full_per_kind: 0,
        },
    ];
    let mut all = Outcome::default();
    for plan in &plans {
        let t0 = Instant::now();
        let outcome = run_model(plan, &dirs, workers);
        for (kind, t) in &outcome.tallies {
            eprintln!(
                "{:>8} {kind:>12?}: {:>5} mutants: {:>5} load, {:>5} errors, {} panics ({} full Model::load_gguf), {:.1} s",
                plan.tag,
                t.loaded + t.errors + t.panics,
                t.loaded,
                t.errors,
                t.panics,
                t.full_loads,
                t.seconds
            );
        }
        eprintln!("{:>8}: {:.1} s on {workers} threads", plan.tag, t0.elapsed().as_secs_f64());
        all.merge(outcome);
    }
    let total: usize = all.tallies.values().map(|t| t.loaded + t.errors + t.panics).sum();
    eprintln!("{total} mutants in {:.1} s", start.elapsed().as_secs_f64());
    let (panics, problems) = (&all.panics, &all.problems);
    assert!(panics.is_empty(), "{} mutants panicked; the first:\n{}", panics.len(), panics[..panics.len().min(20)].join("\n"));
    assert!(
        problems.is_empty(),
        "{} errors do not name what they should; the first:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert!(total >= 10_000, "only {total} mutants");
}

// ---------------------------------------------------------------------------------------------------
// Regressions: mutants that once panicked
// ---------------------------------------------------------------------------------------------------

/// SmolLM2 edited by `edit`, written to `name`.gguf in a fresh scratch folder.
fn smollm2_edited(name: &str, edit: impl FnOnce(&Layout, &mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(common::model_file("smollm2-135m")).unwrap();
    let lay = layout(&bytes);
    edit(&lay, &mut bytes);
    let path = common::scratch(name).join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The span of metadata key `key`'s value of field kind `field`.
fn value_span(lay: &Layout, key: &str, field: Field) -> Span {
    let k = lay.keys.iter().position(|k| k == key).unwrap_or_else(|| panic!("no key `{key}` in SmolLM2"));
    *lay.spans.iter().find(|s| s.owner == Owner::Meta(k) && s.field == field).unwrap()
}

/// SmolLM2 with the scalar value of metadata key `key` replaced by `value` (its own width).
fn smollm2_with(key: &str, value: u64, name: &str) -> PathBuf {
    smollm2_edited(name, |lay, bytes| {
        let s = value_span(lay, key, Field::Value);
        bytes[s.start..s.start + s.len].copy_from_slice(&le_bytes(value, s.len));
    })
}

/// A chat template that no longer compiles failed `Model::load_gguf` with "chat template: syntax error",
/// naming neither the file nor the key.
#[test]
fn a_chat_template_that_does_not_compile_is_an_error_naming_the_file_and_key() {
    let path = smollm2_edited("badtemplate", |lay, bytes| {
        let s = value_span(lay, "tokenizer.chat_template", Field::Str);
        let at = bytes[s.start..s.start + s.len].windows(2).position(|w| w == b"{%").expect("a `{%` in the template");
        bytes[s.start + at + 1] = b'#';
    });
    let opts = LoadOptions::new(tch::Device::Cpu, tch::Kind::Float);
    let err = Model::load_gguf(&path, opts).err().expect("a template with an unterminated comment compiled").to_string();
    assert!(err.contains("badtemplate.gguf") && err.contains("`tokenizer.chat_template`") && err.contains("syntax error"), "{err}");
}

/// 15 heads of width 576 / 15 = 38 pass the config's own checks (15 is a multiple of the 3 KV heads, 38 is
/// even) but do not tile the 576 query rows: the loader's per-head reshape of Q panicked inside tch.
#[test]
fn a_head_count_that_does_not_tile_the_query_rows_is_an_error_naming_the_tensor() {
    let path = smollm2_with("llama.attention.head_count", 15, "heads15");
    let opts = LoadOptions::new(tch::Device::Cpu, tch::Kind::Float);
    let err = Model::load_gguf(&path, opts).err().expect("15 heads of 38 loaded from 576-row query weights");
    let msg = err.to_string();
    // The first of Q (570 rows expected) and K (3 heads of 38 = 114) in file order.
    match &err {
        ModelError::ShapeMismatch { name, expected, .. } => {
            let want: &[i64] = if name == "blk.0.attn_q.weight" { &[570, 576] } else { &[114, 576] };
            assert!(["blk.0.attn_q.weight", "blk.0.attn_k.weight"].contains(&name.as_str()) && expected == want, "{msg}");
        }
        _ => panic!("not a shape mismatch: {msg}"),
    }
    assert!(msg.contains("heads15.gguf") && msg.contains("`blk.0.attn_"), "{msg}");
}
