//! Summary statistics and the Wilcoxon signed-rank test for paired final losses.
//!
//! Test: differences d_i = a_i − b_i; pairs with |d_i| ≤ tie tolerance are dropped
//! (Wilcoxon's convention); the rest are ranked by |d_i| with mid-ranks for ties, and
//! W⁺ = sum of ranks of positive differences. Two-sided p-value: exact (enumerating the
//! null distribution of W⁺ by dynamic programming) when there are ≤ 30 non-zero pairs and
//! no tied magnitudes; otherwise the normal approximation with tie-corrected variance and
//! continuity correction.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summary(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Summary {
        mean: v.iter().sum::<f64>() / n as f64,
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Paired comparison of method A against method B (lower is better).
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    /// Pairs where A is lower / equal within tolerance / higher.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Sum of ranks of the pairs where A is higher (A − B > 0).
    pub w_plus: f64,
    pub p_value: f64,
    /// "exact" or "normal approximation".
    pub method: String,
}

/// Whether two losses tie: relative difference ≤ 1e-6 or both ≤ 1e-10.
pub fn tie(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) || a.max(b) <= 1e-10
}

pub fn wilcoxon(a: &[f64], b: &[f64]) -> Paired {
    assert_eq!(a.len(), b.len(), "paired samples");
    let mut diffs = Vec::new();
    let (mut wins, mut ties, mut losses) = (0, 0, 0);
    for (&x, &y) in a.iter().zip(b) {
        if tie(x, y) {
            ties += 1;
        } else {
            if x < y {
                wins += 1;
            } else {
                losses += 1;
            }
            diffs.push(x - y);
        }
    }
    let n = diffs.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| diffs[i].abs().total_cmp(&diffs[j].abs()));
    let mut ranks = vec![0.0; n];
    let mut tie_term = 0.0;
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && diffs[order[end]].abs() == diffs[order[start]].abs() {
            end += 1;
        }
        let mid = (start + end + 1) as f64 / 2.0; // mean of ranks start+1..=end
        for &i in &order[start..end] {
            ranks[i] = mid;
        }
        let t = (end - start) as f64;
        tie_term += t * t * t - t;
        start = end;
    }
    let w_plus: f64 = (0..n).filter(|&i| diffs[i] > 0.0).map(|i| ranks[i]).sum();
    let (p_value, method) = if n == 0 {
        (1.0, "no non-tied pairs")
    } else if n <= 30 && tie_term == 0.0 {
        (exact_two_sided(n, w_plus.round() as usize), "exact")
    } else {
        let nf = n as f64;
        let mean = nf * (nf + 1.0) / 4.0;
        let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_term / 48.0;
        let z = ((w_plus - mean).abs() - 0.5).max(0.0) / var.sqrt();
        (
            (erfc(z / std::f64::consts::SQRT_2)).min(1.0),
            "normal approximation",
        )
    };
    Paired {
        wins,
        ties,
        losses,
        w_plus,
        p_value,
        method: method.into(),
    }
}

/// P(W⁺ ≤ w) and P(W⁺ ≥ w) under the null, from the count of subsets of {1..n} per sum.
fn exact_two_sided(n: usize, w: usize) -> f64 {
    let max = n * (n + 1) / 2;
    let mut counts = vec![0f64; max + 1];
    counts[0] = 1.0;
    for r in 1..=n {
        for s in (r..=max).rev() {
            counts[s] += counts[s - r];
        }
    }
    let total: f64 = counts.iter().sum();
    let lower: f64 = counts[..=w].iter().sum::<f64>() / total;
    let upper: f64 = counts[w..].iter().sum::<f64>() / total;
    (2.0 * lower.min(upper)).min(1.0)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_p_values_match_hand_counts() {
        // All 5 differences negative: W⁺ = 0, P = 2·(1/32).
        let p = wilcoxon(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!((p.wins, p.ties, p.losses), (5, 0, 0));
        assert_eq!(p.method, "exact");
        assert!((p.p_value - 0.0625).abs() < 1e-12);
        // n = 3, W⁺ = 1 (rank 1 positive): subsets of {1,2,3} with sum ≤ 1: {∅,{1}} → 2/8.
        let p = wilcoxon(&[1.1, 0.0, 0.0], &[1.0, 2.0, 3.0]);
        assert!((p.w_plus - 1.0).abs() < 1e-12);
        assert!((p.p_value - 0.5).abs() < 1e-12);
        // Ties are dropped and counted.
        let p = wilcoxon(&[1.0, 1.0], &[1.0, 1.0 + 1e-9]);
        assert_eq!(p.ties, 2);
        assert_eq!(p.p_value, 1.0);
    }

    #[test]
    fn normal_approximation_and_erfc() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 2e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 2e-7);
        // 40 pairs all favouring A: z ≈ 5.5, p tiny; balanced pairs give p near 1.
        let a: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..40).map(|i| i as f64 + 1.0 + i as f64 * 0.01).collect();
        let p = wilcoxon(&a, &b);
        assert_eq!(p.method, "normal approximation");
        assert!(p.p_value < 1e-6);
        let b2: Vec<f64> = (0..40)
            .map(|i| i as f64 + if i % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + i as f64 * 0.01))
            .collect();
        assert!(wilcoxon(&a, &b2).p_value > 0.5);
        let s = summary(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.mean, s.min, s.max), (2.5, 4.0, 1.0, 10.0));
    }
}
