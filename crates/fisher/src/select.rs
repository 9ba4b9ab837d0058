//! Which classes of an output distribution a Fisher is taken over.

use crate::Pick;
use anyhow::{ensure, Result};
use rand::Rng;

/// Classes kept for an exact expectation. Kept classes are NOT renormalised: the
/// Fisher is the truncated sum Σ_{kept c} p_c g_c g_cᵀ, as in the reference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassSelection {
    /// Keep at most this many most probable classes per output position.
    pub top_k_per_position: Option<usize>,
    /// Skip classes whose probability is below this.
    pub min_prob: f32,
    /// Keep at most this many classes per example overall (most probable first).
    pub max_classes: Option<usize>,
}

impl ClassSelection {
    /// Every class at every position.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.top_k_per_position != Some(0),
            "the number of classes per position must be at least 1"
        );
        ensure!(
            self.max_classes != Some(0),
            "the maximum number of classes must be at least 1"
        );
        ensure!(
            (0.0..1.0).contains(&self.min_prob),
            "the minimum class probability must lie in [0, 1), got {}",
            self.min_prob
        );
        Ok(())
    }

    /// The kept classes with their probabilities, ordered by position, then by
    /// descending probability (ties: lower class index first).
    pub fn select(&self, log_probs: &[Vec<f32>]) -> Vec<(Pick, f64)> {
        let mut kept: Vec<(Pick, f64)> = Vec::new();
        for (position, row) in log_probs.iter().enumerate() {
            let mut classes: Vec<(usize, f64)> = row
                .iter()
                .enumerate()
                .map(|(c, &lp)| (c, f64::from(lp).exp()))
                .filter(|&(_, p)| p >= f64::from(self.min_prob))
                .collect();
            classes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if let Some(k) = self.top_k_per_position {
                classes.truncate(k);
            }
            kept.extend(classes.into_iter().map(|(c, p)| ((position, c), p)));
        }
        if let Some(max) = self.max_classes {
            if kept.len() > max {
                let mut order: Vec<usize> = (0..kept.len()).collect();
                order.sort_by(|&a, &b| kept[b].1.total_cmp(&kept[a].1).then(a.cmp(&b)));
                order.truncate(max);
                order.sort_unstable();
                kept = order.into_iter().map(|i| kept[i]).collect();
            }
        }
        kept
    }
}

/// One class per position drawn from that position's full distribution.
pub fn sample_classes(log_probs: &[Vec<f32>], rng: &mut impl Rng) -> Vec<Pick> {
    log_probs
        .iter()
        .enumerate()
        .map(|(position, row)| {
            let u: f64 = rng.random();
            let total: f64 = row.iter().map(|&lp| f64::from(lp).exp()).sum();
            let mut acc = 0.0;
            let mut chosen = row.len() - 1;
            for (c, &lp) in row.iter().enumerate() {
                acc += f64::from(lp).exp() / total;
                if u < acc {
                    chosen = c;
                    break;
                }
            }
            (position, chosen)
        })
        .collect()
}

/// A reproducible per-example random seed: the same example gets the same draw
/// whatever the batch size or processing order (splitmix64 of seed and index).
pub fn example_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn logs(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn selection_keeps_most_probable_without_renormalising() {
        let lp = vec![logs(&[0.1, 0.6, 0.3]), logs(&[0.5, 0.05, 0.45])];
        let sel = ClassSelection {
            top_k_per_position: Some(2),
            ..Default::default()
        };
        let kept: Vec<Pick> = sel.select(&lp).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, vec![(0, 1), (0, 2), (1, 0), (1, 2)]);
        let sel = ClassSelection {
            min_prob: 0.2,
            max_classes: Some(3),
            ..Default::default()
        };
        let kept = sel.select(&lp);
        let picks: Vec<Pick> = kept.iter().map(|&(k, _)| k).collect();
        assert_eq!(picks, vec![(0, 1), (1, 0), (1, 2)]);
        assert!(
            (kept[0].1 - 0.6).abs() < 1e-6,
            "probability not renormalised"
        );
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let lp = vec![logs(&[0.2, 0.8])];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ones = (0..20_000)
            .filter(|_| sample_classes(&lp, &mut rng)[0].1 == 1)
            .count();
        let freq = ones as f64 / 20_000.0;
        assert!((freq - 0.8).abs() < 0.015, "{freq}");
    }
}
