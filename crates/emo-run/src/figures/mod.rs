//! Figures of the paper's sections 5-7, each written twice with the same base name: `<base>.svg` and
//! `<base>.png`.
//!
//! - [`Figures::scatter_grid`]: 2-D PCA scatters coloured by class, a grid of panels with one shared legend
//!   (the paper's Fig. 2: layers 0, 9, 12, 27; last-token states on top, emotion vectors below).
//! - [`Figures::heatmap_grid`]: square matrices (e.g. the 2L×2L cosine similarities of the sublayer
//!   directions, Fig. 6) on one shared colour scale with a colour bar; [`sublayer_labels`] names the ticks.
//! - [`Figures::matrix_grid`]: rectangular matrices with row, column and axis labels (layers x heads,
//!   layers x sublayers).
//! - [`Figures::lines`]: named series over x (e.g. probe F1 per layer for `resid_mid` and `resid_post`), with
//!   optional confidence bands and dashed control curves (e.g. Delta s over k for top-k and random units).
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
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{io, Result, RunError};

mod bars;
mod draw;
mod font;
mod heatmap;
mod lines;
mod scatter;

use bars::BarsFigure;
use draw::{render, with_suffix, write_png, Ctx, Figure, MAX_PIXELS, MAX_SIDE};
use font::{fallback_family, font_family};
use heatmap::{HeatmapAxes, HeatmapFigure};
use lines::{LinesFigure, LinesGridFigure};
use scatter::ScatterFigure;

/// The six emotions in the paper's order, as used for [`EMOTION_COLORS`].
pub const EMOTION_NAMES: [&str; 6] = ["anger", "sadness", "happiness", "fear", "surprise", "disgust"];

/// One RGB colour per emotion, in the order of [`EMOTION_NAMES`]: anger red, sadness blue, happiness gold,
/// fear purple, surprise teal, disgust green.
pub const EMOTION_COLORS: [(u8, u8, u8); 6] = [(214, 39, 40), (31, 119, 180), (232, 170, 14), (148, 103, 189), (23, 190, 207), (44, 160, 44)];

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
/// of [`EMOTION_NAMES`] (any case), also with a parenthesised suffix (`anger (random)`), else
/// `SERIES_COLORS[index % 10]`.
pub fn color_for(name: &str, index: usize) -> (u8, u8, u8) {
    EMOTION_NAMES
        .iter()
        .position(|e| e.eq_ignore_ascii_case(name.split(" (").next().unwrap_or(name).trim()))
        .map(|i| EMOTION_COLORS[i])
        .unwrap_or(SERIES_COLORS[index % SERIES_COLORS.len()])
}

/// Tick labels of the 2L sublayers of an L-layer model, attention then MLP per layer:
/// `["A0", "M0", "A1", "M1", ...]`.
pub fn sublayer_labels(n_layers: usize) -> Vec<String> {
    (0..n_layers).flat_map(|l| [format!("A{l}"), format!("M{l}")]).collect()
}

/// The font for PNG text: `$EMO_FONT` when set, else `fonts/DejaVuSans.ttf` under the first of
/// [`emo_model::home::roots`] that has it (where `scripts/setup.sh` puts it).
pub fn default_font_path() -> PathBuf {
    if let Some(p) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    emo_model::home::locate("fonts/DejaVuSans.ttf")
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

/// One panel of a heatmap figure: a matrix (square for [`Figures::heatmap_grid`]), row `r` drawn at the
/// top-to-bottom position `r`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeatmapPanel {
    /// Shown above the panel.
    pub title: String,
    /// The rows, all of one length.
    pub values: Vec<Vec<f64>>,
}

/// A named series of (x, y) points of a line chart, optionally with a confidence band and dashed (a control
/// curve, e.g. random units beside the top-ranked ones).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// The points (drawn in increasing x).
    pub points: Vec<(f64, f64)>,
    /// `(low, high)` at each point, shaded in the series' colour (e.g. a 95% confidence interval); empty for
    /// none.
    pub band: Vec<(f64, f64)>,
    /// Drawn dashed, without point markers.
    pub dashed: bool,
}

impl Series {
    /// A solid series without a band.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, ..Default::default() }
    }
}

/// One chart of a grid of line charts ([`Figures::lines_grid`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinesPanel {
    /// Drawn above the chart.
    pub title: String,
    /// The x axis label.
    pub x_label: String,
    /// The y axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// The y range (default: the data's, padded).
    pub y_range: Option<(f64, f64)>,
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
    pub fn scatter_grid(&self, base: impl AsRef<Path>, panels: &[ScatterPanel], class_names: &[&str], cols: usize) -> Result<Written> {
        let fig = ScatterFigure::new(panels, class_names, cols)?;
        self.write(base.as_ref(), &fig)
    }

    /// One heatmap titled with the panel's title; see [`Figures::heatmap_grid`].
    pub fn heatmap(&self, base: impl AsRef<Path>, panel: &HeatmapPanel, tick_labels: &[String], range: Option<(f64, f64)>) -> Result<Written> {
        self.heatmap_grid(base, "", std::slice::from_ref(panel), tick_labels, 1, range)
    }

    /// Square heatmaps of one size n in a grid of `cols` columns under `title` (none when empty), on one
    /// diverging colour scale (blue, white, red) over `range`, with a colour bar. The default range is
    /// -m..m with m the largest |value| when the values have both signs (white at zero), else their min..max.
    /// `tick_labels` names the n rows and columns (empty: 0..n); only every k-th is shown when they would
    /// crowd. Values outside `range` take its end colours.
    pub fn heatmap_grid(
        &self,
        base: impl AsRef<Path>,
        title: &str,
        panels: &[HeatmapPanel],
        tick_labels: &[String],
        cols: usize,
        range: Option<(f64, f64)>,
    ) -> Result<Written> {
        for (i, p) in panels.iter().enumerate() {
            let n = p.values.len();
            if let Some((r, row)) = p.values.iter().enumerate().find(|(_, row)| row.len() != n) {
                return Err(RunError::Invalid(format!("heatmap: panel {i} ({:?}): row {r} has {} values, not {n}", p.title, row.len())));
            }
        }
        let axes = HeatmapAxes { title, row_labels: tick_labels, col_labels: tick_labels, x_label: "", y_label: "", cols, range };
        self.write(base.as_ref(), &HeatmapFigure::new(panels, axes)?)
    }

    /// Rectangular heatmaps of one shape (rows x columns, e.g. layers x heads or layers x sublayers) in a
    /// grid of `cols` columns, as [`Figures::heatmap_grid`] draws them, with `row_labels` and `col_labels`
    /// (empty: 0..n) and axis labels `x_label` (columns) and `y_label` (rows), either of them empty for none.
    #[allow(clippy::too_many_arguments)]
    pub fn matrix_grid(
        &self,
        base: impl AsRef<Path>,
        title: &str,
        panels: &[HeatmapPanel],
        row_labels: &[String],
        col_labels: &[String],
        (x_label, y_label): (&str, &str),
        cols: usize,
        range: Option<(f64, f64)>,
    ) -> Result<Written> {
        let axes = HeatmapAxes { title, row_labels, col_labels, x_label, y_label, cols, range };
        self.write(base.as_ref(), &HeatmapFigure::new(panels, axes)?)
    }

    /// A line chart of `series` (solid ones with point markers, dashed ones without; bands shaded beneath)
    /// under `title`, axis labels `x_label` and `y_label`,
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

    /// Line charts in a grid of `cols` columns (row by row) under `title` (none when empty), each titled and
    /// scaled on its own, with one legend of every distinct series name above the grid (colours by name, so
    /// an emotion has one colour in every panel).
    pub fn lines_grid(&self, base: impl AsRef<Path>, title: &str, panels: &[LinesPanel], cols: usize) -> Result<Written> {
        let fig = LinesGridFigure::new(title, panels, cols)?;
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
            return Err(RunError::Invalid("figure: empty output path".into()));
        }
        let (width, height) = fig.size();
        if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
            return Err(RunError::Invalid(format!(
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
        render(SVGBackend::new(&svg, (width, height)).into_drawing_area(), fig, &ctx).map_err(|msg| RunError::Format { path: svg.clone(), msg })?;
        let family = font.map_err(|why| {
            RunError::Invalid(format!(
                "cannot write {}: font {} {why}; run scripts/setup.sh to fetch it, or set {FONT_ENV} to a .ttf \
                 file ({} was written)",
                png.display(),
                self.font.display(),
                svg.display()
            ))
        })?;
        write_png(&png, fig, &family).map_err(|msg| RunError::Format { path: png.clone(), msg })?;
        Ok(Written { svg, png, width, height })
    }
}
