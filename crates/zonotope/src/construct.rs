//! The 2× construction: nested patterns along a random direction, each given a ± unit
//! pair, whose QP interpolates generic targets (loss 0 = the global optimum).
//!
//! Project onto a random u (distinct projections), sort ascending, cut into k consecutive
//! groups; pattern g = {i : x_iᵀu > t_g} = groups g..k. A point in group g is active in
//! patterns 1..g, so the design is block-triangular and the pair differences a_g can be
//! found group by group (back substitution). Each difference is realised by the pair
//! w⁺ = a_g + λ h_g, w⁻ = λ h_g, with h_g the threshold's halfspace and λ large enough
//! that both keep the pattern.

use crate::data::Dataset;
use crate::linalg::{dot, min_norm_solve};
use crate::network::{Network, Unit};
use crate::qp::{max_violation, QpSolver};
use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Back substitution when every group has ≤ d+1 points, else the QP.
    Auto,
    BackSubstitution,
    Qp,
}

#[derive(Debug, Clone, Serialize)]
pub struct Construction {
    /// Number of nested patterns k (units = 2k).
    pub patterns: usize,
    pub units: usize,
    pub parameters: usize,
    pub method: Method,
    pub loss: f64,
    pub direction: Vec<f64>,
    pub group_sizes: Vec<usize>,
    pub max_violation: f64,
    pub unit_patterns: Vec<Unit>,
    pub network: Network,
}

/// Default number of patterns: ⌈n/(d+1)⌉.
pub fn default_patterns(data: &Dataset) -> usize {
    data.n.div_ceil(data.dim())
}

/// Build the construction with `k` nested patterns (groups sizes differ by at most one).
pub fn construct(data: &Dataset, k: usize, method: Method, seed: u64) -> Result<Construction> {
    ensure!(k >= 1 && k <= data.n, "patterns must be in 1..=n (got {k})");
    let (u, order, proj) = direction_with_distinct_projections(data, seed)?;
    let base = data.n / k;
    let extra = data.n % k;
    let sizes: Vec<usize> = (0..k).map(|g| base + usize::from(g < extra)).collect();
    let mut groups: Vec<Vec<usize>> = Vec::with_capacity(k);
    let mut at = 0;
    for &s in &sizes {
        groups.push(order[at..at + s].to_vec());
        at += s;
    }
    // Halfspace normals h_g in homogeneous coordinates: h_1 = bias (all active),
    // h_g = (u, −t_g) with t_g between the groups g−1 and g.
    let halfspaces: Vec<Vec<f64>> = (0..k)
        .map(|g| {
            if g == 0 {
                let mut h = vec![0.0; data.dim()];
                h[data.d] = 1.0;
                h
            } else {
                let t =
                    0.5 * (proj[*groups[g - 1].last().expect("non-empty")] + proj[groups[g][0]]);
                u.iter().copied().chain([-t]).collect()
            }
        })
        .collect();
    let mut first_group = vec![0usize; data.n];
    for (g, members) in groups.iter().enumerate() {
        for &i in members {
            first_group[i] = g;
        }
    }
    let units: Vec<Unit> = (0..k)
        .flat_map(|g| {
            let pattern: Vec<bool> = (0..data.n).map(|i| first_group[i] >= g).collect();
            [1i8, -1].map(|sign| Unit {
                sign,
                pattern: pattern.clone(),
            })
        })
        .collect();
    let small_groups = sizes.iter().all(|&s| s <= data.dim());
    let method = match method {
        Method::Auto if small_groups => Method::BackSubstitution,
        Method::Auto => Method::Qp,
        m => m,
    };
    let network = match method {
        Method::BackSubstitution => {
            ensure!(
                small_groups,
                "back substitution needs groups of at most d+1 = {} points; with {k} \
                 patterns groups have up to {} (use --method qp)",
                data.dim(),
                sizes[0]
            );
            back_substitute(data, &groups, &halfspaces)?
        }
        _ => QpSolver::default().solve(data, &units)?.network,
    };
    let max_violation = max_violation(data, &units, &network);
    ensure!(
        max_violation <= crate::qp::VIOLATION_TOL,
        "construction check failed: weights violate their patterns by {max_violation:.2e}"
    );
    Ok(Construction {
        patterns: k,
        units: 2 * k,
        parameters: 2 * k * data.dim(),
        method,
        loss: network.loss(data),
        direction: u,
        group_sizes: sizes,
        max_violation,
        unit_patterns: units,
        network,
    })
}

/// A random unit direction whose projections of the data are pairwise distinct (retries
/// a few directions; duplicated points can never be separated).
fn direction_with_distinct_projections(
    data: &Dataset,
    seed: u64,
) -> Result<(Vec<f64>, Vec<usize>, Vec<f64>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..20 {
        let mut u: Vec<f64> = (0..data.d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let norm = dot(&u, &u).sqrt();
        u.iter_mut().for_each(|v| *v /= norm);
        let proj: Vec<f64> = (0..data.n)
            .map(|i| dot(&u, &data.x[i * data.d..(i + 1) * data.d]))
            .collect();
        let mut order: Vec<usize> = (0..data.n).collect();
        order.sort_by(|&a, &b| proj[a].total_cmp(&proj[b]));
        let spread = proj[order[data.n - 1]] - proj[order[0]];
        let distinct = order
            .windows(2)
            .all(|w| proj[w[1]] - proj[w[0]] > 1e-12 * spread.max(1e-300));
        if distinct {
            return Ok((u, order, proj));
        }
    }
    anyhow::bail!(
        "no direction separates all points: the data has duplicated inputs, which the \
         construction cannot give different outputs (deduplicate, or average their targets)"
    )
}

/// Solve group by group for the pair differences, then realise each pair.
fn back_substitute(
    data: &Dataset,
    groups: &[Vec<usize>],
    halfspaces: &[Vec<f64>],
) -> Result<Network> {
    let dim = data.dim();
    let mut diffs: Vec<Vec<f64>> = Vec::with_capacity(groups.len());
    for (g, members) in groups.iter().enumerate() {
        let rows: Vec<&[f64]> = members.iter().map(|&i| data.row(i)).collect();
        let rhs: Vec<f64> = members
            .iter()
            .map(|&i| data.y[i] - diffs.iter().map(|a| dot(a, data.row(i))).sum::<f64>())
            .collect();
        let a = min_norm_solve(&rows, &rhs).map_err(|e| {
            anyhow::anyhow!(
                "group {} (rows {:?}): {e}",
                g + 1,
                members.iter().map(|i| i + 1).collect::<Vec<_>>()
            )
        })?;
        diffs.push(a);
    }
    let mut weights = Vec::with_capacity(2 * groups.len() * dim);
    let mut signs = Vec::with_capacity(2 * groups.len());
    for (a, h) in diffs.iter().zip(halfspaces) {
        // λ ≥ 2·max |aᵀx̃| / |hᵀx̃| keeps a + λh on the same side of every point as h.
        let lambda = 2.0
            * (0..data.n)
                .map(|i| dot(a, data.row(i)).abs() / dot(h, data.row(i)).abs())
                .fold(1.0f64, f64::max);
        weights.extend(a.iter().zip(h).map(|(a, h)| a + lambda * h));
        weights.extend(h.iter().map(|h| lambda * h));
        signs.extend([1i8, -1]);
    }
    Ok(Network::from_weights(data.d, weights, signs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticSpec;

    fn random_targets(n: usize, d: usize, seed: u64) -> Dataset {
        let mut data = SyntheticSpec {
            n,
            d,
            teacher_units: 1,
            noise: 0.0,
            seed,
        }
        .generate()
        .unwrap();
        let mut rng = StdRng::seed_from_u64(seed + 100);
        for y in &mut data.y {
            *y = StandardNormal.sample(&mut rng);
        }
        data
    }

    #[test]
    fn two_x_construction_interpolates_and_one_pattern_fewer_does_not() {
        for (n, d, seed) in [(60, 2, 1), (31, 1, 2), (24, 3, 3)] {
            let data = random_targets(n, d, seed);
            let k = default_patterns(&data);
            let full = construct(&data, k, Method::Auto, seed).unwrap();
            assert_eq!(full.method, Method::BackSubstitution);
            assert!(full.loss <= 1e-8, "n={n} d={d}: {}", full.loss);
            assert_eq!(full.units, 2 * k);
            // The network's patterns are exactly the designed nested patterns.
            assert_eq!(full.network.units_at(&data), full.unit_patterns);
            // Same patterns through the QP solver: also (near) zero.
            let qp = construct(&data, k, Method::Qp, seed).unwrap();
            assert!(qp.loss <= 1e-6, "qp {}", qp.loss);
            let fewer = construct(&data, k - 1, Method::Auto, seed).unwrap();
            assert_eq!(fewer.method, Method::Qp);
            assert!(fewer.loss > 1e-4, "n={n} d={d}: k−1 gives {}", fewer.loss);
        }
    }

    #[test]
    fn duplicated_points_are_refused_with_reason() {
        let data = crate::data::parse_csv("0,1\n0,2\n1,3\n", "t").unwrap();
        let err = construct(&data, 2, Method::Auto, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicated"), "{err}");
    }
}
