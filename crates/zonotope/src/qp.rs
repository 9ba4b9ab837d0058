//! The convex QP for fixed activation patterns and output signs:
//!
//!   min_w (1/n) ‖Σ_j s_j D_j X̃ w_j − y‖²  s.t. (2D_j − I) X̃ w_j ≥ 0 ∀j,
//!
//! solved with clarabel. Every feasible point is a real network with exactly that loss,
//! so each answer is checked: solver status, constraint violation, and the loss of the
//! returned weights recomputed by a real ReLU forward pass (the number we report).

use crate::data::Dataset;
use crate::linalg::dot;
use crate::network::{Network, Unit};
use crate::solver::{upper_csc, Session};
use crate::vertices::Oracle;
use anyhow::{bail, ensure, Result};
use clarabel::algebra::CscMatrix;
use clarabel::solver::SolverStatus;
use serde::Serialize;

/// Largest tolerated constraint violation `−(2p_ji − 1) x̃_iᵀw_j`, relative to the target
/// scale max|y|: a violation moves that pre-activation across zero by this much, which is
/// what it can change in the network's output.
pub const VIOLATION_TOL: f64 = 1e-6;

/// A checked QP answer.
#[derive(Debug, Clone, Serialize)]
pub struct Solution {
    /// Loss of the returned network by a ReLU forward pass.
    pub loss: f64,
    /// The QP objective as the solver reports it (plus the constant term).
    pub objective: f64,
    pub status: String,
    pub iterations: u32,
    /// Largest constraint violation of the returned weights, relative to max|y|.
    pub max_violation: f64,
    pub network: Network,
}

/// Solves pattern QPs, reusing one clarabel solver across calls of the same shape.
pub struct QpSolver {
    session: Session,
    /// Facet-reduced problems change shape from vertex to vertex, and reusing a solver
    /// whose equilibration was computed for other facets stalled in testing; they always
    /// get a fresh setup.
    reduced: Session,
    fallbacks: u64,
}

impl Default for QpSolver {
    fn default() -> Self {
        Self::new(true)
    }
}

impl QpSolver {
    /// `reuse`: keep the solver set up between same-shaped problems (faster; same answers).
    pub fn new(reuse: bool) -> Self {
        Self {
            session: Session::new(reuse),
            reduced: Session::new(false),
            fallbacks: 0,
        }
    }

    pub fn solves(&self) -> u64 {
        self.session.solves + self.reduced.solves
    }

    pub fn setups(&self) -> u64 {
        self.session.setups + self.reduced.setups
    }

    /// Solve the QP for `units` (signs and patterns) on `data`, with all m·n constraints.
    pub fn solve(&mut self, data: &Dataset, units: &[Unit]) -> Result<Solution> {
        self.solve_rows(data, units, None)
    }

    /// Solve with only the facet constraints of each unit's cone, found by `oracle`
    /// (cheap for d ≤ 2, where they come from a convex hull; otherwise all constraints
    /// are kept). The cone is the intersection of its facets, so the QP is the same; the
    /// returned weights are still checked against every one of the m·n constraints.
    pub fn solve_reduced(
        &mut self,
        data: &Dataset,
        units: &[Unit],
        oracle: &mut Oracle,
    ) -> Result<Solution> {
        if !oracle.has_cheap_facets() {
            return self.solve(data, units);
        }
        let rows = units
            .iter()
            .map(|u| oracle.feasible_flips(&u.pattern))
            .collect::<Result<Vec<_>>>()?;
        // A failed reduced solve (clarabel occasionally stalls on the smaller problem) is
        // retried with every constraint rather than reported as a failure.
        self.solve_rows(data, units, Some(&rows)).or_else(|_| {
            self.fallbacks += 1;
            self.solve(data, units)
        })
    }

    /// Reduced solves that failed and were redone with all constraints.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// `rows[j]`: the examples whose constraints are imposed on unit j (None: all).
    fn solve_rows(
        &mut self,
        data: &Dataset,
        units: &[Unit],
        rows: Option<&[Vec<usize>]>,
    ) -> Result<Solution> {
        ensure!(!units.is_empty(), "the QP needs at least one unit");
        for (j, u) in units.iter().enumerate() {
            ensure!(
                u.pattern.len() == data.n,
                "unit {}: pattern has {} bits but the data has {} rows",
                j + 1,
                u.pattern.len(),
                data.n
            );
            ensure!(
                u.sign == 1 || u.sign == -1,
                "unit {}: sign must be +1 or −1",
                j + 1
            );
        }
        let k = data.dim();
        let m = units.len();
        let vars = m * k;
        let n = data.n as f64;
        // Gram blocks: (j,a),(l,b) entry = s_j s_l Σ_{i ∈ p_j ∩ p_l} x̃_ia x̃_ib.
        let mut gram = vec![0.0; vars * vars];
        let mut linear = vec![0.0; vars];
        for i in 0..data.n {
            let x = data.row(i);
            for (j, uj) in units.iter().enumerate().filter(|(_, u)| u.pattern[i]) {
                let sj = f64::from(uj.sign);
                for a in 0..k {
                    linear[j * k + a] += sj * x[a] * data.y[i];
                }
                for (l, ul) in units
                    .iter()
                    .enumerate()
                    .skip(j)
                    .filter(|(_, u)| u.pattern[i])
                {
                    let s = sj * f64::from(ul.sign);
                    for a in 0..k {
                        for b in 0..k {
                            gram[(j * k + a) * vars + l * k + b] += s * x[a] * x[b];
                        }
                    }
                }
            }
        }
        // gram holds blocks j ≤ l; the upper triangle of P = (2/n)·Gram needs, for
        // row r ≤ column c, the (r, c) entry, which lives in block (unit(r), unit(c)).
        let p = upper_csc(vars, |r, c| {
            let (jr, jc) = (r / k, c / k);
            let v = if jr <= jc {
                gram[r * vars + c]
            } else {
                gram[c * vars + r]
            };
            2.0 * v / n
        });
        let q: Vec<f64> = linear.iter().map(|v| -2.0 * v / n).collect();
        let reduced = rows.is_some();
        let all: Vec<usize> = (0..data.n).collect();
        let rows: Vec<&[usize]> = match rows {
            Some(r) => r.iter().map(Vec::as_slice).collect(),
            None => vec![all.as_slice(); m],
        };
        let a = constraint_matrix(data, units, &rows);
        let b = vec![0.0; a.m];
        let constant = data.y.iter().map(|v| v * v).sum::<f64>() / n;
        let session = if reduced {
            &mut self.reduced
        } else {
            &mut self.session
        };
        let out = session.solve(&p, &q, &a, &b)?;
        if !matches!(
            out.status,
            SolverStatus::Solved | SolverStatus::AlmostSolved
        ) {
            bail!(
                "QP solver (clarabel) stopped with status {:?} after {} iterations; no \
                 answer is reported for these patterns",
                out.status,
                out.iterations
            );
        }
        let network = Network::from_weights(data.d, out.x, units.iter().map(|u| u.sign).collect());
        let max_violation = max_violation(data, units, &network);
        if max_violation > VIOLATION_TOL {
            bail!(
                "QP solver (clarabel) returned status {:?} but its weights violate the \
                 pattern constraints by {max_violation:.2e} (relative to max|y|); refusing the answer",
                out.status
            );
        }
        Ok(Solution {
            loss: network.loss(data),
            objective: out.objective + constant,
            status: format!("{:?}", out.status),
            iterations: out.iterations,
            max_violation,
            network,
        })
    }
}

/// Rows (j, i): −(2p_ji − 1) x̃_iᵀ w_j ≤ 0 for i in rows[j], one block per unit.
fn constraint_matrix(data: &Dataset, units: &[Unit], rows: &[&[usize]]) -> CscMatrix<f64> {
    let k = data.dim();
    let m = units.len();
    let total: usize = rows.iter().map(|r| r.len()).sum();
    let mut colptr = Vec::with_capacity(m * k + 1);
    let mut rowval = Vec::with_capacity(k * total);
    let mut nzval = Vec::with_capacity(k * total);
    colptr.push(0);
    let mut offset = 0;
    for (j, u) in units.iter().enumerate() {
        for c in 0..k {
            for (r, &i) in rows[j].iter().enumerate() {
                rowval.push(offset + r);
                let side = if u.pattern[i] { 1.0 } else { -1.0 };
                nzval.push(-side * data.row(i)[c]);
            }
            colptr.push(rowval.len());
        }
        offset += rows[j].len();
    }
    CscMatrix::new(total, m * k, colptr, rowval, nzval)
}

/// The largest violation of `(2p_ji − 1) x̃_iᵀ w_j ≥ 0`, relative to max|y|.
pub fn max_violation(data: &Dataset, units: &[Unit], network: &Network) -> f64 {
    let scale = data.y.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (j, u) in units.iter().enumerate() {
        let w = network.unit_weights(j);
        for i in 0..data.n {
            let side = if u.pattern[i] { 1.0 } else { -1.0 };
            worst = worst.max(-side * dot(w, data.row(i)) / scale);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticSpec;

    fn data() -> Dataset {
        SyntheticSpec {
            n: 30,
            d: 2,
            teacher_units: 3,
            noise: 0.1,
            seed: 7,
        }
        .generate()
        .unwrap()
    }

    #[test]
    fn qp_solution_feasible_and_optimal_against_perturbations() {
        let data = data();
        let init = Network::random(2, 3, 11);
        let units = init.units_at(&data);
        let sol = QpSolver::default().solve(&data, &units).unwrap();
        assert!(sol.max_violation <= VIOLATION_TOL);
        // The forward pass and the QP model agree when constraints hold.
        assert!((sol.loss - sol.objective).abs() < 1e-6 * (1.0 + sol.loss));
        // The initial network is feasible for its own patterns: the QP can only be better.
        assert!(sol.loss <= init.loss(&data) + 1e-9);
        // Random feasible perturbations (scaled-down weights keep every sign pattern
        // within closed cones) never beat the optimum.
        for t in [0.0, 0.5, 0.9, 0.99, 1.01] {
            let scaled = Network::from_weights(
                2,
                sol.network.weights.iter().map(|w| w * t).collect(),
                sol.network.signs.clone(),
            );
            assert!(scaled.loss(&data) >= sol.loss - 1e-7, "t={t}");
        }
    }

    #[test]
    fn reused_solver_matches_fresh_solver() {
        let data = data();
        let mut reused = QpSolver::new(true);
        for seed in 0..6 {
            let units = Network::random(2, 3, seed).units_at(&data);
            let a = reused.solve(&data, &units).unwrap();
            let b = QpSolver::new(false).solve(&data, &units).unwrap();
            assert!(
                (a.loss - b.loss).abs() < 1e-6 * (1.0 + b.loss),
                "{} vs {}",
                a.loss,
                b.loss
            );
        }
        assert_eq!(reused.setups(), 1);
    }

    #[test]
    fn facet_reduced_qp_matches_full_qp() {
        let data = data();
        let mut oracle = Oracle::new(&data);
        for seed in 0..6 {
            let units = Network::random(2, 3, seed).units_at(&data);
            let full = QpSolver::default().solve(&data, &units).unwrap();
            let reduced = QpSolver::default()
                .solve_reduced(&data, &units, &mut oracle)
                .unwrap();
            assert!(
                (full.loss - reduced.loss).abs() < 1e-6 * (1.0 + full.loss),
                "{} vs {}",
                full.loss,
                reduced.loss
            );
            assert!(reduced.max_violation <= VIOLATION_TOL);
        }
    }

    #[test]
    fn one_unit_all_active_is_least_squares() {
        // With one positive all-active unit and targets from a positive linear function,
        // the constrained optimum is the exact linear fit.
        let data = crate::data::parse_csv("0,1\n1,2\n2,3\n3,4\n", "t").unwrap();
        let units = [Unit {
            sign: 1,
            pattern: vec![true; 4],
        }];
        let sol = QpSolver::default().solve(&data, &units).unwrap();
        assert!(sol.loss < 1e-10, "{}", sol.loss);
        let w = sol.network.unit_weights(0);
        assert!((w[0] - 1.0).abs() < 1e-5 && (w[1] - 1.0).abs() < 1e-5);
    }
}
