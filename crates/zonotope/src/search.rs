//! Greedy local search over vertex tuples of Z^m. A state is one pattern per unit (with
//! fixed output signs); its value is the QP optimum; neighbours are all feasible single
//! (unit, example) flips (an example's identical copies flip with it). Moves are accepted only if they lower the loss, so the
//! trajectory is monotone by construction.

use crate::data::Dataset;
use crate::network::Unit;
use crate::qp::{QpSolver, Solution};
use crate::vertices::Oracle;
use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// A move must lower the loss by this relative amount to count: the QP is solved to
/// ~1e-8 relative accuracy, so smaller "improvements" are solver noise and could cycle.
pub const RELATIVE_IMPROVEMENT: f64 = 1e-9;

#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub first_improvement: bool,
    pub max_steps: usize,
    /// Orders the neighbours in first-improvement mode.
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Move {
    /// 1-based unit and data row.
    pub unit: usize,
    pub example: usize,
    pub loss: f64,
    pub neighbours_evaluated: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub initial_loss: f64,
    pub final_loss: f64,
    /// Loss at the start and after every accepted move (strictly decreasing).
    pub trajectory: Vec<f64>,
    pub moves: Vec<Move>,
    /// Why the search stopped: "local optimum" or "max steps".
    pub stopped: String,
    pub qp_solves: u64,
    pub lp_solves: u64,
    /// Neighbour QPs that failed (solver status or constraint check) and were skipped.
    pub failed_neighbours: usize,
    pub units: Vec<Unit>,
    pub solution: Solution,
}

fn improves(candidate: f64, current: f64) -> bool {
    candidate < current - RELATIVE_IMPROVEMENT * current.abs()
}

/// Run greedy search from `start` (each pattern must be a vertex). `incumbent`: a network
/// known to sit at `start` (e.g. gradient descent's result); if it beats the start QP's
/// answer (possible only by the QP's ~1e-9 relative tolerance) it is kept as the start
/// solution, so a search from it can never end above it.
pub fn greedy(
    data: &Dataset,
    start: Vec<Unit>,
    incumbent: Option<&crate::Network>,
    opts: &Options,
    qp: &mut QpSolver,
    progress: &indicatif::ProgressBar,
) -> Result<Run> {
    let mut oracle = Oracle::new(data);
    for (j, u) in start.iter().enumerate() {
        ensure!(
            oracle.is_vertex(&u.pattern)?,
            "start unit {} has a pattern that is not a vertex (some x̃ᵀw is exactly 0); \
             perturb the initialisation",
            j + 1
        );
    }
    let qp_before = qp.solves();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut units = start;
    let mut current = qp.solve_reduced(data, &units, &mut oracle)?;
    if let Some(net) = incumbent {
        let loss = net.loss(data);
        ensure!(
            net.units_at(data) == units,
            "the incumbent network does not sit at the start vertex"
        );
        if loss < current.loss {
            current = Solution {
                loss,
                objective: loss,
                status: "start network (QP answer was not better)".into(),
                iterations: 0,
                max_violation: crate::qp::max_violation(data, &units, net),
                network: net.clone(),
            };
        }
    }
    let initial_loss = current.loss;
    let mut trajectory = vec![current.loss];
    let mut moves = Vec::new();
    let mut failed = 0;
    let mut stopped = "max steps";
    for _ in 0..opts.max_steps {
        let mut neighbours: Vec<(usize, usize)> = Vec::new();
        for (j, u) in units.iter().enumerate() {
            for i in oracle.feasible_flips(&u.pattern)? {
                neighbours.push((j, i));
            }
        }
        if opts.first_improvement {
            neighbours.shuffle(&mut rng);
        }
        let mut best: Option<(usize, usize, Solution)> = None;
        let mut evaluated = 0;
        for (j, i) in neighbours {
            oracle.toggle(&mut units[j].pattern, i);
            let outcome = qp.solve_reduced(data, &units, &mut oracle);
            oracle.toggle(&mut units[j].pattern, i);
            evaluated += 1;
            let Ok(sol) = outcome else {
                failed += 1;
                continue;
            };
            let bar = best.as_ref().map_or(current.loss, |b| b.2.loss);
            if improves(sol.loss, bar) {
                best = Some((j, i, sol));
                if opts.first_improvement {
                    break;
                }
            }
        }
        let Some((j, i, sol)) = best else {
            stopped = "local optimum";
            break;
        };
        oracle.toggle(&mut units[j].pattern, i);
        current = sol;
        trajectory.push(current.loss);
        moves.push(Move {
            unit: j + 1,
            example: i + 1,
            loss: current.loss,
            neighbours_evaluated: evaluated,
        });
        progress.inc(1);
        progress.set_message(format!("loss {:.6e}", current.loss));
    }
    Ok(Run {
        initial_loss,
        final_loss: current.loss,
        trajectory,
        moves,
        stopped: stopped.into(),
        qp_solves: qp.solves() - qp_before,
        lp_solves: oracle.lp_solves,
        failed_neighbours: failed,
        units,
        solution: current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticSpec;
    use crate::gd;
    use crate::network::Network;

    fn data(seed: u64) -> Dataset {
        SyntheticSpec {
            n: 14,
            d: 2,
            teacher_units: 4,
            noise: 0.05,
            seed,
        }
        .generate()
        .unwrap()
    }

    #[test]
    fn greedy_is_monotone_in_both_modes() {
        let data = data(1);
        for first_improvement in [false, true] {
            let start = Network::random(2, 2, 3).units_at(&data);
            let opts = Options {
                first_improvement,
                max_steps: 50,
                seed: 0,
            };
            let hidden = indicatif::ProgressBar::hidden();
            let run = greedy(&data, start, None, &opts, &mut QpSolver::default(), &hidden).unwrap();
            assert!(
                run.trajectory.windows(2).all(|w| w[1] < w[0]),
                "{:?}",
                run.trajectory
            );
            assert_eq!(run.trajectory.len(), run.moves.len() + 1);
            assert_eq!(run.final_loss, *run.trajectory.last().unwrap());
            // The returned network really has the reported loss and patterns.
            assert!((run.solution.network.loss(&data) - run.final_loss).abs() < 1e-12);
            assert_eq!(run.failed_neighbours, 0);
        }
    }

    #[test]
    fn qp_at_gd_pattern_beats_gd_and_greedy_from_gd_never_ends_above_it() {
        for seed in 0..3 {
            let data = data(10 + seed);
            let init = Network::random(2, 3, seed);
            for optimizer in [gd::Optimizer::Gd, gd::Optimizer::Adam] {
                let opts = gd::Options {
                    optimizer,
                    lr: optimizer.default_lr(),
                    steps: 400,
                };
                let run = gd::train(&data, &init, &opts).unwrap();
                let units = run.network.units_at(&data);
                let at_gd = QpSolver::default().solve(&data, &units).unwrap();
                assert!(
                    at_gd.loss <= run.final_loss * (1.0 + 1e-6) + 1e-9,
                    "QP {} vs GD {}",
                    at_gd.loss,
                    run.final_loss
                );
                let opts = Options {
                    first_improvement: false,
                    max_steps: 30,
                    seed,
                };
                let hidden = indicatif::ProgressBar::hidden();
                let g = greedy(
                    &data,
                    units,
                    Some(&run.network),
                    &opts,
                    &mut QpSolver::default(),
                    &hidden,
                )
                .unwrap();
                assert!(
                    g.final_loss <= run.final_loss,
                    "{} > {}",
                    g.final_loss,
                    run.final_loss
                );
            }
        }
    }
}
