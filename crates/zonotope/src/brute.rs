//! The exact global optimum on tiny problems: solve the QP for every tuple of vertices.
//!
//! Units with the same sign are interchangeable, so a tuple is a choice of how many
//! units are positive (m⁺) and a multiset of m⁺ vertices for them and of m − m⁺ for the
//! negative ones: Σ_{m⁺} C(V+m⁺−1, m⁺)·C(V+m⁻−1, m⁻) QPs for V vertices.

use crate::data::{binomial, Dataset};
use crate::network::Unit;
use crate::qp::{QpSolver, Solution};
use crate::vertices;
use anyhow::{bail, Result};
use serde::Serialize;

/// Default refusal threshold on the number of QPs.
pub const DEFAULT_LIMIT: u64 = 200_000;

#[derive(Debug, Clone, Serialize)]
pub struct Optimum {
    pub vertices: usize,
    pub tuples: u64,
    pub loss: f64,
    pub units: Vec<Unit>,
    pub solution: Solution,
    /// Tuples whose QP failed (status or constraint check); reported, not ignored.
    pub failed: u64,
}

/// Multisets of size k from v items.
fn multichoose(v: u64, k: u64) -> u64 {
    if k == 0 {
        return 1;
    }
    binomial(v + k - 1, k)
}

/// Number of QPs brute force solves for V vertices and m units.
pub fn tuple_count(vertices: usize, m: usize) -> u64 {
    let v = vertices as u64;
    (0..=m as u64)
        .map(|pos| multichoose(v, pos).saturating_mul(multichoose(v, m as u64 - pos)))
        .fold(0, u64::saturating_add)
}

/// Brute-force the global optimum with m units; refuses above `limit` tuples.
pub fn solve(
    data: &Dataset,
    m: usize,
    limit: u64,
    progress: &dyn Fn(u64) -> indicatif::ProgressBar,
) -> Result<Optimum> {
    anyhow::ensure!(m >= 1, "need at least one unit");
    let enumeration = vertices::enumerate(data, None, &indicatif::ProgressBar::hidden())?;
    let verts = enumeration.vertices;
    let tuples = tuple_count(verts.len(), m);
    if tuples > limit {
        bail!(
            "brute force would solve {tuples} QPs ({} vertices, {m} units: every sign split \
             and multiset of vertices), above the limit of {limit}; use fewer units or \
             rows, or raise --limit",
            verts.len()
        );
    }
    let bar = progress(tuples);
    let mut qp = QpSolver::default();
    let mut oracle = vertices::Oracle::new(data);
    let mut best: Option<(Vec<Unit>, Solution)> = None;
    let mut failed = 0;
    for positive in 0..=m {
        let signs: Vec<i8> = (0..m).map(|j| if j < positive { 1 } else { -1 }).collect();
        // Non-decreasing vertex indices within each sign block enumerate multisets.
        let mut idx = vec![0usize; m];
        loop {
            let units: Vec<Unit> = (0..m)
                .map(|j| Unit {
                    sign: signs[j],
                    pattern: verts[idx[j]].clone(),
                })
                .collect();
            match qp.solve_reduced(data, &units, &mut oracle) {
                Ok(sol) => {
                    if best.as_ref().is_none_or(|b| sol.loss < b.1.loss) {
                        best = Some((units, sol));
                    }
                }
                Err(_) => failed += 1,
            }
            bar.inc(1);
            if !next_multiset(&mut idx, positive, verts.len()) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let Some((units, solution)) = best else {
        bail!("every one of the {tuples} QPs failed; no optimum to report");
    };
    Ok(Optimum {
        vertices: verts.len(),
        tuples,
        loss: solution.loss,
        units,
        solution,
        failed,
    })
}

/// Advance `idx` = [positive block | negative block], each non-decreasing, to the next
/// pair of multisets; false when exhausted.
fn next_multiset(idx: &mut [usize], split: usize, v: usize) -> bool {
    // The negative block is the fast-moving digit of the odometer.
    for (lo, hi) in [(split, idx.len()), (0, split)] {
        // Increment the last position of this block that can grow; later ones follow it.
        if let Some(p) = (lo..hi).rev().find(|&p| idx[p] + 1 < v) {
            idx[p] += 1;
            let value = idx[p];
            idx[p + 1..hi].fill(value);
            return true;
        }
        // This block wrapped: restart it and carry into the next block.
        idx[lo..hi].fill(0);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiset_enumeration_matches_count() {
        for (v, m) in [(3usize, 1usize), (4, 2), (5, 3)] {
            let mut total = 0u64;
            for split in 0..=m {
                let mut idx = vec![0usize; m];
                let mut seen = std::collections::HashSet::new();
                loop {
                    assert!(idx[..split].windows(2).all(|w| w[0] <= w[1]));
                    assert!(idx[split..].windows(2).all(|w| w[0] <= w[1]));
                    assert!(seen.insert(idx.clone()));
                    total += 1;
                    if !next_multiset(&mut idx, split, v) {
                        break;
                    }
                }
            }
            assert_eq!(total, tuple_count(v, m), "v={v} m={m}");
        }
        // 10 vertices, 2 units: 55 + 100 + 55.
        assert_eq!(tuple_count(10, 2), 210);
    }

    #[test]
    fn refuses_large_problems_with_the_count() {
        let data = crate::data::SyntheticSpec {
            n: 10,
            d: 2,
            teacher_units: 1,
            noise: 0.0,
            seed: 0,
        }
        .generate()
        .unwrap();
        let hidden = |_| indicatif::ProgressBar::hidden();
        let err = solve(&data, 3, 1000, &hidden).unwrap_err().to_string();
        // 92 vertices, 3 units.
        let count = tuple_count(92, 3);
        assert!(err.contains(&count.to_string()), "{err}");
    }
}
