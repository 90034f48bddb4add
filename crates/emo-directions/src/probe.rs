//! Linear probes with group-aware cross-validation: the paper's per-layer "linear-probe F1" (section 5).
//!
//! Each sample is a `d`-dimensional vector (an emotion vector read at one layer) with a class label
//! (the emotion) and a group id (its scenario-event group). Cross-validation keeps every group on one side of
//! each split ([`group_folds`]), so the probe is scored on scenarios it never saw.
//!
//! The probe is sklearn's default `LogisticRegression` (multinomial, L2, `C = 1`) on standardised features:
//! it minimises the **mean** cross-entropy plus `||W||² / (2·C·n)` (the same minimiser as sklearn's
//! `C·Σ loss + ½||W||²`; the intercept is not penalised), full batch with L-BFGS. tch 0.24 has no L-BFGS
//! optimiser, so this module carries a small one: the objective and its analytic gradient are computed with
//! LibTorch in f64 on the CPU (two matrix products per evaluation, no autograd), and the L-BFGS two-loop
//! recursion with a backtracking Armijo line search runs on plain vectors of `(d + 1)·classes` numbers.
//! It stops when the largest absolute gradient entry falls below [`ProbeConfig::tol`] (sklearn's `tol`
//! test) or after [`ProbeConfig::steps`] iterations.
use crate::error::{DirectionsError, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// How a probe is trained and cross-validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Number of cross-validation folds (at least 2; needs at least as many distinct groups).
    pub folds: usize,
    /// Inverse L2 strength as in sklearn (`C`); must be positive and finite.
    pub c: f64,
    /// Most L-BFGS iterations per fold.
    pub steps: usize,
    /// Stop when the largest absolute gradient entry of the mean objective is at most this.
    pub tol: f64,
    /// Seed of the group shuffle in [`group_folds`].
    pub seed: u64,
}

impl Default for ProbeConfig {
    /// 5 folds, `C = 1`, at most 200 L-BFGS iterations, gradient tolerance 1e-4 (sklearn's), seed 0.
    fn default() -> Self {
        ProbeConfig { folds: 5, c: 1.0, steps: 200, tol: 1e-4, seed: 0 }
    }
}

/// Cross-validated scores of a probe, computed on the out-of-fold predictions pooled over all folds.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeScore {
    /// Unweighted mean of the per-class F1 over the classes present in the labels or the predictions.
    pub macro_f1: f64,
    /// Fraction of samples predicted correctly.
    pub accuracy: f64,
    /// F1 of each class `0..n_classes` (0 for a class never seen nor predicted).
    pub per_class_f1: Vec<f64>,
    /// Number of folds used.
    pub folds: usize,
    /// Whether every fold's optimisation met the gradient tolerance within the step budget.
    pub converged: bool,
    /// Largest number of L-BFGS iterations any fold used.
    pub max_iterations: usize,
}

/// Assigns each sample to one of `k` folds so that all samples of a group share a fold.
///
/// The distinct group ids are sorted, shuffled with `seed` and then, largest group first (stable, so the
/// shuffle breaks ties), each goes to the fold holding the fewest samples so far (lowest index on ties) —
/// sklearn's `GroupKFold` balancing with a seeded order. Returns the fold (`0..k`) of every sample.
/// Errors when `k < 2` or when there are fewer distinct groups than folds.
pub fn group_folds(groups: &[usize], k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(DirectionsError::Invalid(format!("group_folds: need at least 2 folds, got {k}")));
    }
    let mut unique: Vec<usize> = groups.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() < k {
        return Err(DirectionsError::Invalid(format!(
            "group_folds: {} distinct groups for {k} folds; each fold needs at least one group",
            unique.len()
        )));
    }
    let mut rng = SplitMix64(seed);
    for i in (1..unique.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        unique.swap(i, j);
    }
    let mut size = std::collections::HashMap::with_capacity(unique.len());
    groups.iter().for_each(|&g| *size.entry(g).or_insert(0usize) += 1);
    let mut order: Vec<(usize, usize)> = unique.iter().map(|&g| (g, size[&g])).collect();
    order.sort_by_key(|&(_, size)| std::cmp::Reverse(size));
    let mut load = vec![0usize; k];
    let mut fold_of_group = std::collections::HashMap::with_capacity(order.len());
    for (g, n) in order {
        let f = (0..k).min_by_key(|&f| (load[f], f)).expect("k >= 2");
        load[f] += n;
        fold_of_group.insert(g, f);
    }
    Ok(groups.iter().map(|g| fold_of_group[g]).collect())
}

/// Macro F1 over classes `0..n_classes`, and the per-class F1.
///
/// Per class F1 = 2·TP / (2·TP + FP + FN). As in sklearn without an explicit label list, the macro average
/// covers only the classes that occur in `truth` or `pred`; an absent class gets F1 0 in the per-class list.
/// Errors on different lengths, empty input or a label `>= n_classes`.
pub fn macro_f1(pred: &[usize], truth: &[usize], n_classes: usize) -> Result<(f64, Vec<f64>)> {
    if pred.len() != truth.len() {
        return Err(DirectionsError::Invalid(format!("macro_f1: {} predictions for {} true labels", pred.len(), truth.len())));
    }
    if pred.is_empty() {
        return Err(DirectionsError::Invalid("macro_f1: no samples".into()));
    }
    if let Some(&bad) = pred.iter().chain(truth).find(|&&l| l >= n_classes) {
        return Err(DirectionsError::Invalid(format!("macro_f1: label {bad} is not below n_classes = {n_classes}")));
    }
    let (mut tp, mut fp, mut fnn) = (vec![0usize; n_classes], vec![0usize; n_classes], vec![0usize; n_classes]);
    for (&p, &t) in pred.iter().zip(truth) {
        if p == t {
            tp[t] += 1;
        } else {
            fp[p] += 1;
            fnn[t] += 1;
        }
    }
    let mut per_class = vec![0.0; n_classes];
    let mut sum = 0.0;
    let mut present = 0usize;
    for c in 0..n_classes {
        let denom = 2 * tp[c] + fp[c] + fnn[c];
        if denom > 0 {
            per_class[c] = 2.0 * tp[c] as f64 / denom as f64;
            sum += per_class[c];
            present += 1;
        }
    }
    Ok((sum / present as f64, per_class))
}

/// Cross-validated linear probe: macro F1 and accuracy of a multinomial logistic regression predicting
/// `labels` from the rows of `x` (`[n, d]`, any float kind, any device; computed on the CPU in f64), with
/// folds from [`group_folds`] over `groups`. Each fold standardises features with its training rows'
/// mean and (population) standard deviation, floored at 1e-6.
///
/// Errors on a non-2-D or non-float `x`, non-finite values, label or group counts that differ from `n`,
/// a label `>= n_classes`, fewer than 2 distinct labels, a bad config, or fewer groups than folds.
pub fn probe(x: &Tensor, labels: &[usize], groups: &[usize], n_classes: usize, cfg: &ProbeConfig) -> Result<ProbeScore> {
    let (n, _) = check_matrix("probe", x)?;
    if labels.len() != n || groups.len() != n {
        return Err(DirectionsError::Invalid(format!("probe: x has {n} rows but {} labels and {} group ids", labels.len(), groups.len())));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= n_classes) {
        return Err(DirectionsError::Invalid(format!("probe: label {bad} is not below n_classes = {n_classes}")));
    }
    let mut distinct = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 {
        return Err(DirectionsError::Invalid(format!("probe: need at least 2 distinct labels, got {} (n_classes = {n_classes})", distinct.len())));
    }
    if !(cfg.c > 0.0 && cfg.c.is_finite()) {
        return Err(DirectionsError::Invalid(format!("probe: C must be positive and finite, got {}", cfg.c)));
    }
    if cfg.steps == 0 || cfg.tol.is_nan() || cfg.tol < 0.0 {
        return Err(DirectionsError::Invalid(format!("probe: need steps >= 1 and tol >= 0, got steps = {} and tol = {}", cfg.steps, cfg.tol)));
    }
    let fold = group_folds(groups, cfg.folds, cfg.seed)?;
    let x = x.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    check_finite("probe", &x)?;

    // One single-threaded worker: see `cross_validate`. The caller's count is what to restore afterwards.
    let threads = tch::get_num_threads();
    let (pred, converged, max_iterations) = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let _one = OneThread::enter(threads);
                cross_validate(x, labels, &fold, n_classes, cfg)
            })
            .join()
            .unwrap_or_else(|_| Err(DirectionsError::Invalid("probe: the fitting thread panicked".into())))
    })?;
    let (macro_f1, per_class_f1) = macro_f1(&pred, labels, n_classes)?;
    let accuracy = pred.iter().zip(labels).filter(|(p, t)| p == t).count() as f64 / n as f64;
    Ok(ProbeScore { macro_f1, accuracy, per_class_f1, folds: cfg.folds, converged, max_iterations })
}

/// Fits one probe per fold and returns the out-of-fold predictions, whether every fold converged and the
/// most iterations a fold took.
///
/// It runs on a thread of its own with LibTorch limited to one thread there (see [`OneThread`]): the
/// products here are a few million multiply-adds, too small to gain from threads, and OpenMP threads waiting
/// on a core that another process keeps busy made one call 3-500x slower in measurements on 2 cores
/// (n = 2880, d = 576: 0.22 s on one thread; 0.6-3.4 s on two while another process ran).
fn cross_validate(x: Tensor, labels: &[usize], fold: &[usize], n_classes: usize, cfg: &ProbeConfig) -> Result<(Vec<usize>, bool, usize)> {
    let n = labels.len();
    let mut pred = vec![0usize; n];
    let mut converged = true;
    let mut max_iterations = 0;
    for f in 0..cfg.folds {
        let train: Vec<i64> = (0..n).filter(|&i| fold[i] != f).map(|i| i as i64).collect();
        let test: Vec<i64> = (0..n).filter(|&i| fold[i] == f).map(|i| i as i64).collect();
        let xtr = x.f_index_select(0, &Tensor::from_slice(&train))?;
        let xte = x.f_index_select(0, &Tensor::from_slice(&test))?;
        let mean = xtr.f_mean_dim([0i64].as_slice(), true, Kind::Double)?;
        let xtr = xtr.f_sub(&mean)?;
        let std = xtr.f_square()?.f_mean_dim([0i64].as_slice(), true, Kind::Double)?.f_sqrt()?.f_clamp_min(1e-6)?;
        let xtr = xtr.f_div(&std)?;
        let xte = xte.f_sub(&mean)?.f_div(&std)?;
        let ytr: Vec<usize> = train.iter().map(|&i| labels[i as usize]).collect();
        let fit = fit_softmax(&xtr, &ytr, n_classes, cfg)?;
        converged &= fit.converged;
        max_iterations = max_iterations.max(fit.iterations);
        let logits = xte.f_mm(&fit.w)?.f_add(&fit.b)?.f_contiguous()?;
        let logits: Vec<f64> = Vec::try_from(&logits.f_view([-1])?)?;
        for (row, &i) in logits.chunks(n_classes).zip(&test) {
            pred[i as usize] = argmax(row);
        }
    }
    Ok((pred, converged, max_iterations))
}

/// Limits LibTorch's intra-op threads to one on the current thread while alive, then sets `restore`.
/// OpenMP's thread count and MKL's local setting belong to the calling thread; ATen also remembers the
/// count for threads it starts later, which `restore` (the count on the probe's caller) puts back.
struct OneThread(i32);

impl OneThread {
    fn enter(restore: i32) -> Self {
        tch::set_num_threads(1);
        OneThread(restore)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0.max(1));
    }
}

/// A fitted softmax model: logits = `x · w + b`.
struct Fit {
    w: Tensor,
    b: Tensor,
    iterations: usize,
    converged: bool,
}

/// First index of the largest value (ties go to the lower class, deterministically).
fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Checks that `x` is a 2-D float tensor and returns its `(rows, columns)`.
pub(crate) fn check_matrix(what: &str, x: &Tensor) -> Result<(usize, usize)> {
    let size = x.size();
    if size.len() != 2 {
        return Err(DirectionsError::Invalid(format!("{what}: expected a 2-D [n, d] tensor, got shape {size:?}")));
    }
    if !x.is_floating_point() {
        return Err(DirectionsError::Invalid(format!("{what}: expected a float tensor, got {:?}", x.kind())));
    }
    if size[0] == 0 || size[1] == 0 {
        return Err(DirectionsError::Invalid(format!("{what}: empty tensor of shape {size:?}")));
    }
    Ok((size[0] as usize, size[1] as usize))
}

/// Errors when `x` holds a NaN or an infinity (they would silently poison the fit).
pub(crate) fn check_finite(what: &str, x: &Tensor) -> Result<()> {
    if !bool::try_from(x.f_isfinite()?.f_all()?)? {
        return Err(DirectionsError::Invalid(format!("{what}: input holds NaN or infinite values")));
    }
    Ok(())
}

/// The penalised mean softmax cross-entropy on standardised `x` (`[n, d]`, f64), with its gradient.
struct Objective {
    x: Tensor,
    onehot: Tensor,
    d: i64,
    k: i64,
    n: f64,
    /// L2 coefficient on the mean loss: `1 / (C·n)`.
    lambda: f64,
}

impl Objective {
    /// Loss and gradient at `theta` = `[Wᵀ (k×d, row-major), b (k)]`.
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let dk = (self.d * self.k) as usize;
        // Wᵀ is stored k×d because `rᵀ·x` is the fastest way to get the gradient from row-major x.
        let wt = Tensor::from_slice(&theta[..dk]).f_view([self.k, self.d])?;
        let b = Tensor::from_slice(&theta[dk..]);
        let logits = self.x.f_mm(&wt.f_tr()?)?.f_add(&b)?;
        let lse = logits.f_logsumexp([1i64].as_slice(), true)?;
        let logp = logits.f_sub(&lse)?;
        let nll = -f64::try_from(logp.f_mul(&self.onehot)?.f_sum(Kind::Double)?)? / self.n;
        let wsq: f64 = theta[..dk].iter().map(|v| v * v).sum();
        let loss = nll + 0.5 * self.lambda * wsq;
        // d(mean CE)/d logits = (softmax - onehot) / n.
        let r = logp.f_exp()?.f_sub(&self.onehot)?.f_div_scalar(self.n)?;
        let gw = r.f_tr()?.f_mm(&self.x)?.f_add(&wt.f_mul_scalar(self.lambda)?)?;
        let gb = r.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?;
        let g = Tensor::f_cat(&[gw.f_contiguous()?.f_view([-1])?, gb], 0)?;
        Ok((loss, Vec::try_from(&g)?))
    }
}

/// Largest absolute entry: the stopping test on the gradient.
fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Dot product of two optimiser vectors.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits the L2-penalised softmax regression by L-BFGS (memory 10, Armijo backtracking), from zero weights.
fn fit_softmax(x: &Tensor, y: &[usize], k: usize, cfg: &ProbeConfig) -> Result<Fit> {
    const MEMORY: usize = 10;
    let (n, d) = (x.size()[0], x.size()[1]);
    let yi: Vec<i64> = y.iter().map(|&c| c as i64).collect();
    let onehot = Tensor::from_slice(&yi).f_one_hot(k as i64)?.f_to_kind(Kind::Double)?;
    let obj = Objective { x: x.shallow_clone(), onehot, d, k: k as i64, n: n as f64, lambda: 1.0 / (cfg.c * n as f64) };
    let dim = ((d + 1) * k as i64) as usize;
    let mut theta = vec![0.0; dim];
    let (mut f, mut g) = obj.eval(&theta)?;
    let mut mem: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    let mut iterations = 0;
    while iterations < cfg.steps && max_abs(&g) > cfg.tol {
        iterations += 1;
        // Two-loop recursion: dir = -H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(mem.len());
        for (s, yv, rho) in mem.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match mem.back() {
            Some((s, yv, _)) => dot(s, yv) / dot(yv, yv),
            // No curvature yet: a first step of length at most 1 keeps the softmax out of overflow.
            None => 1.0 / g.iter().map(|v| v.abs()).sum::<f64>().max(1.0),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, yv, rho), a) in mem.iter().zip(alphas.iter().rev()) {
            let bta = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - bta) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope.is_nan() || slope >= 0.0 {
            // A stale curvature pair gave no descent direction: restart from steepest descent.
            mem.clear();
            let scale = 1.0 / g.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
            dir = g.iter().map(|v| -v * scale).collect();
            slope = dot(&g, &dir);
        }
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..40 {
            let cand: Vec<f64> = theta.iter().zip(&dir).map(|(a, b)| a + t * b).collect();
            let (fc, gc) = obj.eval(&cand)?;
            if fc.is_finite() && fc <= f + 1e-4 * t * slope {
                accepted = Some((cand, fc, gc));
                break;
            }
            t *= 0.5;
        }
        let Some((cand, fc, gc)) = accepted else { break }; // no decrease possible at f64 precision
        let s: Vec<f64> = cand.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gc.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        // Keep only pairs with positive curvature so the inverse-Hessian estimate stays positive definite.
        if sy > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() && sy > 0.0 {
            if mem.len() == MEMORY {
                mem.pop_front();
            }
            mem.push_back((s, yv, 1.0 / sy));
        }
        let rel = (f - fc) / f.abs().max(fc.abs()).max(1.0);
        theta = cand;
        f = fc;
        g = gc;
        if rel <= 1e-14 {
            break; // stalled at f64 precision
        }
    }
    let converged = max_abs(&g) <= cfg.tol;
    let dk = (d * k as i64) as usize;
    let w = Tensor::from_slice(&theta[..dk]).f_view([k as i64, d])?.f_tr()?;
    let b = Tensor::from_slice(&theta[dk..]);
    Ok(Fit { w, b, iterations, converged })
}

/// A small seeded generator (SplitMix64) so fold assignment is reproducible without extra dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE5_E4B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
