//! PCA scatter panels in a grid with one legend.
use plotters::prelude::*;

use super::draw::*;
use super::*;
use crate::error::{Result, RunError};

pub(super) struct ScatterFigure<'a> {
    panels: &'a [ScatterPanel],
    colors: Vec<RGBColor>,
    cols: usize,
    rows: usize,
    legend: Legend,
}

pub(super) const SCATTER_W: u32 = 440;
pub(super) const SCATTER_H: u32 = 400;

impl<'a> ScatterFigure<'a> {
    pub(super) fn new(panels: &'a [ScatterPanel], class_names: &[&str], cols: usize) -> Result<Self> {
        let bad = |msg: String| Err(RunError::Invalid(format!("scatter: {msg}")));
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
                return bad(format!("panel {i} ({:?}) has {} points but {} classes", p.title, p.points.len(), p.classes.len()));
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
            chart
                .draw_series(panel.points.iter().zip(&panel.classes).map(|(&p, &c)| Circle::new(p, ctx.px(3), self.colors[c].mix(0.75).filled())))?;
        }
        Ok(())
    }
}
