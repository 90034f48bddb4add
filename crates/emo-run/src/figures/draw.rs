//! What every figure draws with: scaled text and shapes, legends, ranges, the SVG and supersampled PNG
//! backends.
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontDesc, FontFamily, FontStyle};

use crate::error::{Result, RunError};

pub(super) type Area<DB> = DrawingArea<DB, Shift>;
pub(super) type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The largest figure side, in pixels.
pub(super) const MAX_SIDE: u32 = 8192;
/// The most pixels in a figure.
pub(super) const MAX_PIXELS: u64 = 16_000_000;
/// The PNG is drawn this many times larger, then averaged down: smooth edges, and even letter spacing
/// (plotters places each glyph on whole pixels).
pub(super) const SUPERSAMPLE: u32 = 2;

/// How to draw: the font family, and the scale from layout units to the backend's pixels.
pub(super) struct Ctx<'f> {
    pub(super) family: &'f str,
    pub(super) k: i32,
}

impl Ctx<'_> {
    pub(super) fn px(&self, v: i32) -> i32 {
        v * self.k
    }

    pub(super) fn pt(&self, (x, y): (i32, i32)) -> (i32, i32) {
        (x * self.k, y * self.k)
    }

    /// A backend point back in layout units.
    pub(super) fn unscale(&self, (x, y): (i32, i32)) -> (i32, i32) {
        (x / self.k, y / self.k)
    }

    pub(super) fn width(&self, w: u32) -> u32 {
        w * self.k as u32
    }

    pub(super) fn font(&self, size: f64) -> TextStyle<'_> {
        FontDesc::new(FontFamily::Name(self.family), size * self.k as f64, FontStyle::Normal).color(&BLACK)
    }

    pub(super) fn text<DB: DrawingBackend>(&self, root: &Area<DB>, size: f64, text: &str, at: (i32, i32), h: HPos, v: VPos) -> Drawn<DB> {
        if text.is_empty() {
            return Ok(());
        }
        root.draw(&Text::new(text.to_string(), self.pt(at), self.font(size).pos(Pos::new(h, v))))
    }

    pub(super) fn rect<DB: DrawingBackend>(&self, root: &Area<DB>, a: (i32, i32), b: (i32, i32), style: ShapeStyle) -> Drawn<DB> {
        root.draw(&Rectangle::new([self.pt(a), self.pt(b)], style))
    }

    pub(super) fn line<DB: DrawingBackend>(&self, root: &Area<DB>, a: (i32, i32), b: (i32, i32), color: RGBColor, w: u32) -> Drawn<DB> {
        root.draw(&PathElement::new(vec![self.pt(a), self.pt(b)], color.stroke_width(self.width(w))))
    }

    /// Styles of a chart's mesh, scaled.
    pub(super) fn mesh_style<'m, DB: DrawingBackend, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
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
pub(super) trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB>;
}

pub(super) fn render<DB: DrawingBackend, F: Figure>(root: Area<DB>, fig: &F, ctx: &Ctx) -> std::result::Result<(), String> {
    let drawn: Drawn<DB> = (|| {
        root.fill(&WHITE)?;
        fig.draw(&root, ctx)?;
        root.present()
    })();
    drawn.map_err(|e| format!("cannot draw the figure: {e}"))
}

/// Draws `fig` SUPERSAMPLE times larger in memory, then writes its average down to the figure's size.
pub(super) fn write_png<F: Figure>(png: &Path, fig: &F, family: &str) -> std::result::Result<(), String> {
    let k = SUPERSAMPLE as usize;
    let (w, h) = fig.size();
    let (bw, bh) = (w as usize * k, h as usize * k);
    let mut buf = vec![0u8; bw * bh * 3];
    render(BitMapBackend::with_buffer(&mut buf, (bw as u32, bh as u32)).into_drawing_area(), fig, &Ctx { family, k: k as i32 })?;
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

pub(super) const TITLE: f64 = 22.0;
pub(super) const CAPTION: f64 = 17.0;
pub(super) const AXIS: f64 = 15.0;
pub(super) const TICK: f64 = 13.0;
pub(super) const LEGEND: f64 = 15.0;
pub(super) const VALUE: f64 = 11.0;
pub(super) const TITLE_H: u32 = 40;
/// Approximate text width per character, in units of the font size (generous for DejaVu Sans).
pub(super) const CHAR_W: f64 = 0.62;

pub(super) fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

pub(super) fn text_w(s: &str, size: f64) -> i32 {
    (s.chars().count() as f64 * size * CHAR_W).ceil() as i32
}

/// A tick number without trailing zeros: "3", "0.25", "-1.5".
pub(super) fn fmt_tick(v: &f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { *v };
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e15 {
        return format!("{:.0}", v.round());
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A value for the colour bar: two decimals below 100.
pub(super) fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        fmt_tick(&((v * 100.0).round() / 100.0))
    }
}

#[derive(Clone, Copy)]
pub(super) enum Mark {
    Dot,
    Line,
    Box,
}

/// A legend strip: items laid out in rows centred in the figure's width.
pub(super) struct Legend {
    items: Vec<(String, RGBColor)>,
    mark: Mark,
    rows: Vec<(Vec<usize>, i32)>,
}

pub(super) const LEGEND_ROW_H: i32 = 24;

impl Legend {
    pub(super) fn new(items: Vec<(String, RGBColor)>, mark: Mark, width: u32) -> Self {
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

    pub(super) fn item_w(name: &str) -> i32 {
        24 + 6 + text_w(name, LEGEND) + 20
    }

    pub(super) fn height(&self) -> u32 {
        (self.rows.len() as i32 * LEGEND_ROW_H + 12) as u32
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx, top: i32, width: u32) -> Drawn<DB> {
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
pub(super) fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
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

pub(super) fn check_range(what: &str, range: Option<(f64, f64)>) -> Result<()> {
    match range {
        Some((lo, hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
            Err(RunError::Invalid(format!("{what}: range {lo}..{hi} is not a finite increasing interval")))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_cols(what: &str, cols: usize) -> Result<()> {
    if cols == 0 {
        return Err(RunError::Invalid(format!("{what}: cols must be at least 1")));
    }
    Ok(())
}

/// Figure title, centred in the title strip.
pub(super) fn draw_title<DB: DrawingBackend>(root: &Area<DB>, ctx: &Ctx, title: &str, width: u32) -> Drawn<DB> {
    ctx.text(root, TITLE, title, (width as i32 / 2, TITLE_H as i32 / 2 + 2), HPos::Center, VPos::Center)
}
