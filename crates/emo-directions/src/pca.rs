//! PCA of emotion vectors (the paper's 2-D maps) and pairwise cosine similarity (its Fig. 6: one emotion's
//! direction across all 2·L sublayers). All results are f64 tensors on the CPU.
use crate::error::{DirectionsError, Result};
use crate::probe::{check_finite, check_matrix};
use tch::{Device, Kind, Tensor};

/// A fitted principal component analysis.
#[derive(Debug)]
pub struct Pca {
    /// Mean of the fitted rows, `[d]`.
    pub mean: Tensor,
    /// Principal axes as rows, `[k, d]`, unit norm, by decreasing variance; each row's largest-magnitude
    /// entry is positive (sklearn's `svd_flip` convention) so signs are reproducible.
    pub components: Tensor,
    /// Variance along each component (sample variance, divided by `n - 1`).
    pub explained_variance: Vec<f64>,
    /// Share of the total variance along each component.
    pub explained_variance_ratio: Vec<f64>,
    /// The fitted rows in component coordinates, `[n, k]`.
    pub projected: Tensor,
}

/// Fits a `k`-component PCA to the rows of `x` (`[n, d]`, any float kind and device) by a thin SVD of the
/// centred data. Errors when `x` is not a finite 2-D float matrix, when `n < 2`, when `k` is 0 or exceeds
/// `n` or `d`, or when all rows are equal (no variance to explain).
pub fn pca(x: &Tensor, k: usize) -> Result<Pca> {
    let (n, d) = check_matrix("pca", x)?;
    if n < 2 {
        return Err(DirectionsError::Invalid(format!("pca: need at least 2 rows, got {n}")));
    }
    if k == 0 || k > n || k > d {
        return Err(DirectionsError::Invalid(format!("pca: k = {k} components requested from {n} rows of dimension {d}; need 1 <= k <= min(n, d)")));
    }
    let x = x.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    check_finite("pca", &x)?;
    let mean = x.f_mean_dim([0i64].as_slice(), false, Kind::Double)?;
    let xc = x.f_sub(&mean)?;
    // `svd`, not `linalg_svd`: tch always passes linalg_svd a `driver`, which LibTorch refuses on the CPU.
    let (_u, s, v) = xc.f_svd(true, true)?; // thin; v: [d, min(n, d)], columns are the axes
    let s: Vec<f64> = Vec::try_from(&s)?;
    let total: f64 = s.iter().map(|v| v * v).sum();
    if total <= 0.0 {
        return Err(DirectionsError::Invalid(format!("pca: all {n} rows are equal; there is no variance")));
    }
    let comps = v.f_narrow(1, 0, k as i64)?.f_tr()?; // [k, d]

    // svd_flip: make each axis's largest-|entry| positive.
    let idx = comps.f_abs()?.f_argmax(1, true)?;
    let sign = comps.f_gather(1, &idx, false)?.f_ge(0.0)?.f_to_kind(Kind::Double)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
    let components = comps.f_mul(&sign)?.f_contiguous()?;
    let projected = xc.f_mm(&components.f_tr()?)?;
    let explained_variance = s[..k].iter().map(|v| v * v / (n - 1) as f64).collect();
    let explained_variance_ratio = s[..k].iter().map(|v| v * v / total).collect();
    Ok(Pca { mean, components, explained_variance, explained_variance_ratio, projected })
}

impl Pca {
    /// Number of components.
    pub fn k(&self) -> usize {
        self.explained_variance_ratio.len()
    }

    /// Projects rows of `x` (`[m, d]`, any float kind and device) onto the components: `[m, k]` f64.
    pub fn transform(&self, x: &Tensor) -> Result<Tensor> {
        let (_, d) = check_matrix("Pca::transform", x)?;
        let want = self.mean.size()[0] as usize;
        if d != want {
            return Err(DirectionsError::Invalid(format!("Pca::transform: rows have dimension {d} but the PCA was fitted on dimension {want}")));
        }
        let x = x.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        Ok(x.f_sub(&self.mean)?.f_mm(&self.components.f_tr()?)?)
    }

    /// The fitted rows' coordinates on the first two components, for a scatter plot. With a single
    /// component the second coordinate is 0.
    pub fn projected_xy(&self) -> Vec<(f64, f64)> {
        let k = self.projected.size()[1];
        let first: Vec<f64> = Vec::try_from(&self.projected.select(1, 0).contiguous()).unwrap_or_default();
        let second: Vec<f64> =
            if k > 1 { Vec::try_from(&self.projected.select(1, 1).contiguous()).unwrap_or_default() } else { vec![0.0; first.len()] };
        first.into_iter().zip(second).collect()
    }
}

/// Pairwise cosine similarity of the rows of `a` (`[m, d]`, any float kind and device): `[m, m]` f64.
///
/// Each row is divided by `max(norm, 1e-12)`, so a zero row has similarity 0 with everything (itself too).
pub fn cosine_matrix(a: &Tensor) -> Result<Tensor> {
    check_matrix("cosine_matrix", a)?;
    let a = a.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    check_finite("cosine_matrix", &a)?;
    let norm = a.f_square()?.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Double)?.f_sqrt()?.f_clamp_min(1e-12)?;
    let unit = a.f_div(&norm)?;
    Ok(unit.f_mm(&unit.f_tr()?)?)
}
