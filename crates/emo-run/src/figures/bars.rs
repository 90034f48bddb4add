//! Grouped bar charts.
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::draw::*;
use super::lines::{CHART_H, CHART_W};
use super::*;
use crate::error::{Result, RunError};

pub(super) struct BarsFigure<'a> {
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
    pub(super) fn new(
        title: &'a str,
        y_label: &'a str,
        categories: &'a [&'a str],
        groups: &'a [BarGroup],
        y_range: Option<(f64, f64)>,
    ) -> Result<Self> {
        let bad = |msg: String| Err(RunError::Invalid(format!("grouped_bars: {msg}")));
        check_range("grouped_bars", y_range)?;
        if categories.is_empty() {
            return bad("no categories".into());
        }
        if groups.is_empty() {
            return bad("no groups".into());
        }
        for g in groups {
            if g.values.len() != categories.len() {
                return bad(format!("group {:?} has {} values for {} categories", g.name, g.values.len(), categories.len()));
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
        let width = u32::try_from(categories.len()).unwrap_or(u32::MAX).saturating_mul(per_category).saturating_add(100).max(CHART_W);
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
