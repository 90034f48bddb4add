//! Heatmap panels on one diverging colour scale, with a colour bar.
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use super::draw::*;
use super::*;
use crate::error::{Result, RunError};

pub(super) struct HeatmapFigure<'a> {
    title: &'a str,
    panels: &'a [HeatmapPanel],
    row_labels: Vec<String>,
    col_labels: Vec<String>,
    axes: (&'a str, &'a str),
    n_rows: usize,
    n_cols: usize,
    grid_w: i32,
    grid_h: i32,
    cols: usize,
    rows: usize,
    range: (f64, f64),
    row_step: usize,
    col_step: usize,
    label_w: i32,
}

/// What a heatmap grid draws besides its panels.
pub(super) struct HeatmapAxes<'a> {
    pub(super) title: &'a str,
    pub(super) row_labels: &'a [String],
    pub(super) col_labels: &'a [String],
    pub(super) x_label: &'a str,
    pub(super) y_label: &'a str,
    pub(super) cols: usize,
    pub(super) range: Option<(f64, f64)>,
}

/// Side of a heatmap's cell grid.
pub(super) const GRID: i32 = 320;
pub(super) const HEAT_CAPTION_H: i32 = 30;
pub(super) const HEAT_XLABEL_H: i32 = 28;
pub(super) const COLORBAR_W: u32 = 110;

/// A diverging colour map (blue, white, red), t in 0..=1.
pub(super) fn diverging(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 7] =
        [(33, 102, 172), (103, 169, 207), (209, 229, 240), (247, 247, 247), (253, 219, 199), (239, 138, 98), (178, 24, 43)];
    let t = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl<'a> HeatmapFigure<'a> {
    pub(super) fn new(panels: &'a [HeatmapPanel], axes: HeatmapAxes<'a>) -> Result<Self> {
        let bad = |msg: String| Err(RunError::Invalid(format!("heatmap: {msg}")));
        check_cols("heatmap", axes.cols)?;
        check_range("heatmap", axes.range)?;
        let Some(first) = panels.first() else { return bad("no panels".into()) };
        let n_rows = first.values.len();
        let n_cols = first.values.first().map_or(0, Vec::len);
        if n_rows == 0 || n_cols == 0 {
            return bad(format!("panel 0 ({:?}) is empty", first.title));
        }
        for (i, p) in panels.iter().enumerate() {
            if p.values.len() != n_rows {
                return bad(format!("panel {i} ({:?}) has {} rows, panel 0 has {n_rows}", p.title, p.values.len()));
            }
            if let Some((r, row)) = p.values.iter().enumerate().find(|(_, row)| row.len() != n_cols) {
                return bad(format!("panel {i} ({:?}): row {r} has {} values, not {n_cols}", p.title, row.len()));
            }
            for (r, row) in p.values.iter().enumerate() {
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    return bad(format!("panel {i} ({:?}): value [{r}][{c}] is {}", p.title, row[c]));
                }
            }
        }
        let labels = |given: &[String], n: usize, what: &str| -> Result<Vec<String>> {
            match given.len() {
                0 => Ok((0..n).map(|i| i.to_string()).collect()),
                k if k == n => Ok(given.to_vec()),
                k => Err(RunError::Invalid(format!("heatmap: {k} {what} labels for {n_rows}×{n_cols} matrices"))),
            }
        };
        let row_labels = labels(axes.row_labels, n_rows, "row")?;
        let col_labels = labels(axes.col_labels, n_cols, "column")?;
        let range = match axes.range {
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
        // The longer side is GRID; the other keeps square cells unless that makes it thinner than a third.
        let cell = GRID as f64 / n_rows.max(n_cols) as f64;
        let grid_w = ((n_cols as f64 * cell) as i32).max(GRID / 3);
        let grid_h = ((n_rows as f64 * cell) as i32).max(GRID / 3);
        let label_w = row_labels.iter().map(|l| text_w(l, TICK)).max().unwrap_or(0).min(200);
        let step = |n: usize, side: i32, need: f64| {
            let mut step = (need / (side as f64 / n as f64)).ceil().max(1.0) as usize;
            if step > 1 && step % 2 == 1 {
                step += 1; // keep one kind of sublayer (A or M) when they alternate
            }
            step
        };
        let col_w = col_labels.iter().map(|l| text_w(l, TICK)).max().unwrap_or(0);
        let col_step = step(n_cols, grid_w, (col_w as f64 + 8.0).max(TICK + 4.0));
        // A square matrix of one kind of labels (sublayers) keeps its rows and columns in step.
        let row_step = if row_labels == col_labels { col_step } else { step(n_rows, grid_h, TICK + 4.0) };
        let cols = axes.cols.min(panels.len());
        let rows = panels.len().div_ceil(cols);
        Ok(HeatmapFigure {
            title: axes.title,
            panels,
            row_labels,
            col_labels,
            axes: (axes.x_label, axes.y_label),
            n_rows,
            n_cols,
            grid_w,
            grid_h,
            cols,
            rows,
            range,
            row_step,
            col_step,
            label_w,
        })
    }

    fn title_h(&self) -> u32 {
        if self.title.is_empty() {
            0
        } else {
            TITLE_H
        }
    }

    fn y_label_w(&self) -> i32 {
        if self.axes.1.is_empty() {
            0
        } else {
            24
        }
    }

    fn x_label_h(&self) -> i32 {
        if self.axes.0.is_empty() {
            0
        } else {
            22
        }
    }

    fn panel_w(&self) -> u32 {
        (self.y_label_w() + self.label_w + 14 + self.grid_w + 20) as u32
    }

    fn panel_h(&self) -> u32 {
        (HEAT_CAPTION_H + self.grid_h + HEAT_XLABEL_H + self.x_label_h() + 12) as u32
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
        (cols.saturating_mul(self.panel_w()).saturating_add(COLORBAR_W), rows.saturating_mul(self.panel_h()).saturating_add(self.title_h()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        let (width, _) = self.size();
        let (nr, nc, gw, gh) = (self.n_rows, self.n_cols, self.grid_w, self.grid_h);
        draw_title(root, ctx, self.title, width - COLORBAR_W)?;
        let top0 = self.title_h() as i32;
        // Cells are drawn in backend pixels so that neighbours share their edges exactly.
        let (sgw, sgh) = (ctx.px(gw), ctx.px(gh));
        for (k, panel) in self.panels.iter().enumerate() {
            let px = (k % self.cols) as i32 * self.panel_w() as i32;
            let py = top0 + (k / self.cols) as i32 * self.panel_h() as i32;
            let (gx, gy) = (px + self.y_label_w() + self.label_w + 14, py + HEAT_CAPTION_H);
            let (sx, sy) = ctx.pt((gx, gy));
            ctx.text(root, CAPTION, &panel.title, (gx + gw / 2, py + HEAT_CAPTION_H / 2), HPos::Center, VPos::Center)?;
            for (r, row) in panel.values.iter().enumerate() {
                let (y0, y1) = (Self::edge(sy, sgh, r, nr), Self::edge(sy, sgh, r + 1, nr));
                for (c, &v) in row.iter().enumerate() {
                    let (x0, x1) = (Self::edge(sx, sgw, c, nc), Self::edge(sx, sgw, c + 1, nc));
                    root.draw(&Rectangle::new([(x0, y0), (x1, y1)], self.color(v).filled()))?;
                }
            }
            ctx.rect(root, (gx, gy), (gx + gw, gy + gh), BLACK.stroke_width(ctx.width(1)))?;
            for c in (0..nc).step_by(self.col_step) {
                let mid = (Self::edge(0, gw, c, nc) + Self::edge(0, gw, c + 1, nc)) / 2;
                ctx.line(root, (gx + mid, gy + gh), (gx + mid, gy + gh + 4), BLACK, 1)?;
                ctx.text(root, TICK, &self.col_labels[c], (gx + mid, gy + gh + 6), HPos::Center, VPos::Top)?;
            }
            for r in (0..nr).step_by(self.row_step) {
                let mid = (Self::edge(0, gh, r, nr) + Self::edge(0, gh, r + 1, nr)) / 2;
                ctx.line(root, (gx - 4, gy + mid), (gx, gy + mid), BLACK, 1)?;
                ctx.text(root, TICK, &self.row_labels[r], (gx - 6, gy + mid), HPos::Right, VPos::Center)?;
            }
            let (x_label, y_label) = self.axes;
            ctx.text(root, AXIS, x_label, (gx + gw / 2, gy + gh + HEAT_XLABEL_H + 4), HPos::Center, VPos::Top)?;
            if !y_label.is_empty() {
                let at = ctx.pt((px + 12, gy + gh / 2));
                let style = ctx.font(AXIS).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Center));
                root.draw(&Text::new(y_label.to_string(), at, style))?;
            }
        }
        // The colour bar, beside the first row of panels.
        let bx = (self.cols as u32 * self.panel_w()) as i32 + 14;
        let by = top0 + HEAT_CAPTION_H;
        let bar_h = gh.max(GRID / 2);
        let (sx, sy) = ctx.pt((bx, by));
        let steps = 160;
        for s in 0..steps {
            let t = 1.0 - (s as f64 + 0.5) / steps as f64;
            let (y0, y1) = (Self::edge(sy, ctx.px(bar_h), s, steps), Self::edge(sy, ctx.px(bar_h), s + 1, steps));
            root.draw(&Rectangle::new([(sx, y0), (sx + ctx.px(18), y1)], diverging(t).filled()))?;
        }
        ctx.rect(root, (bx, by), (bx + 18, by + bar_h), BLACK.stroke_width(ctx.width(1)))?;
        let (lo, hi) = self.range;
        for (v, y) in [(hi, by), ((lo + hi) / 2.0, by + bar_h / 2), (lo, by + bar_h)] {
            ctx.line(root, (bx + 18, y), (bx + 22, y), BLACK, 1)?;
            ctx.text(root, TICK, &fmt_value(v), (bx + 25, y), HPos::Left, VPos::Center)?;
        }
        Ok(())
    }
}
