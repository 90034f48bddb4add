//! [`Capture`]: reads activations at chosen points and positions during a call.
use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::hooks::{Hook, HookContext, HookPoint, Positions};
use crate::{ModelError, Result};

/// One capture: the rows and absolute positions selected, and the activations there.
#[derive(Debug)]
pub struct Captured {
    /// Logical row of each captured vector, [n] i64: the batch row, or in a branched forward the intervention
    /// row ([`crate::branch`]).
    pub rows: Tensor,
    /// Absolute position of each captured vector, [n] i64.
    pub positions: Tensor,
    /// The activations, [n, ...] (the point's trailing dimensions), on the CPU in f32.
    pub values: Tensor,
}

/// Reads activations at chosen points and positions, keeping only those rows (never whole
/// [batch, pos, d] tensors unless asked with [`Positions::All`]).
pub struct Capture {
    points: Vec<HookPoint>,
    positions: Positions,
    chunks: BTreeMap<HookPoint, Vec<Captured>>,
}

impl Capture {
    /// Captures `points` at the tokens `positions` selects.
    pub fn new(points: impl IntoIterator<Item = HookPoint>, positions: Positions) -> Self {
        let mut points: Vec<HookPoint> = points.into_iter().collect();
        points.sort();
        points.dedup();
        Capture { points, positions, chunks: BTreeMap::new() }
    }

    /// Everything captured at `point`, concatenated over calls and steps in order.
    pub fn get(&self, point: HookPoint) -> Option<Captured> {
        let chunks = self.chunks.get(&point)?;
        let cat = |f: &dyn Fn(&Captured) -> &Tensor| Tensor::cat(&chunks.iter().map(f).collect::<Vec<_>>(), 0);
        Some(Captured { rows: cat(&|c| &c.rows), positions: cat(&|c| &c.positions), values: cat(&|c| &c.values) })
    }

    /// The activation at `point` for each of `batch` rows when exactly one token per row was captured
    /// (e.g. [`Positions::LastPrompt`]): [batch, ...] ordered by row.
    pub fn per_row(&self, point: HookPoint, batch: usize) -> Result<Tensor> {
        let c = self.get(point).ok_or_else(|| ModelError::Hook {
            point: point.to_string(),
            msg: "nothing was captured here".into(),
        })?;
        let rows: Vec<i64> = Vec::<i64>::try_from(&c.rows).map_err(ModelError::Torch)?;
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        if sorted != (0..batch as i64).collect::<Vec<_>>() {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("expected one captured token for each of {batch} rows, got rows {rows:?}"),
            });
        }
        let order = c.rows.argsort(0, false);
        Ok(c.values.index_select(0, &order))
    }

    /// Forgets what was captured, keeping the configuration.
    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}

impl Hook for Capture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let sel = ctx.select(&self.positions);
        if sel.rows.size()[0] == 0 {
            return Ok(None);
        }
        let values = act.index(&[Some(&sel.rows), Some(&sel.cols)]);
        let cpu = tch::Device::Cpu;
        self.chunks.entry(point).or_default().push(Captured {
            rows: sel.row_ids.to_device(cpu),
            positions: sel.positions.to_device(cpu),
            values: values.to_device(cpu).to_kind(Kind::Float),
        });
        Ok(None)
    }
}

