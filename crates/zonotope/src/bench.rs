//! Workloads for `fisherkit bench zonotope`: QPs at neighbouring vertices, as greedy search
//! meets them (a random walk of feasible single flips).

use crate::data::{Dataset, SyntheticSpec};
use crate::network::{Network, Unit};
use crate::vertices::Oracle;
use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Synthetic data (teacher with 8 units) and `count` pattern tuples of m units, each one
/// feasible flip away from the previous.
pub fn neighbour_walk(
    n: usize,
    d: usize,
    m: usize,
    count: usize,
    seed: u64,
) -> Result<(Dataset, Vec<Vec<Unit>>)> {
    let data = SyntheticSpec {
        n,
        d,
        teacher_units: 8,
        noise: 0.1,
        seed,
    }
    .generate()?;
    let mut oracle = Oracle::new(&data);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut units = Network::random(d, m, seed).units_at(&data);
    let mut walk = Vec::with_capacity(count);
    while walk.len() < count {
        let j = rng.random_range(0..m);
        let flips = oracle.feasible_flips(&units[j].pattern)?;
        if let Some(&i) = flips.choose(&mut rng) {
            oracle.toggle(&mut units[j].pattern, i);
            walk.push(units.clone());
        }
    }
    Ok((data, walk))
}
