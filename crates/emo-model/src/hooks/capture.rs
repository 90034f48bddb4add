//! [`Capture`]: reads activations at chosen points and positions during a call.
//!
//! What a capture keeps lives outside the malloc heap, in anonymous memory maps that grow geometrically.
//! Captured rows are small and long-lived; the forward passes around them allocate and free large
//! activations. Kept as small tensors on the heap, each capture pinned a piece of the heap between freed
//! activations, so the heap could not reuse or return that space and a process capturing pass after pass
//! grew without bound (SmolLM2, batch 8 x 64 tokens: 1.27 GB after one pass, 5.65 GB after 30, with 0.1 GB
//! actually captured). In maps of their own they cannot fragment it.
use std::collections::BTreeMap;

use memmap2::MmapMut;
use tch::{Kind, Tensor};

use super::{Hook, HookContext, HookPoint, Positions};
use crate::{ModelError, Result};

/// One capture: the rows and absolute positions selected, and the activations there.
#[derive(Debug)]
pub struct Captured {
    /// Logical row of each captured vector, [n] i64: the batch row, or in a branched forward the intervention
    /// row ([`crate::branch`]).
    pub rows: Tensor,
    /// Absolute position of each captured vector, [n] i64.
    pub positions: Tensor,
    /// The activations, [n, ...] (the point's dimensions after batch and position; [n, head, key_pos] for
    /// the attention scores and pattern), on the CPU in f32.
    pub values: Tensor,
}

impl Captured {
    /// The activations as an `ndarray` array of f32, `[n, ...]`, for work outside LibTorch.
    pub fn to_ndarray(&self) -> Result<ndarray::ArrayD<f32>> {
        super::cache::to_ndarray(&self.values)
    }
}

/// A growable array of plain numbers in an anonymous memory map (page-aligned, outside the malloc heap).
struct MapBuf<T> {
    map: Option<MmapMut>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy + tch::kind::Element> MapBuf<T> {
    fn new() -> Self {
        MapBuf { map: None, len: 0, _t: std::marker::PhantomData }
    }

    fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len() / std::mem::size_of::<T>())
    }

    fn slice(&self) -> &[T] {
        match &self.map {
            // SAFETY: the map is page-aligned (so aligned for T), holds at least `len` initialised Ts, and
            // T is a plain number type (`Element`: f32 or i64 here) for which any bit pattern is valid.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr() as *const T, self.len) },
            None => &[],
        }
    }

    /// Appends the `n` elements of `t` (contiguous, on the CPU, of T's kind).
    fn push_tensor(&mut self, t: &Tensor) -> Result<()> {
        let n = t.numel();
        if self.len + n > self.capacity() {
            let want = (self.len + n).max(2 * self.capacity()).max(4096 / std::mem::size_of::<T>());
            let mut map = MmapMut::map_anon(want * std::mem::size_of::<T>())
                .map_err(|e| ModelError::InvalidArgument(format!("cannot map {} bytes for a capture: {e}", want * std::mem::size_of::<T>())))?;
            if let Some(old) = &self.map {
                let bytes = self.len * std::mem::size_of::<T>();
                map[..bytes].copy_from_slice(&old[..bytes]);
            }
            self.map = Some(map);
        }
        let map = self.map.as_mut().expect("allocated above");
        // SAFETY: as in `slice`; the range len..len+n lies within the map's capacity.
        let dst = unsafe { std::slice::from_raw_parts_mut((map.as_mut_ptr() as *mut T).add(self.len), n) };
        t.f_copy_data(dst, n).map_err(ModelError::Torch)?;
        self.len += n;
        Ok(())
    }

    fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(self.slice())
    }
}

/// Everything captured at one point.
struct Stored {
    trailing: Vec<i64>,
    rows: MapBuf<i64>,
    positions: MapBuf<i64>,
    values: MapBuf<f32>,
}

/// Reads activations at chosen points and positions, keeping only those rows (never whole
/// [batch, pos, d] tensors unless asked with [`Positions::All`]).
pub struct Capture {
    points: Vec<HookPoint>,
    positions: Positions,
    stored: BTreeMap<HookPoint, Stored>,
}

impl Capture {
    /// Captures `points` at the tokens `positions` selects.
    pub fn new(points: impl IntoIterator<Item = HookPoint>, positions: Positions) -> Self {
        let mut points: Vec<HookPoint> = points.into_iter().collect();
        points.sort();
        points.dedup();
        Capture { points, positions, stored: BTreeMap::new() }
    }

    /// Everything captured at `point`, concatenated over calls and steps in order (a copy).
    pub fn get(&self, point: HookPoint) -> Option<Captured> {
        let s = self.stored.get(&point)?;
        let shape: Vec<i64> = std::iter::once(s.rows.len as i64).chain(s.trailing.iter().copied()).collect();
        Some(Captured { rows: s.rows.to_tensor(), positions: s.positions.to_tensor(), values: s.values.to_tensor().view(shape.as_slice()) })
    }

    /// The activation at `point` for each of `batch` rows when exactly one token per row was captured
    /// (e.g. [`Positions::LastPrompt`]): [batch, ...] ordered by row.
    pub fn per_row(&self, point: HookPoint, batch: usize) -> Result<Tensor> {
        let c = self.get(point).ok_or_else(|| ModelError::Hook { point: point.to_string(), msg: "nothing was captured here".into() })?;
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
        self.stored.clear();
    }
}

impl Hook for Capture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn call(&mut self, point: HookPoint, act: &Tensor, ctx: &HookContext) -> Result<Option<Tensor>> {
        let Some(sel) = ctx.select_some(&self.positions) else {
            return Ok(None);
        };
        let cpu = tch::Device::Cpu;
        // Positions index queries: [batch, head, query, key] is read as [batch, query, head, key].
        let act = if point.pos_dim() == 2 { act.transpose(1, 2) } else { act.shallow_clone() };
        let values = act.index(&[Some(&sel.rows), Some(&sel.cols)]).to_device(cpu).to_kind(Kind::Float).contiguous();
        let trailing = act.size()[2..].to_vec();
        let s = self.stored.entry(point).or_insert_with(|| Stored {
            trailing: trailing.clone(),
            rows: MapBuf::new(),
            positions: MapBuf::new(),
            values: MapBuf::new(),
        });
        if s.trailing != trailing {
            return Err(ModelError::Hook {
                point: point.to_string(),
                msg: format!("captured shapes {:?} and now {trailing:?} cannot be stacked", s.trailing),
            });
        }
        s.rows.push_tensor(&sel.row_ids.to_device(cpu).contiguous())?;
        s.positions.push_tensor(&sel.positions.to_device(cpu).contiguous())?;
        s.values.push_tensor(&values)?;
        Ok(None)
    }
}
