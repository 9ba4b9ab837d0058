//! Top-k sparsification of per-example Fishers, with the dense norms recorded first.

use anyhow::{ensure, Result};
use rayon::prelude::*;

/// A diagonal PEF reduced to its k largest values.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseDiagonal {
    /// Flat parameter indices, ascending.
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
    /// ‖f‖₂ of the dense diagonal, before sparsification.
    pub dense_norm: f64,
}

/// A low-rank PEF factor reduced to its k entries of largest magnitude.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseLowRank {
    /// Per class column: (row indices ascending, values with signs kept).
    pub columns: Vec<(Vec<u32>, Vec<f32>)>,
    /// ‖AᵀA‖_F (= ‖AAᵀ‖_F) of the dense factor, before sparsification.
    pub dense_norm: f64,
}

/// The positions (in flat order over the concatenated `parts`) of the `k` entries of
/// largest magnitude. Ties at the threshold go to the lower positions, so the result is
/// deterministic.
///
/// The vector is cut into one piece per core (two per core, for balance); each piece
/// keeps its best `k` in a min-heap keyed by (|v|, lower position first), where most
/// entries are rejected by one comparison with the heap's minimum, and the pieces'
/// candidates are merged by the same key. No copy of the vector is made.
fn top_k_positions(parts: &[&[f32]], k: usize) -> Vec<usize> {
    use rayon::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if k == 0 {
        return Vec::new();
    }
    // For non-negative floats the bit pattern orders like the value (as total_cmp).
    type Key = (u32, Reverse<usize>);
    let key = |i: usize, v: f32| -> Key { (v.abs().to_bits(), Reverse(i)) };
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let piece = total
        .div_ceil(2 * rayon::current_num_threads())
        .max(crate::CHUNK);
    let mut pieces: Vec<(usize, &[f32])> = Vec::new();
    let mut offset = 0;
    for part in parts {
        for (i, chunk) in part.chunks(piece).enumerate() {
            pieces.push((offset + i * piece, chunk));
        }
        offset += part.len();
    }
    let mut candidates: Vec<Key> = pieces
        .par_iter()
        .flat_map_iter(|&(start, values)| {
            let mut heap: BinaryHeap<Reverse<Key>> = BinaryHeap::with_capacity(k.min(values.len()));
            for (i, &v) in values.iter().enumerate() {
                let candidate = key(start + i, v);
                if heap.len() < k {
                    heap.push(Reverse(candidate));
                } else if heap.peek().is_some_and(|Reverse(min)| candidate > *min) {
                    heap.pop();
                    heap.push(Reverse(candidate));
                }
            }
            heap.into_iter().map(|Reverse(c)| c)
        })
        .collect();
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        candidates.truncate(k);
    }
    let mut positions: Vec<usize> = candidates.into_iter().map(|(_, Reverse(i))| i).collect();
    positions.sort_unstable();
    positions
}

fn check_k(k: usize, num_params: usize) -> Result<()> {
    ensure!(k >= 1, "top-k must be at least 1");
    ensure!(
        k <= num_params,
        "top-k {k} is larger than the model's parameter count {num_params}"
    );
    ensure!(
        num_params <= u32::MAX as usize,
        "{num_params} parameters do not fit 32-bit indices"
    );
    Ok(())
}

/// Keep the `k` largest values of a diagonal PEF.
pub fn top_k_diagonal(dense: &[f32], k: usize) -> Result<SparseDiagonal> {
    check_k(k, dense.len())?;
    let dense_norm = dense
        .par_iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let positions = top_k_positions(&[dense], k);
    Ok(SparseDiagonal {
        values: positions.iter().map(|&i| dense[i]).collect(),
        indices: positions.into_iter().map(|i| i as u32).collect(),
        dense_norm,
    })
}

/// ‖AᵀA‖_F for A given as columns.
pub fn gram_frobenius_norm(columns: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0;
    for (i, a) in columns.iter().enumerate() {
        for (j, b) in columns.iter().enumerate().skip(i) {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            sum += if i == j { dot * dot } else { 2.0 * dot * dot };
        }
    }
    sum.sqrt()
}

/// Keep the `k` entries of largest |value| jointly over all columns of A (signs kept).
/// `k` may not exceed the parameter count (rows of A); when A has fewer than `k`
/// entries in all, all are kept.
pub fn top_k_low_rank(columns: &[Vec<f32>], k: usize) -> Result<SparseLowRank> {
    let rows = columns.first().map_or(0, Vec::len);
    ensure!(
        columns.iter().all(|c| c.len() == rows),
        "low-rank factor columns have different lengths"
    );
    check_k(k, rows)?;
    let dense_norm = gram_frobenius_norm(columns);
    let parts: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
    let positions = top_k_positions(&parts, k);
    let mut out: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); columns.len()];
    // Flat positions are column-major over A, so rows come out ascending per column.
    for p in positions {
        let (c, r) = (p / rows, p % rows);
        out[c].0.push(r as u32);
        out[c].1.push(columns[c][r]);
    }
    Ok(SparseLowRank {
        columns: out,
        dense_norm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force top-k: sort everything by (|v| desc, position asc).
    fn brute(values: &[f32], k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
        order.truncate(k);
        order.sort_unstable();
        order
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Few distinct values, so ties are frequent.
                (((s >> 33) % 17) as f32 - 8.0) * 0.25
            })
            .collect()
    }

    #[test]
    fn diagonal_top_k_is_the_true_top_k_and_norm_is_dense() {
        for seed in 0..20 {
            let dense: Vec<f32> = pseudo_random(50, seed).iter().map(|v| v.abs()).collect();
            for k in [1, 3, 17, 50] {
                let s = top_k_diagonal(&dense, k).unwrap();
                let want = brute(&dense, k);
                assert_eq!(
                    s.indices,
                    want.iter().map(|&i| i as u32).collect::<Vec<_>>()
                );
                assert_eq!(s.values, want.iter().map(|&i| dense[i]).collect::<Vec<_>>());
                let norm: f64 = dense
                    .iter()
                    .map(|&v| (v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!((s.dense_norm - norm).abs() < 1e-12);
            }
        }
        assert!(top_k_diagonal(&[1.0, 2.0], 3)
            .unwrap_err()
            .to_string()
            .contains("larger than the model's parameter count"));
    }

    /// Long enough to be cut into several pieces (and columns that straddle pieces), with
    /// k below, near and above a piece's length; ties are everywhere.
    #[test]
    fn top_k_across_pieces_equals_brute_force() {
        let flat = pseudo_random(300_007, 5);
        for k in [1, 977, 70_000, 300_007] {
            assert_eq!(top_k_positions(&[&flat], k), brute(&flat, k), "k {k}");
            let (a, b) = flat.split_at(123_457);
            assert_eq!(
                top_k_positions(&[a, b], k),
                brute(&flat, k),
                "two parts, k {k}"
            );
        }
    }

    #[test]
    fn low_rank_top_k_is_joint_over_columns_with_signs() {
        for seed in 0..20 {
            let flat = pseudo_random(3 * 40, seed);
            let columns: Vec<Vec<f32>> = flat.chunks(40).map(<[f32]>::to_vec).collect();
            let k = 25;
            let s = top_k_low_rank(&columns, k).unwrap();
            let want = brute(&flat, k);
            let mut got = Vec::new();
            for (c, (rows, values)) in s.columns.iter().enumerate() {
                assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows ascending");
                for (&r, &v) in rows.iter().zip(values) {
                    assert_eq!(v, columns[c][r as usize], "sign and value kept");
                    got.push(c * 40 + r as usize);
                }
            }
            assert_eq!(got, want);
            // ‖AᵀA‖_F equals ‖AAᵀ‖_F computed the long way.
            let mut aat = 0.0f64;
            for i in 0..40 {
                for j in 0..40 {
                    let v: f64 = columns.iter().map(|c| c[i] as f64 * c[j] as f64).sum();
                    aat += v * v;
                }
            }
            assert!((s.dense_norm - aat.sqrt()).abs() < 1e-9 * aat.sqrt().max(1.0));
        }
    }
}
