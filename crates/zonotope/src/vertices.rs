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
    /// Find flips with one LP per example even where the hull shortcut applies.
    lp_only: bool,
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
            lp_only: false,
            lp_solves: 0,
        }
    }

    /// Always use one LP per candidate flip (slow reference path, for validation).
    pub fn lp_only(mut self) -> Self {
        self.lp_only = true;
        self
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

    /// Whether [`feasible_flips`](Self::feasible_flips) is cheap (convex hull, d ≤ 2).
    pub fn has_cheap_facets(&self) -> bool {
        self.data.d <= 2 && !self.lp_only
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
    /// pattern's cone, i.e. the zonotope edges at this vertex). `pattern` must be a vertex.
    pub fn feasible_flips(&mut self, pattern: &[bool]) -> Result<Vec<usize>> {
        if let Some(f) = self.flips.get(pattern) {
            return Ok(f.clone());
        }
        let out = if self.has_cheap_facets() {
            let Some(w0) = self.witness(pattern)? else {
                bail!("pattern is not a vertex; it has no neighbours");
            };
            self.hull_flips(pattern, &w0)
        } else {
            self.lp_flips(pattern)?
        };
        self.flips.insert(pattern.to_vec(), out.clone());
        Ok(out)
    }

    /// Facets of the cone {w : g_kᵀw ≥ 0}, g_k = (2p_k − 1) x̃_k, with an interior point
    /// w0: scaling each g_k to g_k/(g_kᵀw0) puts them on the hyperplane {zᵀw0 = 1}, and a
    /// constraint is a facet exactly when its point is a vertex of their convex hull
    /// (extreme rays of the dual cone). For d ≤ 2 the hull is 1- or 2-dimensional and
    /// costs O(n log n) instead of n LPs.
    fn hull_flips(&self, pattern: &[bool], w0: &[f64]) -> Vec<usize> {
        let data = self.data;
        let basis = orthonormal_complement(w0);
        let points: Vec<(usize, Vec<f64>)> = self
            .representatives
            .iter()
            .map(|&i| {
                let side = if pattern[i] { 1.0 } else { -1.0 };
                let g: Vec<f64> = data.row(i).iter().map(|v| side * v).collect();
                let scale = dot(&g, w0);
                (i, basis.iter().map(|b| dot(b, &g) / scale).collect())
            })
            .collect();
        let mut out = hull_vertices(&points);
        out.sort_unstable();
        out
    }

    fn lp_flips(&mut self, pattern: &[bool]) -> Result<Vec<usize>> {
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
        Ok(out)
    }
}

/// An orthonormal basis of the complement of w (Gram–Schmidt on the standard basis).
fn orthonormal_complement(w: &[f64]) -> Vec<Vec<f64>> {
    let norm = dot(w, w).sqrt();
    let mut basis: Vec<Vec<f64>> = vec![w.iter().map(|v| v / norm).collect()];
    for e in 0..w.len() {
        let mut v: Vec<f64> = (0..w.len()).map(|c| f64::from(u8::from(c == e))).collect();
        for b in &basis {
            let p = dot(&v, b);
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= p * y);
        }
        let n = dot(&v, &v).sqrt();
        if n > 1e-8 && basis.len() < w.len() {
            basis.push(v.iter().map(|x| x / n).collect());
        }
    }
    basis.remove(0);
    basis
}

/// Indices of the vertices of the convex hull of points in R^1 or R^2 (points in the
/// relative interior of a hull edge are not vertices).
fn hull_vertices(points: &[(usize, Vec<f64>)]) -> Vec<usize> {
    if points.len() <= 1 {
        return points.iter().map(|p| p.0).collect();
    }
    if points[0].1.len() == 1 {
        let by = |a: &&(usize, Vec<f64>), b: &&(usize, Vec<f64>)| a.1[0].total_cmp(&b.1[0]);
        let lo = points.iter().min_by(by).expect("non-empty").0;
        let hi = points.iter().max_by(by).expect("non-empty").0;
        return if lo == hi { vec![lo] } else { vec![lo, hi] };
    }
    // Andrew's monotone chain, dropping collinear points (cross ≤ 0).
    let mut pts: Vec<&(usize, Vec<f64>)> = points.iter().collect();
    pts.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]).then(a.1[1].total_cmp(&b.1[1])));
    // Orientation with a relative dead zone: exactly collinear data (degenerate position)
    // rounds to tiny crosses of either sign, and such middle points are not facets.
    let cross = |o: &[f64], a: &[f64], b: &[f64]| {
        let (ax, ay, bx, by) = (a[0] - o[0], a[1] - o[1], b[0] - o[0], b[1] - o[1]);
        let c = ax * by - ay * bx;
        let scale = (ax * ax + ay * ay).sqrt() * (bx * bx + by * by).sqrt();
        if c.abs() <= 1e-12 * scale {
            0.0
        } else {
            c
        }
    };
    let mut hull: Vec<&(usize, Vec<f64>)> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &&(usize, Vec<f64>)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for p in iter {
            while hull.len() >= start + 2
                && cross(&hull[hull.len() - 2].1, &hull[hull.len() - 1].1, &p.1) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop(); // the last point starts the other chain
    }
    let mut ids: Vec<usize> = hull.iter().map(|p| p.0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
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
        // For d ≤ 2 the hull shortcut lists the edges directly; otherwise each unseen
        // neighbour costs one LP.
        let hull = data.d <= 2;
        let candidates = if hull {
            oracle.feasible_flips(&p)?
        } else {
            oracle.representatives().to_vec()
        };
        let mut q = p.clone();
        for i in candidates {
            if order.len() >= limit {
                return Ok(Enumeration {
                    vertices: order,
                    complete: false,
                    lp_solves: oracle.lp_solves,
                });
            }
            oracle.toggle(&mut q, i);
            if !seen.contains(&q) && !rejected.contains(&q) {
                if hull || oracle.is_vertex(&q)? {
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
    fn hull_shortcut_agrees_with_one_lp_per_flip() {
        for (n, d, seed) in [(12, 1, 5), (15, 2, 6), (20, 2, 7)] {
            let data = random_data(n, d, seed);
            let mut fast = Oracle::new(&data);
            let mut slow = Oracle::new(&data).lp_only();
            let e = enumerate(&data, Some(40), &indicatif::ProgressBar::hidden()).unwrap();
            for p in &e.vertices {
                assert_eq!(
                    fast.feasible_flips(p).unwrap(),
                    slow.feasible_flips(p).unwrap()
                );
            }
            assert!(fast.lp_solves * 5 < slow.lp_solves);
        }
    }

    #[test]
    fn collinear_points_are_not_facets() {
        // Rows 1–3 collinear (d = 2): 2 fewer vertices than general position; hull and
        // LPs agree on every vertex.
        let data = crate::data::parse_csv("0,0,1\n1,1,2\n2,2,3\n0,1,0\n0.3,2,1\n", "t").unwrap();
        let e = enumerate(&data, None, &indicatif::ProgressBar::hidden()).unwrap();
        let mut slow = Oracle::new(&data).lp_only();
        let mut fast = Oracle::new(&data);
        for p in &e.vertices {
            assert_eq!(
                fast.feasible_flips(p).unwrap(),
                slow.feasible_flips(p).unwrap()
            );
        }
        assert!((e.vertices.len() as u64) < general_position_vertex_count(5, 2));
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
        let flips = oracle.feasible_flips(&[true; 8]).unwrap();
        assert!(flips.len() >= 3 && flips.len() <= 8, "{flips:?}");
    }
}
