//! Statistics reduced inside a run, batch by batch: per-key sums (and optionally sums of squares) and
//! counts of tensors, so that memory grows with the number of keys (emotions, groups), never with the
//! number of prompts, and nothing concatenates a whole split's captures. On Llama-3.2-3B, 2,880 last-token
//! captures of `mlp.hook_post` alone would be 2.6 GB; their per-emotion sums are 5 MB.
//!
//! ```
//! use emo_run::GroupedSums;
//! use tch::{Kind, Tensor};
//! let mut s = GroupedSums::new(2, &[3], false);
//! let batch = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0]).view([2, 3]);
//! s.add(&[1, 1], &batch)?;
//! let mean = s.mean(1).unwrap();
//! assert_eq!(Vec::<f64>::try_from(mean)?, vec![3.0, 4.0, 5.0]);
//! assert!(s.mean(0).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use tch::{Device, Kind, Tensor};

use emo_model::{ModelError, Result};

/// Sums and counts of `[shape]` tensors per key `0..n_keys`, in f64 on the CPU.
#[derive(Debug)]
pub struct GroupedSums {
    shape: Vec<i64>,
    sums: Tensor,
    squares: Option<Tensor>,
    counts: Vec<u64>,
}

impl GroupedSums {
    /// Empty sums for `n_keys` keys of `shape`-shaped values; `squares` also keeps sums of squares (for
    /// standard deviations).
    pub fn new(n_keys: usize, shape: &[i64], squares: bool) -> Self {
        let full: Vec<i64> = std::iter::once(n_keys as i64).chain(shape.iter().copied()).collect();
        let zeros = || Tensor::zeros(full.as_slice(), (Kind::Double, Device::Cpu));
        GroupedSums { shape: shape.to_vec(), sums: zeros(), squares: squares.then(zeros), counts: vec![0; n_keys] }
    }

    /// Empty sums of the same keys and shape (with sums of squares when these keep them).
    pub fn empty_like(&self) -> GroupedSums {
        GroupedSums::new(self.counts.len(), &self.shape, self.squares.is_some())
    }

    /// Number of keys.
    pub fn n_keys(&self) -> usize {
        self.counts.len()
    }

    /// The shape of one value.
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// Adds `values[i]` ([n, shape...], any device and float dtype) to key `keys[i]`.
    pub fn add(&mut self, keys: &[usize], values: &Tensor) -> Result<()> {
        let size = values.size();
        if size.first().copied() != Some(keys.len() as i64) || size[1..] != self.shape[..] {
            return Err(ModelError::InvalidArgument(format!(
                "statistics of shape {:?} for {} keys got values of shape {size:?}",
                self.shape,
                keys.len()
            )));
        }
        if let Some(&bad) = keys.iter().find(|&&k| k >= self.counts.len()) {
            return Err(ModelError::InvalidArgument(format!("key {bad} out of range 0..{}", self.counts.len())));
        }
        let v = values.to_device(Device::Cpu).to_kind(Kind::Double);
        let idx = Tensor::from_slice(&keys.iter().map(|&k| k as i64).collect::<Vec<_>>());
        let _ = self.sums.index_add_(0, &idx, &v);
        if let Some(sq) = &mut self.squares {
            let _ = sq.index_add_(0, &idx, &v.square());
        }
        for &k in keys {
            self.counts[k] += 1;
        }
        Ok(())
    }

    /// Adds another accumulator's sums (e.g. a committed batch's) to these.
    pub fn merge(&mut self, other: &GroupedSums) -> Result<()> {
        if other.shape != self.shape || other.counts.len() != self.counts.len() || other.squares.is_some() != self.squares.is_some() {
            return Err(ModelError::InvalidArgument(format!(
                "cannot merge statistics of {} keys x {:?} into {} keys x {:?}",
                other.counts.len(),
                other.shape,
                self.counts.len(),
                self.shape
            )));
        }
        let _ = self.sums.g_add_(&other.sums);
        if let (Some(a), Some(b)) = (&mut self.squares, &other.squares) {
            let _ = a.g_add_(b);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// How many values key `k` received.
    pub fn count(&self, k: usize) -> u64 {
        self.counts.get(k).copied().unwrap_or(0)
    }

    /// The sum of key `k`, [shape] f64.
    pub fn sum(&self, k: usize) -> Tensor {
        self.sums.get(k as i64)
    }

    /// The mean of key `k` ([shape] f64), or `None` when it received nothing.
    pub fn mean(&self, k: usize) -> Option<Tensor> {
        let n = self.count(k);
        (n > 0).then(|| self.sums.get(k as i64) / n as f64)
    }

    /// The means of every key, [n_keys, shape...] f64 (zero where a key received nothing).
    pub fn means(&self) -> Tensor {
        let n: Vec<f64> = self.counts.iter().map(|&c| c.max(1) as f64).collect();
        let mut view = vec![self.counts.len() as i64];
        view.extend(std::iter::repeat_n(1, self.shape.len()));
        &self.sums / Tensor::from_slice(&n).view(view.as_slice())
    }

    /// The sample standard deviation of key `k` (n - 1 in the denominator), when sums of squares are kept
    /// and the key received at least two values.
    pub fn std(&self, k: usize) -> Option<Tensor> {
        let n = self.count(k) as f64;
        let sq = self.squares.as_ref()?;
        if n < 2.0 {
            return None;
        }
        let s = self.sums.get(k as i64);
        let var = (sq.get(k as i64) - s.square() / n) / (n - 1.0);
        Some(var.clamp_min(0.0).sqrt())
    }

    /// The tensors to store (`{name}.sum`, `{name}.count`, and `{name}.squares` when kept), for committing
    /// the statistics with a batch.
    pub fn to_tensors(&self, name: &str) -> Vec<(String, Tensor)> {
        let counts: Vec<i64> = self.counts.iter().map(|&c| c as i64).collect();
        let mut out = vec![(format!("{name}.sum"), self.sums.shallow_clone()), (format!("{name}.count"), Tensor::from_slice(&counts))];
        if let Some(sq) = &self.squares {
            out.push((format!("{name}.squares"), sq.shallow_clone()));
        }
        out
    }

    /// Rebuilds statistics from the tensors [`GroupedSums::to_tensors`] wrote, looked up by name in `get`.
    pub fn from_tensors(name: &str, mut get: impl FnMut(&str) -> Option<Tensor>) -> Result<GroupedSums> {
        let missing = |what: &str| ModelError::InvalidArgument(format!("statistics `{name}`: no tensor `{name}.{what}`"));
        let sums = get(&format!("{name}.sum")).ok_or_else(|| missing("sum"))?.to_kind(Kind::Double);
        let counts = get(&format!("{name}.count")).ok_or_else(|| missing("count"))?;
        let counts: Vec<i64> = Vec::<i64>::try_from(counts.to_kind(Kind::Int64))?;
        let squares = get(&format!("{name}.squares")).map(|t| t.to_kind(Kind::Double));
        let size = sums.size();
        if size.first().copied() != Some(counts.len() as i64) || squares.as_ref().is_some_and(|s| s.size() != size) {
            return Err(ModelError::InvalidArgument(format!(
                "statistics `{name}`: sums {size:?} do not match {} counts or the squares",
                counts.len()
            )));
        }
        Ok(GroupedSums { shape: size[1..].to_vec(), sums, squares, counts: counts.into_iter().map(|c| c.max(0) as u64).collect() })
    }
}
