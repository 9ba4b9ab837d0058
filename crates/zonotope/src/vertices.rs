//! Vertices of the zonotope `Σ_i [0, x̃_i]` = activation patterns of one unit whose
//! region `{w : (2p_i − 1) x̃_iᵀ w > 0 ∀i}` is open and non-empty. Feasibility is an LP
//! (`(2p − 1)·X̃w ≥ 1`, scale-invariant); enumeration is a graph search over single flips
//! (the zonotope's edges). Identical rows are one generator of the zonotope, so an edge
//! flips all copies of a duplicated point together.

use crate::data::Dataset;
use crate::linalg::dot;
use crate::solver::{dense_csc, Session};
use anyhow::{bail, Result};
use clarabel::algebra::CscMatrix;
use clarabel::solver::SolverStatus;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

/// Answers "is this pattern a vertex?" with an LP, keeping one clarabel solver alive
/// (all feasibility LPs on one data set share their structure: only signs change).
pub struct Oracle<'a> {
    data: &'a Dataset,
    session: Session,
    zero_p: CscMatrix<f64>,
    zero_q: Vec<f64>,
    rhs: Vec<f64>,
    /// For each row, all rows with identical inputs (itself included).
    twins: Vec<Vec<usize>>,
    /// The first row of each group of identical rows: the flippable "examples".
    representatives: Vec<usize>,
    /// Feasible single flips per pattern, cached (the search revisits patterns).
    flips: HashMap<Vec<bool>, Vec<usize>>,
    pub lp_solves: u64,
}

impl<'a> Oracle<'a> {
    pub fn new(data: &'a Dataset) -> Self {
        let k = data.dim();
        let groups = data.identical_rows();
        let mut twins = vec![Vec::new(); data.n];
        for g in &groups {
            for &i in g {
                twins[i] = g.clone();
            }
        }
        Self {
            data,
            twins,
            representatives: groups.iter().map(|g| g[0]).collect(),
            session: Session::new(true),
            zero_p: crate::solver::upper_csc(k, |_, _| 0.0),
            zero_q: vec![0.0; k],
            rhs: vec![-1.0; data.n],
            flips: HashMap::new(),
            lp_solves: 0,
        }
    }

    /// A weight vector realising `pattern` with margin (every `±x̃_iᵀw ≥ 1`), or None if
    /// the pattern is not a vertex. Solver failures are errors, never "infeasible".
    pub fn witness(&mut self, pattern: &[bool]) -> Result<Option<Vec<f64>>> {
        let data = self.data;
        let a = dense_csc(data.n, data.dim(), |i, c| {
            let sign = if pattern[i] { 1.0 } else { -1.0 };
            -sign * data.row(i)[c]
        });
        self.lp_solves += 1;
        let out = self
            .session
            .solve(&self.zero_p, &self.zero_q, &a, &self.rhs)?;
        match out.status {
            SolverStatus::Solved | SolverStatus::AlmostSolved => {
                // Check the certificate: the pattern of w must be exactly `pattern`.
                let realised = (0..data.n).all(|i| (dot(&out.x, data.row(i)) > 0.0) == pattern[i]);
                if !realised {
                    bail!(
                        "feasibility LP reported {:?} but its solution does not realise the \
                         pattern (numerical trouble; data may be badly scaled)",
                        out.status
                    );
                }
                Ok(Some(out.x))
            }
            SolverStatus::PrimalInfeasible | SolverStatus::AlmostPrimalInfeasible => Ok(None),
            other => bail!("feasibility LP failed with solver status {other:?}"),
        }
    }

    /// Flip example i's bit, together with the bits of any identical rows.
    pub fn toggle(&self, pattern: &mut [bool], i: usize) {
        for &t in &self.twins[i] {
            pattern[t] = !pattern[t];
        }
    }

    /// The rows that can be flipped: one per group of identical rows.
    pub fn representatives(&self) -> &[usize] {
        &self.representatives
    }

    pub fn is_vertex(&mut self, pattern: &[bool]) -> Result<bool> {
        Ok(self.witness(pattern)?.is_some())
    }

    /// The examples whose bit can be flipped while staying a vertex (the facets of the
    /// pattern's cone, i.e. the zonotope edges at this vertex).
    pub fn feasible_flips(&mut self, pattern: &[bool]) -> Result<Vec<usize>> {
        if let Some(f) = self.flips.get(pattern) {
            return Ok(f.clone());
        }
        let mut flipped = pattern.to_vec();
        let mut out = Vec::new();
        for r in 0..self.representatives.len() {
            let i = self.representatives[r];
            self.toggle(&mut flipped, i);
            if self.is_vertex(&flipped)? {
                out.push(i);
            }
            self.toggle(&mut flipped, i);
        }
        self.flips.insert(pattern.to_vec(), out.clone());
        Ok(out)
    }
}

/// Result of a vertex enumeration.
#[derive(Debug, Clone, Serialize)]
pub struct Enumeration {
    pub vertices: Vec<Vec<bool>>,
    /// False when `max` stopped the search early.
    pub complete: bool,
    pub lp_solves: u64,
}

/// Enumerate vertices by breadth-first search over single flips from the all-active
/// pattern (always a vertex: the bias direction). Stops after `max` vertices if given.
pub fn enumerate(
    data: &Dataset,
    max: Option<usize>,
    progress: &indicatif::ProgressBar,
) -> Result<Enumeration> {
    let mut oracle = Oracle::new(data);
    let start = vec![true; data.n];
    let mut seen: HashSet<Vec<bool>> = HashSet::from([start.clone()]);
    let mut rejected: HashSet<Vec<bool>> = HashSet::new();
    let mut order = vec![start.clone()];
    let mut queue = VecDeque::from([start]);
    let limit = max.unwrap_or(usize::MAX);
    progress.inc(1);
    while let Some(p) = queue.pop_front() {
        let mut q = p.clone();
        for r in 0..oracle.representatives().len() {
            let i = oracle.representatives()[r];
            if order.len() >= limit {
                return Ok(Enumeration {
                    vertices: order,
                    complete: false,
                    lp_solves: oracle.lp_solves,
                });
            }
            oracle.toggle(&mut q, i);
            if !seen.contains(&q) && !rejected.contains(&q) {
                if oracle.is_vertex(&q)? {
                    seen.insert(q.clone());
                    order.push(q.clone());
                    queue.push_back(q.clone());
                    progress.inc(1);
                } else {
                    rejected.insert(q.clone());
                }
            }
            oracle.toggle(&mut q, i);
        }
    }
    Ok(Enumeration {
        vertices: order,
        complete: true,
        lp_solves: oracle.lp_solves,
    })
}

/// Result of sampling vertices by random directions.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub directions: usize,
    pub distinct: usize,
    /// How often the most and least frequent sampled vertex was hit.
    pub max_hits: usize,
    pub min_hits: usize,
    /// Distinct vertices in order of first hit, with their hit counts.
    pub vertices: Vec<(Vec<bool>, usize)>,
}

/// Sample `k` Gaussian directions w and record the patterns 1[X̃w > 0]. Vertices are hit
/// in proportion to the solid angle of their cones, not uniformly.
pub fn sample(data: &Dataset, k: usize, seed: u64) -> Sample {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut index: HashMap<Vec<bool>, usize> = HashMap::new();
    let mut vertices: Vec<(Vec<bool>, usize)> = Vec::new();
    for _ in 0..k {
        let w: Vec<f64> = (0..data.dim())
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let p: Vec<bool> = (0..data.n).map(|i| dot(&w, data.row(i)) > 0.0).collect();
        match index.get(&p) {
            Some(&at) => vertices[at].1 += 1,
            None => {
                index.insert(p.clone(), vertices.len());
                vertices.push((p, 1));
            }
        }
    }
    let hits = vertices.iter().map(|v| v.1);
    Sample {
        directions: k,
        distinct: vertices.len(),
        max_hits: hits.clone().max().unwrap_or(0),
        min_hits: hits.min().unwrap_or(0),
        vertices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{general_position_vertex_count, SyntheticSpec};

    fn random_data(n: usize, d: usize, seed: u64) -> Dataset {
        SyntheticSpec {
            n,
            d,
            teacher_units: 1,
            noise: 0.0,
            seed,
        }
        .generate()
        .unwrap()
    }

    #[test]
    fn vertex_counts_match_general_position_formula() {
        for (n, d) in [(5, 1), (5, 2), (8, 2), (7, 3), (10, 1), (9, 2)] {
            let data = random_data(n, d, (n * 10 + d) as u64);
            let e = enumerate(&data, None, &indicatif::ProgressBar::hidden()).unwrap();
            assert!(e.complete);
            assert_eq!(
                e.vertices.len() as u64,
                general_position_vertex_count(n, d),
                "n={n} d={d}"
            );
            let distinct: HashSet<_> = e.vertices.iter().collect();
            assert_eq!(distinct.len(), e.vertices.len(), "no duplicates");
        }
    }

    #[test]
    fn duplicated_points_reduce_the_count_and_sampling_finds_only_vertices() {
        // d = 1: points 0, 0, 1, 2 have 3 distinct positions → 2·3 vertices, not 2·4.
        let data = crate::data::parse_csv("0,1\n0,2\n1,3\n2,4\n", "t").unwrap();
        let e = enumerate(&data, None, &indicatif::ProgressBar::hidden()).unwrap();
        assert_eq!(e.vertices.len(), 6);
        let s = sample(&data, 500, 3);
        let all: HashSet<_> = e.vertices.iter().collect();
        assert!(s.distinct <= 6 && s.distinct >= 4);
        assert!(s.vertices.iter().all(|(p, _)| all.contains(p)));
        assert_eq!(s.vertices.iter().map(|v| v.1).sum::<usize>(), 500);
    }

    #[test]
    fn max_stops_early_and_flips_are_edges() {
        let data = random_data(8, 2, 4);
        let e = enumerate(&data, Some(10), &indicatif::ProgressBar::hidden()).unwrap();
        assert!(!e.complete);
        assert_eq!(e.vertices.len(), 10);
        // In the plane (d = 2) every vertex cone in R³ is polyhedral with ≥ 2 facets, and
        // a bit that is "1" for all points can only flip at extreme points of the data.
        let mut oracle = Oracle::new(&data);
        let flips = oracle.feasible_flips(&vec![true; 8]).unwrap();
        assert!(flips.len() >= 3 && flips.len() <= 8, "{flips:?}");
    }
}
