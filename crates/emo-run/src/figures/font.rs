//! The font of the PNG text, and glyph-less metrics for the SVG when it is missing.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use plotters::style::{register_font, FontStyle};

use crate::error::{Result, RunError};

/// Registers the font file at `path` with plotters (once per path) and returns its family name, or why not.
pub(super) fn font_family(path: &Path) -> std::result::Result<String, String> {
    static REGISTERED: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut registered = REGISTERED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(family) = registered.get(path) {
        return Ok(family.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    let magic = bytes.get(..4).unwrap_or_default();
    if ![&b"\0\x01\0\0"[..], &b"OTTO"[..], &b"true"[..], &b"ttcf"[..]].contains(&magic) {
        return Err("is not a TrueType or OpenType font".into());
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().replace([',', '"', '\''], "")).unwrap_or_default();
    let mut family = format!("{stem}, sans-serif");
    if registered.values().any(|f| *f == family) {
        family = format!("{stem}{}, sans-serif", registered.len());
    }
    // plotters keeps fonts for the life of the process; this leaks one file per distinct path.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(&family, FontStyle::Normal, bytes).map_err(|_| "is not a usable TrueType or OpenType font")?;
    registered.insert(path.to_path_buf(), family.clone());
    Ok(family)
}

/// A family for the SVG when the font file is missing: a glyph-less font whose every character is 0.62 em
/// wide, enough for plotters to lay text out; SVG viewers draw the text with their own sans-serif font.
pub(super) fn fallback_family() -> Result<String> {
    const FAMILY: &str = "DejaVu Sans, Verdana, sans-serif";
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = Box::leak(metrics_only_font().into_boxed_slice());
        register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(FAMILY.to_string())
    } else {
        Err(RunError::Invalid("figure: cannot set up the fallback font metrics".into()))
    }
}

/// A minimal TrueType font: one empty glyph 620/1000 em wide (tables head, hhea, hmtx, maxp).
pub(super) fn metrics_only_font() -> Vec<u8> {
    pub(super) fn put16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    pub(super) fn put32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    let mut head = Vec::new();
    put32(&mut head, 0x0001_0000); // version
    put32(&mut head, 0x0001_0000); // font revision
    put32(&mut head, 0); // checksum adjustment
    put32(&mut head, 0x5F0F_3CF5); // magic
    put16(&mut head, 0); // flags
    put16(&mut head, 1000); // units per em
    head.extend_from_slice(&[0; 16]); // created, modified
    for x in [0i16, -240, 620, 760] {
        put16(&mut head, x as u16); // bounding box
    }
    for x in [0u16, 8, 2, 0, 0] {
        put16(&mut head, x); // mac style, lowest ppem, direction hint, loca format, glyph data format
    }
    let mut hhea = Vec::new();
    put32(&mut hhea, 0x0001_0000);
    for x in [760i16, -240, 0, 620, 0, 0, 620, 1, 0, 0, 0, 0, 0, 0, 0] {
        put16(&mut hhea, x as u16); // ascender .. metric data format
    }
    put16(&mut hhea, 1); // number of h-metrics
    let mut hmtx = Vec::new();
    put16(&mut hmtx, 620);
    put16(&mut hmtx, 0);
    let mut maxp = Vec::new();
    put32(&mut maxp, 0x0000_5000);
    put16(&mut maxp, 1);

    let tables: [(&[u8; 4], Vec<u8>); 4] = [(b"head", head), (b"hhea", hhea), (b"hmtx", hmtx), (b"maxp", maxp)];
    let mut out = Vec::new();
    put32(&mut out, 0x0001_0000);
    for x in [4u16, 64, 2, 0] {
        put16(&mut out, x); // table count, search range, entry selector, range shift
    }
    let mut offset = 12 + 16 * tables.len();
    let mut body = Vec::new();
    for (tag, data) in &tables {
        let mut padded = data.clone();
        padded.resize(data.len().div_ceil(4) * 4, 0);
        let checksum = padded.chunks(4).fold(0u32, |s, w| s.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]])));
        out.extend_from_slice(&tag[..]);
        put32(&mut out, checksum);
        put32(&mut out, offset as u32);
        put32(&mut out, data.len() as u32);
        offset += padded.len();
        body.extend_from_slice(&padded);
    }
    out.extend_from_slice(&body);
    out
}
