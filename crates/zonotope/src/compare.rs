//! Seeded comparison of gradient descent, Adam and greedy vertex search from the same
//! initialisation, with paired statistics over seeds.

use crate::data::{Dataset, SyntheticSpec};
use crate::gd::{self, Optimizer};
use crate::network::Network;
use crate::qp::QpSolver;
use crate::search;
use crate::stats::{self, Paired, Summary};
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;

/// Where each seed's data comes from.
#[derive(Debug, Clone)]
pub enum Problem {
    /// The same data for every seed (seeds vary the initialisation only).
    Fixed(Dataset),
    /// A fresh teacher and data set per seed: seed s uses data seed `spec.seed + s`.
    Synthetic(SyntheticSpec),
}

impl Problem {
    pub fn data_for(&self, seed: u64) -> Result<Dataset> {
        match self {
            Problem::Fixed(d) => Ok(d.clone()),
            Problem::Synthetic(spec) => SyntheticSpec {
                seed: spec.seed + seed,
                ..spec.clone()
            }
            .generate(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub units: usize,
    pub seeds: usize,
    pub first_seed: u64,
    pub steps: usize,
    pub gd_lr: f64,
    pub adam_lr: f64,
    pub search_max_steps: usize,
    pub first_improvement: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub initial_loss: f64,
    pub gd: f64,
    pub adam: f64,
    pub search: f64,
    pub search_moves: usize,
    pub search_stopped: String,
    pub qp_solves: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    pub seeds: Vec<SeedResult>,
    pub gd: Summary,
    pub adam: Summary,
    pub search: Summary,
    /// Search against each baseline: wins = search strictly lower.
    pub search_vs_gd: Paired,
    pub search_vs_adam: Paired,
}

/// Run one seed: same data, same initial network for all three methods.
pub fn run_seed(problem: &Problem, cfg: &Config, seed: u64) -> Result<SeedResult> {
    let data = problem.data_for(seed)?;
    let init = Network::random(data.d, cfg.units, seed);
    let baseline = |optimizer: Optimizer, lr: f64| {
        let opts = gd::Options {
            optimizer,
            lr,
            steps: cfg.steps,
        };
        gd::train(&data, &init, &opts).map(|r| r.final_loss)
    };
    let gd_loss = baseline(Optimizer::Gd, cfg.gd_lr)?;
    let adam_loss = baseline(Optimizer::Adam, cfg.adam_lr)?;
    let opts = search::Options {
        first_improvement: cfg.first_improvement,
        max_steps: cfg.search_max_steps,
        seed,
    };
    let mut qp = QpSolver::default();
    let hidden = indicatif::ProgressBar::hidden();
    let run = search::greedy(&data, init.units_at(&data), None, &opts, &mut qp, &hidden)?;
    Ok(SeedResult {
        seed,
        initial_loss: init.loss(&data),
        gd: gd_loss,
        adam: adam_loss,
        search: run.final_loss,
        search_moves: run.moves.len(),
        search_stopped: run.stopped,
        qp_solves: run.qp_solves,
    })
}

/// Run all seeds (in parallel; results are in seed order and independent of threads).
pub fn run(problem: &Problem, cfg: &Config, progress: &indicatif::ProgressBar) -> Result<Report> {
    anyhow::ensure!(cfg.seeds >= 1, "need at least one seed");
    let seeds: Vec<SeedResult> = (0..cfg.seeds as u64)
        .into_par_iter()
        .map(|s| {
            let seed = cfg.first_seed + s;
            let r = run_seed(problem, cfg, seed).map_err(|e| e.context(format!("seed {seed}")));
            progress.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    let column = |f: fn(&SeedResult) -> f64| seeds.iter().map(f).collect::<Vec<f64>>();
    let (gd_l, adam_l, search_l) = (column(|r| r.gd), column(|r| r.adam), column(|r| r.search));
    Ok(Report {
        config: cfg.clone(),
        gd: stats::summary(&gd_l),
        adam: stats::summary(&adam_l),
        search: stats::summary(&search_l),
        search_vs_gd: stats::wilcoxon(&search_l, &gd_l),
        search_vs_adam: stats::wilcoxon(&search_l, &adam_l),
        seeds,
    })
}

impl Report {
    /// Columns for the plot: method name and final loss per seed.
    pub fn columns(&self) -> Vec<(String, Vec<f64>)> {
        let col = |name: &str, f: fn(&SeedResult) -> f64| {
            (name.to_string(), self.seeds.iter().map(f).collect())
        };
        vec![
            col("gd", |r| r.gd),
            col("adam", |r| r.adam),
            col("greedy search", |r| r.search),
        ]
    }
}
