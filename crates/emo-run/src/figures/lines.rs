//! Line charts: one chart, or a grid of charts under one legend (e.g. the four panels of the paper's Fig. 3).
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::draw::*;
use super::*;
use crate::error::{Result, RunError};

/// One chart's axes and series as drawn, without title or legend.
struct Chart<'a> {
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<SeriesDrawn>,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

/// One series as drawn: points and band sorted by x.
struct SeriesDrawn {
    points: Vec<(f64, f64)>,
    band: Vec<(f64, f64, f64)>,
    dashed: bool,
    color: RGBColor,
}

pub(super) const CHART_W: u32 = 760;
pub(super) const CHART_H: u32 = 440;
/// Height of a grid panel's own title.
const PANEL_TITLE_H: u32 = 28;

impl<'a> Chart<'a> {
    fn new(what: &str, x_label: &'a str, y_label: &'a str, series: &[Series], y_range: Option<(f64, f64)>) -> Result<Self> {
        let bad = |msg: String| Err(RunError::Invalid(format!("{what}: {msg}")));
        check_range(what, y_range)?;
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
            if !s.band.is_empty() && s.band.len() != s.points.len() {
                return bad(format!("series {:?} has {} points but a band of {}", s.name, s.points.len(), s.band.len()));
            }
            if let Some(b) = s.band.iter().find(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
                return bad(format!("series {:?} has the band {b:?}", s.name));
            }
        }
        let all = || series.iter().flat_map(|s| s.points.iter().copied());
        let x_range = padded_range(all().map(|p| p.0), 0.02);
        let bands = || series.iter().flat_map(|s| s.band.iter().flat_map(|&(lo, hi)| [lo, hi]));
        let y_range = y_range.unwrap_or_else(|| padded_range(all().map(|p| p.1).chain(bands()), 0.06));
        let drawn = series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut order: Vec<usize> = (0..s.points.len()).collect();
                order.sort_by(|&a, &b| s.points[a].0.total_cmp(&s.points[b].0));
                SeriesDrawn {
                    points: order.iter().map(|&k| s.points[k]).collect(),
                    band: if s.band.is_empty() { Vec::new() } else { order.iter().map(|&k| (s.points[k].0, s.band[k].0, s.band[k].1)).collect() },
                    dashed: s.dashed,
                    color: rgb(color_for(&s.name, i)),
                }
            })
            .collect::<Vec<_>>();
        Ok(Chart { x_label, y_label, series: drawn, x_range, y_range })
    }

    fn draw<DB: DrawingBackend>(&self, area: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        let mut chart = ChartBuilder::on(area)
            .margin(ctx.px(14))
            .margin_right(ctx.px(24))
            .x_label_area_size(ctx.px(50))
            .y_label_area_size(ctx.px(70))
            .build_cartesian_2d(self.x_range.0..self.x_range.1, self.y_range.0..self.y_range.1)?;
        let mut mesh = chart.configure_mesh();
        ctx.mesh_style(&mut mesh);
        mesh.x_desc(self.x_label).y_desc(self.y_label).x_labels(12).y_labels(8).x_label_formatter(&fmt_tick).y_label_formatter(&fmt_tick).draw()?;
        for s in self.series.iter().filter(|s| !s.band.is_empty()) {
            let outline: Vec<(f64, f64)> = s.band.iter().map(|&(x, lo, _)| (x, lo)).chain(s.band.iter().rev().map(|&(x, _, hi)| (x, hi))).collect();
            chart.draw_series([Polygon::new(outline, s.color.mix(0.18).filled())])?;
        }
        for s in &self.series {
            let style = s.color.stroke_width(ctx.width(2));
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), ctx.px(8), ctx.px(5), style))?;
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, ctx.px(3), s.color.filled())))?;
            }
        }
        Ok(())
    }
}

/// The legend of every distinct series name in `series`, in order of first appearance, in its chart colour.
fn legend<'s>(series: impl Iterator<Item = &'s Series>, width: u32) -> Legend {
    let mut items: Vec<(String, RGBColor)> = Vec::new();
    for (i, s) in series.enumerate() {
        if !items.iter().any(|(n, _)| n == &s.name) {
            items.push((s.name.clone(), rgb(color_for(&s.name, i))));
        }
    }
    Legend::new(items, Mark::Line, width)
}

pub(super) struct LinesFigure<'a> {
    title: &'a str,
    chart: Chart<'a>,
    legend: Legend,
}

impl<'a> LinesFigure<'a> {
    pub(super) fn new(title: &'a str, x_label: &'a str, y_label: &'a str, series: &[Series], y_range: Option<(f64, f64)>) -> Result<Self> {
        let chart = Chart::new("lines", x_label, y_label, series, y_range)?;
        // Per-chart indices, so that unnamed colours match the chart's.
        let items = series.iter().zip(&chart.series).map(|(s, d)| (s.name.clone(), d.color)).collect();
        Ok(LinesFigure { title, chart, legend: Legend::new(items, Mark::Line, CHART_W) })
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
        self.chart.draw(&area, ctx)
    }
}

pub(super) struct LinesGridFigure<'a> {
    title: &'a str,
    charts: Vec<(&'a str, Chart<'a>)>,
    cols: usize,
    legend: Legend,
}

impl<'a> LinesGridFigure<'a> {
    pub(super) fn new(title: &'a str, panels: &'a [LinesPanel], cols: usize) -> Result<Self> {
        check_cols("lines grid", cols)?;
        if panels.is_empty() {
            return Err(RunError::Invalid("lines grid: no panels".into()));
        }
        let charts = panels
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let what = format!("lines grid: panel {i} ({:?})", p.title);
                Ok((p.title.as_str(), Chart::new(&what, &p.x_label, &p.y_label, &p.series, p.y_range)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let cols = cols.min(panels.len());
        let legend = legend(panels.iter().flat_map(|p| p.series.iter()), CHART_W * cols as u32);
        Ok(LinesGridFigure { title, charts, cols, legend })
    }

    fn rows(&self) -> usize {
        self.charts.len().div_ceil(self.cols)
    }

    fn header_h(&self) -> u32 {
        if self.title.is_empty() {
            0
        } else {
            TITLE_H
        }
    }
}

impl Figure for LinesGridFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (CHART_W * self.cols as u32, self.header_h() + self.legend.height() + (PANEL_TITLE_H + CHART_H) * self.rows() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>, ctx: &Ctx) -> Drawn<DB> {
        let width = CHART_W * self.cols as u32;
        if !self.title.is_empty() {
            draw_title(root, ctx, self.title, width)?;
        }
        let top = self.header_h() + self.legend.height();
        self.legend.draw(root, ctx, self.header_h() as i32, width)?;
        let (_, grid) = root.split_vertically(ctx.width(top));
        let areas = grid.split_evenly((self.rows(), self.cols));
        for ((title, chart), area) in self.charts.iter().zip(&areas) {
            let (head, body) = area.split_vertically(ctx.width(PANEL_TITLE_H));
            ctx.text(&head, CAPTION, title, ((CHART_W / 2) as i32, (PANEL_TITLE_H / 2 + 4) as i32), HPos::Center, VPos::Center)?;
            chart.draw(&body, ctx)?;
        }
        Ok(())
    }
}
