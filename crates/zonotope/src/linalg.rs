//! Tiny dense linear algebra for (d+1)-sized systems, where calling a general library
//! would cost more than the arithmetic.

use anyhow::{ensure, Result};

/// Relative pivot tolerance below which rows are treated as linearly dependent.
const RANK_TOL: f64 = 1e-10;

/// Gaussian elimination with partial pivoting on a row-major `rows×cols` matrix.
/// Returns the rank, judging pivots relative to the largest row norm.
fn rank(mut a: Vec<f64>, rows: usize, cols: usize) -> usize {
    let scale = (0..rows)
        .map(|r| {
            a[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
        })
        .fold(0.0f64, f64::max)
        .sqrt();
    if scale == 0.0 {
        return 0;
    }
    let mut rank = 0;
    for col in 0..cols {
        if rank == rows {
            break;
        }
        let pivot = (rank..rows)
            .max_by(|&p, &q| a[p * cols + col].abs().total_cmp(&a[q * cols + col].abs()))
            .expect("non-empty range");
        if a[pivot * cols + col].abs() <= RANK_TOL * scale {
            continue;
        }
        for c in 0..cols {
            a.swap(rank * cols + c, pivot * cols + c);
        }
        for r in rank + 1..rows {
            let f = a[r * cols + col] / a[rank * cols + col];
            for c in col..cols {
                a[r * cols + c] -= f * a[rank * cols + c];
            }
        }
        rank += 1;
    }
    rank
}

/// Whether the given equal-length rows are linearly independent.
pub fn rows_independent(rows: &[&[f64]]) -> bool {
    let cols = rows.first().map_or(0, |r| r.len());
    rank(rows.concat(), rows.len(), cols) == rows.len()
}

/// Solve the square system `a z = b` (row-major a) by Gaussian elimination with partial
/// pivoting; errors if the matrix is numerically singular.
pub fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p * n + col].abs().total_cmp(&a[q * n + col].abs()))
            .expect("non-empty range");
        ensure!(
            a[pivot * n + col].abs() > 1e-13 * scale,
            "singular linear system (points not in general position)"
        );
        for c in 0..n {
            a.swap(col * n + c, pivot * n + c);
        }
        b.swap(col, pivot);
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for c in col..n {
                a[r * n + c] -= f * a[col * n + c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut z = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r * n + c] * z[c]).sum();
        z[r] = (b[r] - s) / a[r * n + r];
    }
    Ok(z)
}

/// The minimum-norm solution of the underdetermined (or square) system `B a = r`, where
/// B's rows are `rows` (k ≤ dim rows of length dim): a = Bᵀ (B Bᵀ)⁻¹ r.
pub fn min_norm_solve(rows: &[&[f64]], r: &[f64]) -> Result<Vec<f64>> {
    let k = rows.len();
    let dim = rows.first().map_or(0, |row| row.len());
    ensure!(k <= dim, "{k} equations in {dim} unknowns: overdetermined");
    let gram: Vec<f64> = (0..k * k)
        .map(|idx| dot(rows[idx / k], rows[idx % k]))
        .collect();
    let alpha = solve(gram, r.to_vec())?;
    Ok((0..dim)
        .map(|c| (0..k).map(|i| alpha[i] * rows[i][c]).sum())
        .collect())
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_and_solves() {
        assert!(rows_independent(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, 1.0]]));
        assert!(!rows_independent(&[&[1.0, 2.0], &[2.0, 4.0]]));
        let z = solve(vec![2.0, 1.0, 1.0, 3.0], vec![3.0, 5.0]).unwrap();
        assert!((z[0] - 0.8).abs() < 1e-12 && (z[1] - 1.4).abs() < 1e-12);
        assert!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 1.0]).is_err());
        let a = min_norm_solve(&[&[1.0, 1.0]], &[2.0]).unwrap();
        assert!((a[0] - 1.0).abs() < 1e-12 && (a[1] - 1.0).abs() < 1e-12);
    }
}
