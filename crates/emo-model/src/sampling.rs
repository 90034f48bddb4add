//! Choosing the next token: greedy, or sampled with temperature, top-k and top-p in Hugging Face's order.
//!
//! Each row draws from its own generator seeded by [`Sampling::seed`], so a row samples the same tokens
//! alone and in a batch, and the same seed gives the same reply on every run.
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy (the first maximum, as `torch.argmax`).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Seed of the row's generator.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::greedy()
    }
}

impl Sampling {
    /// Greedy decoding: the paper's runs.
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }

    /// Sampling at `temperature` with `seed`, no top-k or top-p cut.
    pub fn with_temperature(temperature: f32, seed: u64) -> Self {
        Sampling { temperature, seed, ..Sampling::greedy() }
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// One row's token chooser: its settings and its generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A chooser whose generator starts from `cfg.seed`.
    pub fn new(cfg: &Sampling) -> Self {
        Sampler { cfg: cfg.clone(), rng: ChaCha8Rng::seed_from_u64(cfg.seed) }
    }

    /// Chooses a token from one row of (already processed) logits; `-inf` entries are never chosen.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        // Candidates sorted by logit, highest first (stable: ties keep id order).
        let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize] > f32::NEG_INFINITY).collect();
        if order.is_empty() {
            return argmax(logits);
        }
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if self.cfg.top_k > 0 && order.len() > self.cfg.top_k {
            // Hugging Face keeps every token tied with the k-th.
            let kth = logits[order[self.cfg.top_k - 1] as usize];
            order.retain(|&i| logits[i as usize] >= kth);
        }
        let max = logits[order[0] as usize] / t;
        let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i as usize] / t - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p as f64 {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        // 53 random bits: a uniform draw in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (p, &id) in probs.iter().zip(&order) {
            acc += p;
            if u < acc {
                return id;
            }
        }
        *order.last().expect("at least one candidate")
    }
}

/// Index of the first maximum, as `torch.argmax`.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&Sampling::greedy());
        assert_eq!(s.pick(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn a_seed_gives_the_same_draws_and_another_seed_other_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&Sampling::with_temperature(1.0, seed));
            (0..40).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_head() {
        let logits = [5.0, 4.0, 0.0, -1.0, -2.0];
        let mut k = Sampler::new(&Sampling { top_k: 2, ..Sampling::with_temperature(1.0, 1) });
        let mut p = Sampler::new(&Sampling { top_p: 0.5, ..Sampling::with_temperature(1.0, 1) });
        for _ in 0..200 {
            assert!(k.pick(&logits) < 2);
            // Token 0 alone holds 72% of the mass.
            assert_eq!(p.pick(&logits), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens at logits ln 3 and 0: probabilities 0.75 and 0.25.
        let logits = [3f32.ln(), 0.0, f32::NEG_INFINITY];
        let mut s = Sampler::new(&Sampling::with_temperature(1.0, 3));
        let n = 4000;
        let zeros = (0..n).filter(|_| s.pick(&logits) == 0).count() as f64 / n as f64;
        assert!((zeros - 0.75).abs() < 0.03, "{zeros}");
    }
}
