//! Coefficient search: build candidate weight vectors (a grid for two models, as in the
//! paper's 51-point sweep; Dirichlet samples for more), merge each in memory and ask an
//! [`Evaluator`] for a score. Nothing is written. The model-based evaluator (accuracy
//! of the merged model on held-out data) lives with the Fisher computation.

use anyhow::{anyhow, bail, ensure, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Exp1};
use std::collections::HashMap;

use crate::checkpoint::decode_f32;
use crate::engine::Plan;

/// A merged model held in memory: name → (shape, f32 values as they would be written).
pub type MergedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Scores a candidate merge; higher is better. Implementations should score on data
/// that is not the reported test split.
pub trait Evaluator {
    fn evaluate(&mut self, weights: &[f64], merged: &MergedTensors) -> Result<f64>;
}

/// `start:stop:step` → the target's weight from `start` to `stop` (inclusive, either
/// direction); for two models each candidate is `[w, 1 − w]`.
pub fn parse_grid(text: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = text.split(':').collect();
    ensure!(
        parts.len() == 3,
        "weights grid {text:?}: expected start:stop:step (e.g. 0:1:0.02)"
    );
    let num = |s: &str| -> Result<f64> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| anyhow!("weights grid {text:?}: {s:?} is not a number"))
    };
    let (start, stop, step) = (num(parts[0])?, num(parts[1])?, num(parts[2])?);
    ensure!(step > 0.0, "weights grid {text:?}: step must be positive");
    for v in [start, stop] {
        ensure!(
            (0.0..=1.0).contains(&v),
            "weights grid {text:?}: {v} is outside [0, 1]"
        );
    }
    let n = ((stop - start).abs() / step + 1e-9).floor() as usize;
    let dir = if stop >= start { 1.0 } else { -1.0 };
    Ok((0..=n)
        .map(|i| round12(start + dir * step * i as f64))
        .collect())
}

/// Grid points without accumulated binary noise (0.98, not 0.9800000000000001).
fn round12(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// Candidate weight vectors for `models` inputs, the target at `target`.
pub fn candidates(
    grid: &[f64],
    models: usize,
    target: usize,
    samples: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    match models {
        2 => Ok(grid
            .iter()
            .map(|&w| {
                let mut v = vec![round12(1.0 - w); 2];
                v[target] = w;
                v
            })
            .collect()),
        m if m > 2 => {
            ensure!(
                samples > 0,
                "for {m} models pass a number of Dirichlet samples"
            );
            // Dirichlet(1, …, 1): normalised independent Exp(1) draws.
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            Ok((0..samples)
                .map(|_| {
                    let e: Vec<f64> = (0..m).map(|_| Exp1.sample(&mut rng)).collect();
                    let total: f64 = e.iter().sum();
                    e.iter().map(|x| x / total).collect()
                })
                .collect())
        }
        _ => bail!("a coefficient search needs at least two models"),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    pub weights: Vec<f64>,
    pub score: f64,
}

/// Merge every candidate in memory and score it. Returns all scores in candidate order.
pub fn search(
    plan: &Plan,
    candidates: &[Vec<f64>],
    evaluator: &mut dyn Evaluator,
) -> Result<Vec<Scored>> {
    let bar = fisherkit_common::progress::bar(candidates.len() as u64, "candidates");
    let hidden = indicatif::ProgressBar::hidden();
    let mut out = Vec::with_capacity(candidates.len());
    for w in candidates {
        let mut merged = MergedTensors::new();
        plan.execute(
            Some(w),
            &mut |spec, bytes| {
                let mut values = vec![0f32; spec.shape.iter().product()];
                decode_f32(spec.dtype, bytes, &mut values);
                merged.insert(spec.name.clone(), (spec.shape.clone(), values));
                Ok(())
            },
            &hidden,
        )?;
        let score = evaluator.evaluate(w, &merged)?;
        out.push(Scored {
            weights: w.clone(),
            score,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The best candidate (first of equal scores).
pub fn best(scored: &[Scored]) -> Option<&Scored> {
    scored.iter().fold(None, |b: Option<&Scored>, s| match b {
        Some(b) if b.score >= s.score => Some(b),
        _ => Some(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_grid_has_51_points() {
        let g = parse_grid("1:0:0.02").unwrap();
        assert_eq!(g.len(), 51);
        assert_eq!((g[0], g[1], g[50]), (1.0, 0.98, 0.0));
        assert_eq!(
            parse_grid("0:1:0.25").unwrap(),
            vec![0.0, 0.25, 0.5, 0.75, 1.0]
        );
        assert!(
            parse_grid("0:1").is_err()
                && parse_grid("0:1:0").is_err()
                && parse_grid("0:2:0.5").is_err()
        );
        let c = candidates(&[0.3], 2, 1, 0, 0).unwrap();
        assert_eq!(c, vec![vec![0.7, 0.3]]);
        let d = candidates(&[], 3, 0, 4, 9).unwrap();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|w| (w.iter().sum::<f64>() - 1.0).abs() < 1e-9));
        assert_eq!(d, candidates(&[], 3, 0, 4, 9).unwrap(), "seeded");
    }
}
