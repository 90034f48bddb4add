//! Figures of the paper's section 5, each written twice with the same base name: `<base>.svg` and
//! `<base>.png`.
//!
//! - [`Figures::scatter_grid`]: 2-D PCA scatters coloured by class, a grid of panels with one shared legend
//!   (the paper's Fig. 2: layers 0, 9, 12, 27; last-token states on top, emotion vectors below).
//! - [`Figures::heatmap_grid`]: square matrices (e.g. the 2L×2L cosine similarities of the sublayer
//!   directions, Fig. 6) on one shared colour scale with a colour bar; [`sublayer_labels`] names the ticks.
//! - [`Figures::lines`]: named series over x (e.g. probe F1 per layer for `resid_mid` and `resid_post`).
//! - [`Figures::grouped_bars`]: one bar per group in each category (e.g. prompting and steering success per
//!   emotion), values in percent.
//!
//! The free functions of the same names use [`Figures::default`]. Inputs are plain Rust data; empty data,
//! non-finite values and mismatched lengths are errors, never panics.
//!
//! PNG text is drawn with a TrueType font read at run time: [`default_font_path`] (`$EMO_FONT`, else
//! `<workspace>/.cache/fonts/DejaVuSans.ttf`, fetched by `scripts/setup.sh`). The SVG is written first and
//! needs no font file: its text is laid out with approximate metrics when the font is missing, and only the
//! PNG then fails, with an error naming the font path.
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontDesc, FontFamily, FontStyle};

use crate::error::{io, DirectionsError, Result};

/// The six emotions in the paper's order, as used for [`EMOTION_COLORS`].
pub const EMOTION_NAMES: [&str; 6] = ["anger", "sadness", "happiness", "fear", "surprise", "disgust"];

/// One RGB colour per emotion, in the order of [`EMOTION_NAMES`]: anger red, sadness blue, happiness gold,
/// fear purple, surprise teal, disgust green.
pub const EMOTION_COLORS: [(u8, u8, u8); 6] =
    [(214, 39, 40), (31, 119, 180), (232, 170, 14), (148, 103, 189), (23, 190, 207), (44, 160, 44)];

/// Colours of series, groups and classes that are not emotions, taken in turn (they repeat after ten).
pub const SERIES_COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The environment variable that overrides [`default_font_path`].
pub const FONT_ENV: &str = "EMO_FONT";

/// The colour of the `index`-th class, series or group called `name`: its emotion's colour when `name` is one
/// of [`EMOTION_NAMES`] (any case), else `SERIES_COLORS[index % 10]`.
pub fn color_for(name: &str, index: usize) -> (u8, u8, u8) {
    EMOTION_NAMES
        .iter()
        .position(|e| e.eq_ignore_ascii_case(name.trim()))
        .map(|i| EMOTION_COLORS[i])
        .unwrap_or(SERIES_COLORS[index % SERIES_COLORS.len()])
}

/// Tick labels of the 2L sublayers of an L-layer model, attention then MLP per layer:
/// `["A0", "M0", "A1", "M1", ...]`.
pub fn sublayer_labels(n_layers: usize) -> Vec<String> {
    (0..n_layers).flat_map(|l| [format!("A{l}"), format!("M{l}")]).collect()
}

/// The font for PNG text: `$EMO_FONT` when set, else `<workspace>/.cache/fonts/DejaVuSans.ttf` (where
/// `scripts/setup.sh` puts it).
pub fn default_font_path() -> PathBuf {
    if let Some(p) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().and_then(Path::parent).map(Path::to_path_buf);
    root.unwrap_or_else(|| manifest.join("../..")).join(".cache/fonts/DejaVuSans.ttf")
}

/// The two files a figure was written to, and their size in pixels (the PNG's; the SVG's in user units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// `<base>.svg`.
    pub svg: PathBuf,
    /// `<base>.png`.
    pub png: PathBuf,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One panel of a scatter figure: 2-D points (e.g. the first two PCA components) and a class per point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScatterPanel {
    /// Shown above the panel.
    pub title: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
    /// Each point's class: an index into the figure's class names.
    pub classes: Vec<usize>,
}

/// One panel of a heatmap figure: a square matrix, row `r` drawn at the top-to-bottom position `r`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeatmapPanel {
    /// Shown above the panel.
    pub title: String,
    /// The rows, all as long as there are rows.
    pub values: Vec<Vec<f64>>,
}

/// A named series of (x, y) points of a line chart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// The points (drawn in increasing x).
    pub points: Vec<(f64, f64)>,
}

/// One group of a grouped bar chart: one value per category.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarGroup {
    /// Shown in the legend.
    pub name: String,
    /// One value per category, in percent.
    pub values: Vec<f64>,
}

/// Writes figures with a given font for the PNG text. [`Figures::default`] uses [`default_font_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// A TrueType or OpenType font file for the PNG text.
    pub font: PathBuf,
}

impl Default for Figures {
    fn default() -> Self {
        Figures { font: default_font_path() }
    }
}

impl Figures {
    /// Figures whose PNG text uses the font file `font`.
    pub fn with_font(font: impl Into<PathBuf>) -> Self {
        Figures { font: font.into() }
    }

    /// One PCA scatter panel with a legend of `class_names`; see [`Figures::scatter_grid`].
    pub fn scatter(&self, base: impl AsRef<Path>, panel: &ScatterPanel, class_names: &[&str]) -> Result<Written> {
        self.scatter_grid(base, std::slice::from_ref(panel), class_names, 1)
    }

    /// PCA scatter panels in a grid of `cols` columns (row by row), points coloured by class (see
    /// [`color_for`]), axes "PCA component 1/2", one legend of `class_names` above the grid.
    pub fn scatter_grid(
        &self,
        base: impl AsRef<Path>,
        panels: &[ScatterPanel],
        class_names: &[&str],
        cols: usize,
    ) -> Result<Written> {
        let fig = ScatterFigure::new(panels, class_names, cols)?;
        self.write(base.as_ref(), &fig)
    }

    /// One heatmap titled with the panel's title; see [`Figures::heatmap_grid`].
    pub fn heatmap(
        &self,
        base: impl AsRef<Path>,
        panel: &HeatmapPanel,
        tick_labels: &[String],
        range: Option<(f64, f64)>,
    ) -> Result<Written> {
        self.heatmap_grid(base, "", std::slice::from_ref(panel), tick_labels, 1, range)
    }

    /// Square heatmaps of one size n in a grid of `cols` columns under `title` (none when empty), on one
    /// diverging colour scale (blue, white, red) over `range`, with a colour bar. The default range is
    /// -m..m with m the largest |value| when the values have both signs (white at zero), else their min..max. `tick_labels` names the n rows and columns (empty: 0..n); only every k-th is shown when they
    /// would crowd. Values outside `range` take its end colours.
    pub fn heatmap_grid(
        &self,
        base: impl AsRef<Path>,
        title: &str,
        panels: &[HeatmapPanel],
        tick_labels: &[String],
        cols: usize,
        range: Option<(f64, f64)>,
    ) -> Result<Written> {
        let fig = HeatmapFigure::new(title, panels, tick_labels, cols, range)?;
        self.write(base.as_ref(), &fig)
    }

    /// A line chart of `series` (with point markers) under `title`, axis labels `x_label` and `y_label`,
    /// y over `y_range` (default: the data's, padded), and a legend of the series' names.
    pub fn lines(
        &self,
        base: impl AsRef<Path>,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[Series],
        y_range: Option<(f64, f64)>,
    ) -> Result<Written> {
        let fig = LinesFigure::new(title, x_label, y_label, series, y_range)?;
        self.write(base.as_ref(), &fig)
    }

    /// A grouped bar chart: for each of `categories` one bar per group, values in percent printed above
    /// the bars when they fit, y over `y_range` (default: 0..100 when all values lie there, else the data's),
    /// a legend of the groups' names.
    pub fn grouped_bars(
        &self,
        base: impl AsRef<Path>,
        title: &str,
        y_label: &str,
        categories: &[&str],
        groups: &[BarGroup],
        y_range: Option<(f64, f64)>,
    ) -> Result<Written> {
        let fig = BarsFigure::new(title, y_label, categories, groups, y_range)?;
        self.write(base.as_ref(), &fig)
    }

    /// Draws `fig` to `<base>.svg`, then to `<base>.png`.
    fn write<F: Figure>(&self, base: &Path, fig: &F) -> Result<Written> {
        if base.as_os_str().is_empty() {
            return Err(DirectionsError::Invalid("figure: empty output path".into()));
        }
        let (width, height) = fig.size();
        if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
            return Err(DirectionsError::Invalid(format!(
                "figure: {width}x{height} pixels is too large (at most {MAX_SIDE} a side, {MAX_PIXELS} in all); use \
                 fewer panels"
            )));
        }
        let svg = with_suffix(base, ".svg");
        let png = with_suffix(base, ".png");
        if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let font = font_family(&self.font);
        let svg_family = match &font {
            Ok(family) => family.clone(),
            Err(_) => fallback_family()?,
        };
        let ctx = Ctx { family: &svg_family, k: 1 };
        render(SVGBackend::new(&svg, (width, height)).into_drawing_area(), fig, &ctx)
            .map_err(|msg| DirectionsError::Format { path: svg.clone(), msg })?;
        let family = font.map_err(|why| {
            DirectionsError::Invalid(format!(
                "cannot write {}: font {} {why}; run scripts/setup.sh to fetch it, or set {FONT_ENV} to a .ttf \
                 file ({} was written)",
                png.display(),
                self.font.display(),
                svg.display()
            ))
        })?;
        write_png(&png, fig, &family).map_err(|msg| DirectionsError::Format { path: png.clone(), msg })?;
        Ok(Written { svg, png, width, height })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fonts

/// Registers the font file at `path` with plotters (once per path) and returns its family name, or why not.
fn font_family(path: &Path) -> std::result::Result<String, String> {
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
fn fallback_family() -> Result<String> {
    const FAMILY: &str = "DejaVu Sans, Verdana, sans-serif";
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = Box::leak(metrics_only_font().into_boxed_slice());
        register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
    });
    if ok {
        Ok(FAMILY.to_string())
    } else {
        Err(DirectionsError::Invalid("figure: cannot set up the fallback font metrics".into()))
    }
}

/// A minimal TrueType font: one empty glyph 620/1000 em wide (tables head, hhea, hmtx, maxp).
fn metrics_only_font() -> Vec<u8> {
    fn put16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    fn put32(v: &mut Vec<u8>, x: u32) {
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

// ---------------------------------------------------------------------------------------------------------
// Shared drawing

type Area<DB> = DrawingArea<DB, Shift>;
type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The largest figure side, in pixels.
const MAX_SIDE: u32 = 8192;
/// The most pixels in a figure.
const MAX_PIXELS: u64 = 16_000_000;
/// The PNG is drawn this many times larger, then averaged down: smooth edges, and even letter spacing
/// (plotters places each glyph on whole pixels).
const SUPERSAMPLE: u32 = 2;

/// How to draw: the font family, and the scale from layout units to the backend's pixels.
struct Ctx<'f> {
    family: &'f str,
    k: i32,
}

impl Ctx<'_> {
    fn px(&self, v: i32) -> i32 {
        v * self.k
    }

    fn pt(&self, (x, y): (i32, i32)) -> (i32, i32) {
        (x * self.k, y * self.k)
    }

    /// A backend point back in layout units.
    fn unscale(&self, (x, y): (i32, i32)) -> (i32, i32) {
        (x / self.k, y / self.k)
    }

    fn width(&self, w: u32) -> u32 {
        w * self.k as u32
    }

    fn font(&self, size: f64) -> TextStyle<'_> {
        FontDesc::new(FontFamily::Name(self.family), size * self.k as f64, FontStyle::Normal).color(&BLACK)
    }

    fn text<DB: DrawingBackend>(
        &self,
        root: &Area<DB>,
        size: f64,
        text: &str,
        at: (i32, i32),
        h: HPos,
        v: VPos,
    ) -> Drawn<DB> {
        if text.is_empty() {
            return Ok(());
        }
        root.draw(&Text::new(text.to_string(), self.pt(at), self.font(size).pos(Pos::new(h, v))))
    }

    fn rect<DB: DrawingBackend>(&self, root: &Area<DB>, a: (i32, i32), b: (i32, i32), style: ShapeStyle) -> Drawn<DB> {
        root.draw(&Rectangle::new([self.pt(a), self.pt(b)], style))
    }

    fn line<DB: DrawingBackend>(
        &self,
        root: &Area<DB>,
        a: (i32, i32),
        b: (i32, i32),
        color: RGBColor,
        w: u32,
    ) -> Drawn<DB> {
        root.draw(&PathElement::new(vec![self.pt(a), self.pt(b)], color.stroke_width(self.width(w))))
    }

    /// Styles of a chart's mesh, scaled.
    fn mesh_style<'m, DB: DrawingBackend, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
        &'m self,
        mesh: &mut plotters::chart::MeshStyle<'m, '_, X, Y, DB>,
    ) {
        mesh.label_style(self.font(TICK))
            .axis_desc_style(self.font(AXIS))
            .axis_style(BLACK.stroke_width(self.width(1)))
            .bold_line_style(BLACK.mix(0.1).stroke_width(self.width(1)))
            .light_line_style(TRANSPARENT)
            .set_all_tick_mark_size(self.px(5));
    }
}

/// A figure that knows its size (in layout units, the SVG's pixels) and can draw itself on any backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB>;
}

fn render<DB: DrawingBackend, F: Figure>(root: Area<DB>, fig: &F, ctx: &Ctx) -> std::result::Result<(), String> {
    let drawn: Drawn<DB> = (|| {
        root.fill(&WHITE)?;
        fig.draw(&root, ctx)?;
        root.present()
    })();
    drawn.map_err(|e| format!("cannot draw the figure: {e}"))
}

/// Draws `fig` SUPERSAMPLE times larger in memory, then writes its average down to the figure's size.
fn write_png<F: Figure>(png: &Path, fig: &F, family: &str) -> std::result::Result<(), String> {
    let k = SUPERSAMPLE as usize;
    let (w, h) = fig.size();
    let (bw, bh) = (w as usize * k, h as usize * k);
    let mut buf = vec![0u8; bw * bh * 3];
    render(
        BitMapBackend::with_buffer(&mut buf, (bw as u32, bh as u32)).into_drawing_area(),
        fig,
        &Ctx { family, k: k as i32 },
    )?;
    let out = BitMapBackend::new(png, (w, h)).into_drawing_area();
    let n = (k * k) as u32;
    let drawn: Drawn<BitMapBackend> = (|| {
        for y in 0..h as usize {
            for x in 0..w as usize {
                let mut sum = [0u32; 3];
                for dy in 0..k {
                    let row = ((y * k + dy) * bw + x * k) * 3;
                    for (i, &b) in buf[row..row + 3 * k].iter().enumerate() {
                        sum[i % 3] += b as u32;
                    }
                }
                let [r, g, b] = sum.map(|s| ((s + n / 2) / n) as u8);
                out.draw_pixel((x as i32, y as i32), &RGBColor(r, g, b))?;
            }
        }
        out.present()
    })();
    drawn.map_err(|e| format!("cannot write the PNG: {e}"))
}

const TITLE: f64 = 22.0;
const CAPTION: f64 = 17.0;
const AXIS: f64 = 15.0;
const TICK: f64 = 13.0;
const LEGEND: f64 = 15.0;
const VALUE: f64 = 11.0;
const TITLE_H: u32 = 40;
/// Approximate text width per character, in units of the font size (generous for DejaVu Sans).
const CHAR_W: f64 = 0.62;

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

fn text_w(s: &str, size: f64) -> i32 {
    (s.chars().count() as f64 * size * CHAR_W).ceil() as i32
}

/// A tick number without trailing zeros: "3", "0.25", "-1.5".
fn fmt_tick(v: &f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { *v };
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e15 {
        return format!("{:.0}", v.round());
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A value for the colour bar: two decimals below 100.
fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        fmt_tick(&((v * 100.0).round() / 100.0))
    }
}

#[derive(Clone, Copy)]
enum Mark {
    Dot,
    Line,
    Box,
}

/// A legend strip: items laid out in rows centred in the figure's width.
struct Legend {
    items: Vec<(String, RGBColor)>,
    mark: Mark,
    rows: Vec<(Vec<usize>, i32)>,
}

const LEGEND_ROW_H: i32 = 24;

impl Legend {
    fn new(items: Vec<(String, RGBColor)>, mark: Mark, width: u32) -> Self {
        let mut rows: Vec<(Vec<usize>, i32)> = Vec::new();
        let max = width as i32 - 20;
        for (i, (name, _)) in items.iter().enumerate() {
            let w = Self::item_w(name);
            match rows.last_mut() {
                Some((row, rw)) if *rw + w <= max => {
                    row.push(i);
                    *rw += w;
                }
                _ => rows.push((vec![i], w)),
            }
        }
        Legend { items, mark, rows }
    }

    fn item_w(name: &str) -> i32 {
        24 + 6 + text_w(name, LEGEND) + 20
    }

    fn height(&self) -> u32 {
        (self.rows.len() as i32 * LEGEND_ROW_H + 12) as u32
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx, top: i32, width: u32) -> Drawn<DB> {
        for (r, (row, row_w)) in self.rows.iter().enumerate() {
            let cy = top + 8 + r as i32 * LEGEND_ROW_H + LEGEND_ROW_H / 2;
            let mut x = (width as i32 - row_w) / 2 + 10;
            for &i in row {
                let (name, color) = &self.items[i];
                match self.mark {
                    Mark::Dot => root.draw(&Circle::new(ctx.pt((x + 12, cy)), ctx.px(5), color.filled()))?,
                    Mark::Line => {
                        ctx.line(root, (x, cy), (x + 24, cy), *color, 2)?;
                        root.draw(&Circle::new(ctx.pt((x + 12, cy)), ctx.px(3), color.filled()))?;
                    }
                    Mark::Box => ctx.rect(root, (x + 5, cy - 7), (x + 19, cy + 7), color.filled())?,
                }
                ctx.text(root, LEGEND, name, (x + 30, cy), HPos::Left, VPos::Center)?;
                x += Legend::item_w(name);
            }
        }
        Ok(())
    }
}

/// The data's min..max, padded by `pad` of the span on each side (±1 around a single value).
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        return (lo - 1.0, hi + 1.0);
    }
    (lo - pad * span, hi + pad * span)
}

fn check_range(what: &str, range: Option<(f64, f64)>) -> Result<()> {
    match range {
        Some((lo, hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
            Err(DirectionsError::Invalid(format!("{what}: range {lo}..{hi} is not a finite increasing interval")))
        }
        _ => Ok(()),
    }
}

fn check_cols(what: &str, cols: usize) -> Result<()> {
    if cols == 0 {
        return Err(DirectionsError::Invalid(format!("{what}: cols must be at least 1")));
    }
    Ok(())
}

/// Figure title, centred in the title strip.
fn draw_title<DB: DrawingBackend>(root: &Area<DB>, ctx: &Ctx, title: &str, width: u32) -> Drawn<DB> {
    ctx.text(root, TITLE, title, (width as i32 / 2, TITLE_H as i32 / 2 + 2), HPos::Center, VPos::Center)
}

// ---------------------------------------------------------------------------------------------------------
// Scatter

struct ScatterFigure<'a> {
    panels: &'a [ScatterPanel],
    colors: Vec<RGBColor>,
    cols: usize,
    rows: usize,
    legend: Legend,
}

const SCATTER_W: u32 = 440;
const SCATTER_H: u32 = 400;

impl<'a> ScatterFigure<'a> {
    fn new(panels: &'a [ScatterPanel], class_names: &[&str], cols: usize) -> Result<Self> {
        let bad = |msg: String| Err(DirectionsError::Invalid(format!("scatter: {msg}")));
        check_cols("scatter", cols)?;
        if panels.is_empty() {
            return bad("no panels".into());
        }
        if class_names.is_empty() {
            return bad("no class names".into());
        }
        for (i, p) in panels.iter().enumerate() {
            if p.points.is_empty() {
                return bad(format!("panel {i} ({:?}) has no points", p.title));
            }
            if p.points.len() != p.classes.len() {
                return bad(format!(
                    "panel {i} ({:?}) has {} points but {} classes",
                    p.title,
                    p.points.len(),
                    p.classes.len()
                ));
            }
            if let Some(j) = p.points.iter().position(|(x, y)| !(x.is_finite() && y.is_finite())) {
                return bad(format!("panel {i} ({:?}): point {j} is {:?}", p.title, p.points[j]));
            }
            if let Some(&c) = p.classes.iter().find(|&&c| c >= class_names.len()) {
                return bad(format!("panel {i} ({:?}): class {c} but only {} class names", p.title, class_names.len()));
            }
        }
        let cols = cols.min(panels.len());
        let rows = panels.len().div_ceil(cols);
        let colors: Vec<RGBColor> = class_names.iter().enumerate().map(|(i, n)| rgb(color_for(n, i))).collect();
        let items = class_names.iter().zip(&colors).map(|(n, c)| (n.to_string(), *c)).collect();
        let legend = Legend::new(items, Mark::Dot, (cols as u32).saturating_mul(SCATTER_W));
        Ok(ScatterFigure { panels, colors, cols, rows, legend })
    }
}

impl Figure for ScatterFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let cols = u32::try_from(self.cols).unwrap_or(u32::MAX);
        let rows = u32::try_from(self.rows).unwrap_or(u32::MAX);
        (cols.saturating_mul(SCATTER_W), rows.saturating_mul(SCATTER_H).saturating_add(self.legend.height()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        let (width, _) = self.size();
        self.legend.draw(root, ctx, 0, width)?;
        let (_, grid) = root.split_vertically(ctx.width(self.legend.height()));
        let areas = grid.split_evenly((self.rows, self.cols));
        for (panel, area) in self.panels.iter().zip(&areas) {
            let (x0, x1) = padded_range(panel.points.iter().map(|p| p.0), 0.06);
            let (y0, y1) = padded_range(panel.points.iter().map(|p| p.1), 0.06);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ctx.font(CAPTION))
                .margin(ctx.px(10))
                .margin_right(ctx.px(18))
                .x_label_area_size(ctx.px(46))
                .y_label_area_size(ctx.px(62))
                .build_cartesian_2d(x0..x1, y0..y1)?;
            let mut mesh = chart.configure_mesh();
            ctx.mesh_style(&mut mesh);
            mesh.x_desc("PCA component 1")
                .y_desc("PCA component 2")
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_tick)
                .draw()?;
            chart.draw_series(
                panel
                    .points
                    .iter()
                    .zip(&panel.classes)
                    .map(|(&p, &c)| Circle::new(p, ctx.px(3), self.colors[c].mix(0.75).filled())),
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Heatmaps

struct HeatmapFigure<'a> {
    title: &'a str,
    panels: &'a [HeatmapPanel],
    labels: Vec<String>,
    n: usize,
    cols: usize,
    rows: usize,
    range: (f64, f64),
    step: usize,
    label_w: i32,
}

/// Side of a heatmap's cell grid.
const GRID: i32 = 320;
const HEAT_CAPTION_H: i32 = 30;
const HEAT_XLABEL_H: i32 = 28;
const COLORBAR_W: u32 = 110;

/// A diverging colour map (blue, white, red), t in 0..=1.
fn diverging(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 7] = [
        (33, 102, 172),
        (103, 169, 207),
        (209, 229, 240),
        (247, 247, 247),
        (253, 219, 199),
        (239, 138, 98),
        (178, 24, 43),
    ];
    let t = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl<'a> HeatmapFigure<'a> {
    fn new(
        title: &'a str,
        panels: &'a [HeatmapPanel],
        tick_labels: &[String],
        cols: usize,
        range: Option<(f64, f64)>,
    ) -> Result<Self> {
        let bad = |msg: String| Err(DirectionsError::Invalid(format!("heatmap: {msg}")));
        check_cols("heatmap", cols)?;
        check_range("heatmap", range)?;
        let Some(first) = panels.first() else { return bad("no panels".into()) };
        let n = first.values.len();
        if n == 0 {
            return bad(format!("panel 0 ({:?}) is empty", first.title));
        }
        for (i, p) in panels.iter().enumerate() {
            if p.values.len() != n {
                return bad(format!("panel {i} ({:?}) has {} rows, panel 0 has {n}", p.title, p.values.len()));
            }
            if let Some((r, row)) = p.values.iter().enumerate().find(|(_, row)| row.len() != n) {
                return bad(format!("panel {i} ({:?}): row {r} has {} values, not {n}", p.title, row.len()));
            }
            for (r, row) in p.values.iter().enumerate() {
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    return bad(format!("panel {i} ({:?}): value [{r}][{c}] is {}", p.title, row[c]));
                }
            }
        }
        if !tick_labels.is_empty() && tick_labels.len() != n {
            return bad(format!("{} tick labels for {n}×{n} matrices", tick_labels.len()));
        }
        let labels: Vec<String> =
            if tick_labels.is_empty() { (0..n).map(|i| i.to_string()).collect() } else { tick_labels.to_vec() };
        let range = match range {
            Some(r) => r,
            None => {
                let all = panels.iter().flat_map(|p| p.values.iter().flatten().copied());
                let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
                if lo < 0.0 && hi > 0.0 {
                    let m = hi.max(-lo);
                    (-m, m) // white at zero
                } else if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
                    (lo, hi)
                } else {
                    (lo - 1.0, hi + 1.0)
                }
            }
        };
        let label_w = labels.iter().map(|l| text_w(l, TICK)).max().unwrap_or(0).min(200);
        let cell = GRID as f64 / n as f64;
        let need = (label_w as f64 + 8.0).max(TICK + 4.0);
        let mut step = (need / cell).ceil().max(1.0) as usize;
        if step > 1 && step % 2 == 1 {
            step += 1; // keep one kind of sublayer (A or M) when they alternate
        }
        let cols = cols.min(panels.len());
        let rows = panels.len().div_ceil(cols);
        Ok(HeatmapFigure { title, panels, labels, n, cols, rows, range, step, label_w })
    }

    fn title_h(&self) -> u32 {
        if self.title.is_empty() {
            0
        } else {
            TITLE_H
        }
    }

    fn panel_w(&self) -> u32 {
        (self.label_w + 14 + GRID + 20) as u32
    }

    fn panel_h(&self) -> u32 {
        (HEAT_CAPTION_H + GRID + HEAT_XLABEL_H + 12) as u32
    }

    fn color(&self, v: f64) -> RGBColor {
        let (lo, hi) = self.range;
        diverging((v - lo) / (hi - lo))
    }

    /// Edge `i` of `n` equal parts of `len` starting at `start`.
    fn edge(start: i32, len: i32, i: usize, n: usize) -> i32 {
        start + ((i as i64 * len as i64) / n as i64) as i32
    }
}

impl Figure for HeatmapFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let cols = u32::try_from(self.cols).unwrap_or(u32::MAX);
        let rows = u32::try_from(self.rows).unwrap_or(u32::MAX);
        (
            cols.saturating_mul(self.panel_w()).saturating_add(COLORBAR_W),
            rows.saturating_mul(self.panel_h()).saturating_add(self.title_h()),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        let (width, _) = self.size();
        let n = self.n;
        draw_title(root, ctx, self.title, width - COLORBAR_W)?;
        let top0 = self.title_h() as i32;
        // Cells are drawn in backend pixels so that neighbours share their edges exactly.
        let grid = ctx.px(GRID);
        for (k, panel) in self.panels.iter().enumerate() {
            let px = (k % self.cols) as i32 * self.panel_w() as i32;
            let py = top0 + (k / self.cols) as i32 * self.panel_h() as i32;
            let (gx, gy) = (px + self.label_w + 14, py + HEAT_CAPTION_H);
            let (sx, sy) = ctx.pt((gx, gy));
            ctx.text(
                root,
                CAPTION,
                &panel.title,
                (gx + GRID / 2, py + HEAT_CAPTION_H / 2),
                HPos::Center,
                VPos::Center,
            )?;
            for (r, row) in panel.values.iter().enumerate() {
                let (y0, y1) = (Self::edge(sy, grid, r, n), Self::edge(sy, grid, r + 1, n));
                for (c, &v) in row.iter().enumerate() {
                    let (x0, x1) = (Self::edge(sx, grid, c, n), Self::edge(sx, grid, c + 1, n));
                    root.draw(&Rectangle::new([(x0, y0), (x1, y1)], self.color(v).filled()))?;
                }
            }
            ctx.rect(root, (gx, gy), (gx + GRID, gy + GRID), BLACK.stroke_width(ctx.width(1)))?;
            for i in (0..n).step_by(self.step) {
                let mid = (Self::edge(0, GRID, i, n) + Self::edge(0, GRID, i + 1, n)) / 2;
                let name = &self.labels[i];
                ctx.line(root, (gx + mid, gy + GRID), (gx + mid, gy + GRID + 4), BLACK, 1)?;
                ctx.text(root, TICK, name, (gx + mid, gy + GRID + 6), HPos::Center, VPos::Top)?;
                ctx.line(root, (gx - 4, gy + mid), (gx, gy + mid), BLACK, 1)?;
                ctx.text(root, TICK, name, (gx - 6, gy + mid), HPos::Right, VPos::Center)?;
            }
        }
        // The colour bar, beside the first row of panels.
        let bx = (self.cols as u32 * self.panel_w()) as i32 + 14;
        let by = top0 + HEAT_CAPTION_H;
        let (sx, sy) = ctx.pt((bx, by));
        let steps = 160;
        for s in 0..steps {
            let t = 1.0 - (s as f64 + 0.5) / steps as f64;
            let (y0, y1) = (Self::edge(sy, grid, s, steps), Self::edge(sy, grid, s + 1, steps));
            root.draw(&Rectangle::new([(sx, y0), (sx + ctx.px(18), y1)], diverging(t).filled()))?;
        }
        ctx.rect(root, (bx, by), (bx + 18, by + GRID), BLACK.stroke_width(ctx.width(1)))?;
        let (lo, hi) = self.range;
        for (v, y) in [(hi, by), ((lo + hi) / 2.0, by + GRID / 2), (lo, by + GRID)] {
            ctx.line(root, (bx + 18, y), (bx + 22, y), BLACK, 1)?;
            ctx.text(root, TICK, &fmt_value(v), (bx + 25, y), HPos::Left, VPos::Center)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Lines

struct LinesFigure<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<(Vec<(f64, f64)>, RGBColor)>,
    x_range: (f64, f64),
    y_range: (f64, f64),
    legend: Legend,
}

const CHART_W: u32 = 760;
const CHART_H: u32 = 440;

impl<'a> LinesFigure<'a> {
    fn new(
        title: &'a str,
        x_label: &'a str,
        y_label: &'a str,
        series: &[Series],
        y_range: Option<(f64, f64)>,
    ) -> Result<Self> {
        let bad = |msg: String| Err(DirectionsError::Invalid(format!("lines: {msg}")));
        check_range("lines", y_range)?;
        if series.is_empty() {
            return bad("no series".into());
        }
        for s in series {
            if s.points.is_empty() {
                return bad(format!("series {:?} has no points", s.name));
            }
            if let Some(p) = s.points.iter().find(|(x, y)| !(x.is_finite() && y.is_finite())) {
                return bad(format!("series {:?} has the point {p:?}", s.name));
            }
        }
        let all = || series.iter().flat_map(|s| s.points.iter().copied());
        let x_range = padded_range(all().map(|p| p.0), 0.02);
        let y_range = y_range.unwrap_or_else(|| padded_range(all().map(|p| p.1), 0.06));
        let drawn = series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut points = s.points.clone();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                (points, rgb(color_for(&s.name, i)))
            })
            .collect::<Vec<_>>();
        let items = series.iter().zip(&drawn).map(|(s, (_, c))| (s.name.clone(), *c)).collect();
        let legend = Legend::new(items, Mark::Line, CHART_W);
        Ok(LinesFigure { title, x_label, y_label, series: drawn, x_range, y_range, legend })
    }
}

impl Figure for LinesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (CHART_W, TITLE_H + self.legend.height() + CHART_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        draw_title(root, ctx, self.title, CHART_W)?;
        self.legend.draw(root, ctx, TITLE_H as i32, CHART_W)?;
        let (_, area) = root.split_vertically(ctx.width(TITLE_H + self.legend.height()));
        let mut chart = ChartBuilder::on(&area)
            .margin(ctx.px(14))
            .margin_right(ctx.px(24))
            .x_label_area_size(ctx.px(50))
            .y_label_area_size(ctx.px(70))
            .build_cartesian_2d(self.x_range.0..self.x_range.1, self.y_range.0..self.y_range.1)?;
        let mut mesh = chart.configure_mesh();
        ctx.mesh_style(&mut mesh);
        mesh.x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_labels(12)
            .y_labels(8)
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .draw()?;
        for (points, color) in &self.series {
            chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(ctx.width(2))))?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, ctx.px(3), color.filled())))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Grouped bars

struct BarsFigure<'a> {
    title: &'a str,
    y_label: &'a str,
    categories: &'a [&'a str],
    groups: &'a [BarGroup],
    colors: Vec<RGBColor>,
    y_range: (f64, f64),
    width: u32,
    legend: Legend,
}

impl<'a> BarsFigure<'a> {
    fn new(
        title: &'a str,
        y_label: &'a str,
        categories: &'a [&'a str],
        groups: &'a [BarGroup],
        y_range: Option<(f64, f64)>,
    ) -> Result<Self> {
        let bad = |msg: String| Err(DirectionsError::Invalid(format!("grouped_bars: {msg}")));
        check_range("grouped_bars", y_range)?;
        if categories.is_empty() {
            return bad("no categories".into());
        }
        if groups.is_empty() {
            return bad("no groups".into());
        }
        for g in groups {
            if g.values.len() != categories.len() {
                return bad(format!(
                    "group {:?} has {} values for {} categories",
                    g.name,
                    g.values.len(),
                    categories.len()
                ));
            }
            if let Some(v) = g.values.iter().find(|v| !v.is_finite()) {
                return bad(format!("group {:?} has the value {v}", g.name));
            }
        }
        let all = || groups.iter().flat_map(|g| g.values.iter().copied());
        let y_range = y_range.unwrap_or_else(|| {
            let (lo, hi) = padded_range(all(), 0.0);
            if all().all(|v| (0.0..=100.0).contains(&v)) {
                (0.0, 100.0)
            } else {
                let (lo, hi) = (lo.min(0.0), hi.max(0.0));
                let pad = 0.08 * (hi - lo);
                (if lo < 0.0 { lo - pad } else { lo }, hi + pad)
            }
        });
        let widest = categories.iter().map(|c| text_w(c, AXIS) as u32 + 16).max().unwrap_or(0);
        let per_category = (u32::try_from(groups.len()).unwrap_or(u32::MAX).saturating_mul(30) + 30).max(widest);
        let width = u32::try_from(categories.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(per_category)
            .saturating_add(100)
            .max(CHART_W);
        let colors: Vec<RGBColor> = groups.iter().enumerate().map(|(i, g)| rgb(color_for(&g.name, i))).collect();
        let items = groups.iter().zip(&colors).map(|(g, c)| (g.name.clone(), *c)).collect();
        let legend = Legend::new(items, Mark::Box, width);
        Ok(BarsFigure { title, y_label, categories, groups, colors, y_range, width, legend })
    }
}

impl Figure for BarsFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (self.width, TITLE_H + self.legend.height() + CHART_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        draw_title(root, ctx, self.title, self.width)?;
        self.legend.draw(root, ctx, TITLE_H as i32, self.width)?;
        let (_, area) = root.split_vertically(ctx.width(TITLE_H + self.legend.height()));
        let nc = self.categories.len();
        let (lo, hi) = self.y_range;
        let mut chart = ChartBuilder::on(&area)
            .margin(ctx.px(14))
            .margin_right(ctx.px(24))
            .x_label_area_size(ctx.px(34))
            .y_label_area_size(ctx.px(70))
            .build_cartesian_2d(0.0..nc as f64, lo..hi)?;
        let mut mesh = chart.configure_mesh();
        ctx.mesh_style(&mut mesh);
        mesh.disable_x_mesh()
            .x_labels(2)
            .x_label_formatter(&|_| String::new())
            .set_tick_mark_size(LabelAreaPosition::Bottom, 0)
            .y_desc(self.y_label)
            .y_labels(11)
            .y_label_formatter(&fmt_tick)
            .draw()?;
        let ng = self.groups.len();
        let bw = 0.8 / ng as f64;
        let base = 0.0f64.clamp(lo, hi);
        let bar_px = (chart.backend_coord(&(bw, base)).0 - chart.backend_coord(&(0.0, base)).0) / ctx.k;
        for (j, (g, color)) in self.groups.iter().zip(&self.colors).enumerate() {
            for (i, &v) in g.values.iter().enumerate() {
                let x0 = i as f64 + 0.1 + j as f64 * bw;
                let top = v.clamp(lo, hi);
                chart.draw_series([Rectangle::new([(x0 + 0.04 * bw, base), (x0 + 0.96 * bw, top)], color.filled())])?;
                if bar_px >= 22 {
                    let (px, py) = ctx.unscale(chart.backend_coord(&(x0 + bw / 2.0, top)));
                    let (dy, v_pos) = if v >= 0.0 { (-3, VPos::Bottom) } else { (3, VPos::Top) };
                    ctx.text(root, VALUE, &format!("{v:.0}"), (px, py + dy), HPos::Center, v_pos)?;
                }
            }
        }
        for (i, name) in self.categories.iter().enumerate() {
            let (px, py) = ctx.unscale(chart.backend_coord(&(i as f64 + 0.5, lo)));
            ctx.text(root, AXIS, name, (px, py + 8), HPos::Center, VPos::Top)?;
        }
        Ok(())
    }
}
