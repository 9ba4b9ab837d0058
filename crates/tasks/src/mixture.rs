//! Examples-proportional mixing (T5 §3.5.2): task `i` is sampled with probability
//! proportional to `min(n_i, cap)^(1/T)`, where `n_i` is its example count, `cap` an
//! optional artificial data-set size limit and `T` the temperature (1 = proportional,
//! larger flattens towards equal mixing).

use fisherkit_common::{ensure, Result};
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Mixing rates for data sets of the given sizes.
pub fn mixing_rates(counts: &[usize], cap: Option<usize>, temperature: f64) -> Result<Vec<f64>> {
    ensure!(!counts.is_empty(), "a mixture needs at least one data set");
    ensure!(
        temperature.is_finite() && temperature > 0.0,
        "mixture temperature must be positive, got {temperature}"
    );
    ensure!(cap != Some(0), "mixture cap must be positive");
    let weights: Vec<f64> = counts
        .iter()
        .map(|&n| (cap.map_or(n, |c| n.min(c)) as f64).powf(1.0 / temperature))
        .collect();
    let total: f64 = weights.iter().sum();
    ensure!(total > 0.0, "every data set of the mixture is empty");
    Ok(weights.iter().map(|w| w / total).collect())
}

/// Draw `size` examples from `sources` at their mixing rates. Each source is walked in a
/// seeded random order and reshuffled when exhausted, so small sources repeat only
/// after all their examples have been used.
pub fn sample_mixture<T: Clone>(
    sources: &[Vec<T>],
    size: usize,
    cap: Option<usize>,
    temperature: f64,
    seed: u64,
) -> Result<Vec<T>> {
    let counts: Vec<usize> = sources.iter().map(Vec::len).collect();
    let rates = mixing_rates(&counts, cap, temperature)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pick = WeightedIndex::new(&rates)?;
    let mut orders: Vec<Vec<usize>> = counts.iter().map(|&n| (0..n).collect()).collect();
    for order in &mut orders {
        order.shuffle(&mut rng);
    }
    let mut cursors = vec![0usize; sources.len()];
    let mut out = Vec::with_capacity(size);
    for _ in 0..size {
        let s = pick.sample(&mut rng);
        if cursors[s] == orders[s].len() {
            orders[s].shuffle(&mut rng);
            cursors[s] = 0;
        }
        out.push(sources[s][orders[s][cursors[s]]].clone());
        cursors[s] += 1;
    }
    Ok(out)
}

/// The natural size of a mixture: every source contributes up to `cap` examples.
pub fn default_size<T>(sources: &[Vec<T>], cap: Option<usize>) -> usize {
    sources
        .iter()
        .map(|s| cap.map_or(s.len(), |c| s.len().min(c)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Example;

    #[test]
    fn rates_follow_the_formula() {
        let r = mixing_rates(&[100, 300], None, 1.0).unwrap();
        assert!((r[0] - 0.25).abs() < 1e-12 && (r[1] - 0.75).abs() < 1e-12);
        // cap 100 → equal; temperature 2 → sqrt(100):sqrt(400) = 1:2.
        assert_eq!(
            mixing_rates(&[100, 300], Some(100), 1.0).unwrap(),
            vec![0.5, 0.5]
        );
        let r = mixing_rates(&[100, 400], None, 2.0).unwrap();
        assert!((r[0] - 1.0 / 3.0).abs() < 1e-12);
        assert!(mixing_rates(&[1], None, 0.0).is_err());
        assert!(mixing_rates(&[0, 0], None, 1.0).is_err());
    }

    #[test]
    fn sampling_is_seeded_and_proportional() {
        let mk = |tag: &str, n: usize| -> Vec<Example> {
            (0..n)
                .map(|i| Example {
                    input: format!("{tag}{i}"),
                    target: tag.into(),
                })
                .collect()
        };
        let sources = vec![mk("a", 50), mk("b", 150)];
        let m1 = sample_mixture(&sources, 4000, None, 1.0, 7).unwrap();
        let m2 = sample_mixture(&sources, 4000, None, 1.0, 7).unwrap();
        assert_eq!(m1, m2);
        let frac_a = m1.iter().filter(|e| e.target == "a").count() as f64 / 4000.0;
        assert!((frac_a - 0.25).abs() < 0.03, "{frac_a}");
        // Without replacement until a source is exhausted: the first 50 "a" are distinct.
        let first_a: std::collections::HashSet<_> = m1
            .iter()
            .filter(|e| e.target == "a")
            .take(50)
            .map(|e| e.input.clone())
            .collect();
        assert_eq!(first_a.len(), 50);
        assert_eq!(default_size(&sources, Some(100)), 150);
    }
}
