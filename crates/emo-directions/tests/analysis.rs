//! Probes, group folds, PCA and cosine matrices on small synthetic data (no model needed).
use emo_directions::pca::{cosine_matrix, pca};
use emo_directions::probe::{group_folds, macro_f1, probe, ProbeConfig};
use tch::{Kind, Tensor};

/// Seeded normal samples (SplitMix64 + Box-Muller) so tests never share LibTorch's global generator.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE5_E4B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// `groups` scenario groups of 6 emotions each: x = separation·mean[label] + group offset + noise.
/// Returns (x [n, d] f32, labels, groups).
fn emotion_like(groups: usize, d: usize, separation: f64, seed: u64) -> (Tensor, Vec<usize>, Vec<usize>) {
    let mut rng = Rng(seed);
    let means: Vec<Vec<f64>> = (0..6).map(|_| (0..d).map(|_| rng.normal()).collect()).collect();
    let (mut x, mut labels, mut gids) = (Vec::new(), Vec::new(), Vec::new());
    for g in 0..groups {
        let offset: Vec<f64> = (0..d).map(|_| 0.5 * rng.normal()).collect();
        for (c, mean) in means.iter().enumerate() {
            for j in 0..d {
                x.push((separation * mean[j] + offset[j] + rng.normal()) as f32);
            }
            labels.push(c);
            gids.push(1000 + 7 * g); // not 0..G, to check ids are only used as keys
        }
    }
    let n = labels.len() as i64;
    (Tensor::from_slice(&x).view([n, d as i64]), labels, gids)
}

fn to_vec2(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

#[test]
fn separable_clusters_give_f1_near_one() {
    let (x, labels, groups) = emotion_like(40, 32, 1.0, 1);
    let score = probe(&x, &labels, &groups, 6, &ProbeConfig::default()).unwrap();
    assert!(score.macro_f1 > 0.97, "{score:?}");
    assert!(score.accuracy > 0.97, "{score:?}");
    assert_eq!(score.per_class_f1.len(), 6);
    assert_eq!(score.folds, 5);
}

#[test]
fn random_labels_give_chance_f1() {
    let (x, _, groups) = emotion_like(40, 32, 1.0, 2);
    let mut rng = Rng(99);
    let labels: Vec<usize> = (0..groups.len()).map(|_| (rng.u64() % 6) as usize).collect();
    let score = probe(&x, &labels, &groups, 6, &ProbeConfig::default()).unwrap();
    assert!(score.macro_f1 < 0.35, "{score:?}");
    assert!(score.accuracy < 0.35, "{score:?}");
}

#[test]
fn probe_is_deterministic_and_converges() {
    let (x, labels, groups) = emotion_like(30, 24, 0.3, 3);
    let cfg = ProbeConfig { c: 0.1, steps: 1000, tol: 1e-6, ..ProbeConfig::default() };
    let threads = tch::get_num_threads();
    let a = probe(&x, &labels, &groups, 6, &cfg).unwrap();
    assert_eq!(tch::get_num_threads(), threads, "the probe's one-thread limit must not leak");
    let b = probe(&x, &labels, &groups, 6, &cfg).unwrap();
    assert!(a.converged, "{a:?}");
    assert!(a.max_iterations < 1000, "{a:?}");
    assert_eq!(a.macro_f1, b.macro_f1);
    assert_eq!(a.per_class_f1, b.per_class_f1);
    // The same inputs in f64 give the same predictions (the probe works in f64 internally).
    let c = probe(&x.to_kind(Kind::Double), &labels, &groups, 6, &cfg).unwrap();
    assert_eq!(a.macro_f1, c.macro_f1);
}

#[test]
fn group_folds_keep_groups_whole_and_balanced() {
    // Groups of unequal size: 30 groups of 6 and 5 groups of 2.
    let mut groups = Vec::new();
    for g in 0..30 {
        groups.extend(std::iter::repeat_n(g * 3, 6));
    }
    for g in 0..5 {
        groups.extend(std::iter::repeat_n(500 + g, 2));
    }
    let folds = group_folds(&groups, 5, 7).unwrap();
    assert_eq!(folds.len(), groups.len());
    for (i, g) in groups.iter().enumerate() {
        for (j, h) in groups.iter().enumerate() {
            if g == h {
                assert_eq!(folds[i], folds[j], "group {g} split across folds");
            }
        }
    }
    let mut sizes = [0usize; 5];
    folds.iter().for_each(|&f| sizes[f] += 1);
    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    assert!(hi - lo <= 6, "unbalanced folds {sizes:?}");
    assert_eq!(folds, group_folds(&groups, 5, 7).unwrap(), "same seed, same folds");
    assert_ne!(folds, group_folds(&groups, 5, 8).unwrap(), "the seed shuffles groups");
    // Equal-size groups deal out exactly evenly.
    let even: Vec<usize> = (0..60).map(|i| i / 6).collect();
    let f = group_folds(&even, 5, 0).unwrap();
    let mut sizes = [0usize; 5];
    f.iter().for_each(|&k| sizes[k] += 1);
    assert_eq!(sizes, [12; 5]);
}

#[test]
fn bad_inputs_are_errors() {
    let (x, labels, groups) = emotion_like(6, 8, 1.0, 4);
    let cfg = ProbeConfig::default();
    let err = |r: emo_directions::Result<_>| r.map(|_: emo_directions::probe::ProbeScore| ()).unwrap_err().to_string();
    assert!(err(probe(&x, &labels[1..], &groups, 6, &cfg)).contains("35 labels"));
    assert!(err(probe(&x, &labels, &groups[1..], 6, &cfg)).contains("35 group ids"));
    assert!(err(probe(&x, &labels, &groups, 5, &cfg)).contains("label 5"));
    assert!(err(probe(&x, &vec![2; 36], &groups, 6, &cfg)).contains("2 distinct labels"));
    assert!(err(probe(&x.view([-1]), &labels, &groups, 6, &cfg)).contains("2-D"));
    assert!(err(probe(&x.to_kind(Kind::Int64), &labels, &groups, 6, &cfg)).contains("float"));
    let few = ProbeConfig { folds: 7, ..ProbeConfig::default() };
    assert!(err(probe(&x, &labels, &groups, 6, &few)).contains("6 distinct groups for 7 folds"));
    let bad_c = ProbeConfig { c: 0.0, ..ProbeConfig::default() };
    assert!(err(probe(&x, &labels, &groups, 6, &bad_c)).contains("C must be positive"));
    let nan = x.copy();
    let _ = nan.get(3).get(2).fill_(f64::NAN);
    assert!(err(probe(&nan, &labels, &groups, 6, &cfg)).contains("NaN"));
    assert!(group_folds(&[1, 2, 3], 1, 0).is_err());
    assert!(macro_f1(&[0, 1], &[0], 2).unwrap_err().to_string().contains("2 predictions for 1 true labels"));
    assert!(macro_f1(&[0, 3], &[0, 1], 2).is_err());
    assert!(macro_f1(&[], &[], 2).is_err());
}

#[test]
fn macro_f1_matches_hand_computation() {
    let truth = [0, 0, 0, 1, 1, 2];
    let pred = [0, 0, 1, 1, 2, 2];
    // class 0: TP 2, FP 0, FN 1 -> 4/5; class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: TP 1, FP 1, FN 0 -> 2/3.
    let want = [0.8, 0.5, 2.0 / 3.0];
    let (m, per) = macro_f1(&pred, &truth, 3).unwrap();
    for (a, b) in per.iter().zip(want) {
        assert!((a - b).abs() < 1e-12);
    }
    assert!((m - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    // A class neither true nor predicted is left out of the average.
    let (m4, per4) = macro_f1(&pred, &truth, 4).unwrap();
    assert!((m4 - m).abs() < 1e-12);
    assert_eq!(per4[3], 0.0);
    // A class that is true but never predicted counts as 0.
    let (m2, per2) = macro_f1(&[0, 0], &[0, 1], 2).unwrap();
    assert_eq!(per2, vec![2.0 / 3.0, 0.0]);
    assert!((m2 - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn pca_matches_covariance_eigendecomposition() {
    let mut rng = Rng(5);
    let (n, d) = (60usize, 7usize);
    let scales = [5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.2];
    let data: Vec<f64> = (0..n * d).map(|i| scales[i % d] * rng.normal() + i as f64 % 3.0).collect();
    // Rotate so the axes are not the coordinate axes.
    let raw = Tensor::from_slice(&data).view([n as i64, d as i64]);
    let q = Tensor::from_slice(&(0..d * d).map(|_| rng.normal()).collect::<Vec<_>>()).view([7, 7]);
    let (q, _) = Tensor::linalg_qr(&q, "reduced");
    let x = raw.mm(&q);
    let k = 4;
    let p = pca(&x, k).unwrap();
    assert_eq!(p.components.size(), [4, 7]);
    assert_eq!(p.projected.size(), [60, 4]);
    assert_eq!(p.mean.size(), [7]);

    let xc = &x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
    let cov = xc.tr().mm(&xc) / (n as f64 - 1.0);
    let (evals, evecs) = cov.linalg_eigh("L");
    let evals: Vec<f64> = Vec::try_from(&evals).unwrap();
    let total: f64 = evals.iter().sum();
    let evecs = to_vec2(&evecs.tr());
    let comps = to_vec2(&p.components);
    assert_eq!(comps.len(), k);
    for (i, comp) in comps.iter().enumerate() {
        let j = d - 1 - i; // eigh sorts ascending
        assert!((p.explained_variance[i] - evals[j]).abs() < 1e-9 * evals[j].max(1.0), "variance {i}");
        assert!((p.explained_variance_ratio[i] - evals[j] / total).abs() < 1e-10, "ratio {i}");
        let cos: f64 = comp.iter().zip(&evecs[j]).map(|(a, b)| a * b).sum();
        assert!((cos.abs() - 1.0).abs() < 1e-9, "component {i} differs from the eigenvector: cos {cos}");
        // Sign convention: the largest-magnitude entry is positive.
        let big = comp.iter().cloned().fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
        assert!(big > 0.0);
    }
    let ratios = &p.explained_variance_ratio;
    assert!(ratios.windows(2).all(|w| w[0] >= w[1]));
    // transform of the fitted rows reproduces `projected`; projected_xy gives its first two columns.
    let t = p.transform(&x.to_kind(Kind::Float)).unwrap();
    assert!(f64::try_from((&t - &p.projected).abs().max()).unwrap() < 1e-4);
    let xy = p.projected_xy();
    let proj = to_vec2(&p.projected);
    assert_eq!(xy.len(), n);
    assert_eq!(xy[10], (proj[10][0], proj[10][1]));

    assert!(pca(&x, 0).is_err());
    assert!(pca(&x, 8).unwrap_err().to_string().contains("k = 8"));
    assert!(pca(&x.narrow(0, 0, 3), 4).unwrap_err().to_string().contains("3 rows"));
    assert!(pca(&Tensor::ones([5, 3], (Kind::Float, tch::Device::Cpu)), 2).unwrap_err().to_string().contains("no variance"));
    assert!(p.transform(&Tensor::zeros([2, 6], (Kind::Float, tch::Device::Cpu))).unwrap_err().to_string().contains("dimension 6"));
}

#[test]
fn cosine_matrix_by_hand() {
    let a = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 1.0, 0.0, 2.0, -3.0, 0.0]).view([4, 2]);
    let c = to_vec2(&cosine_matrix(&a).unwrap());
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let want = [[1.0, h, 0.0, -1.0], [h, 1.0, h, -h], [0.0, h, 1.0, 0.0], [-1.0, -h, 0.0, 1.0]];
    for i in 0..4 {
        for j in 0..4 {
            assert!((c[i][j] - want[i][j]).abs() < 1e-7, "({i},{j}): {} vs {}", c[i][j], want[i][j]);
        }
    }
    let (x, _, _) = emotion_like(3, 16, 1.0, 6);
    let c = cosine_matrix(&x).unwrap();
    assert!(f64::try_from((&c - c.tr()).abs().max()).unwrap() < 1e-12);
    assert!(f64::try_from((c.diagonal(0, 0, 1) - 1.0).abs().max()).unwrap() < 1e-12);
    assert!(cosine_matrix(&a.view([-1])).is_err());
}

/// One probe call at the paper's largest size for a small model (n = 2880, d = 576, 5 folds), and PCA.
/// `cargo test --release -p emo-directions --test analysis -- --ignored --nocapture`.
#[test]
#[ignore]
fn probe_timing() {
    let (x, labels, groups) = emotion_like(480, 576, 0.15, 7);
    let cfg = ProbeConfig::default();
    let _ = probe(&x.narrow(0, 0, 600), &labels[..600], &groups[..600], 6, &cfg).unwrap(); // warm-up
    let t = std::time::Instant::now();
    let s = probe(&x, &labels, &groups, 6, &cfg).unwrap();
    eprintln!("probe n=2880 d=576: {:.3} s, {s:?}", t.elapsed().as_secs_f64());
    for d in [576, 3072] {
        let (x, _, _) = emotion_like(480, d, 0.15, 8);
        let t = std::time::Instant::now();
        let p = pca(&x, 2).unwrap();
        eprintln!("pca n=2880 d={d}: {:.3} s, ratios {:?}", t.elapsed().as_secs_f64(), p.explained_variance_ratio);
    }
}
