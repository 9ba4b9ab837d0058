//! Sparse and small dense kernels: CSR × row-major dense products (the hot loop),
//! CSR transposition, and r×r Gram/products through faer.
//!
//! Every kernel is deterministic: each output row is summed in a fixed order by one
//! thread, so results do not depend on the number of threads.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A compressed sparse row matrix with f32 values and u32 column indices.
#[derive(Clone, Debug, Default)]
pub struct Csr {
    pub nrows: usize,
    pub ncols: usize,
    pub ptr: Vec<usize>,
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

/// Output rows handled by one rayon task in [`Csr::mul_dense`].
const ROW_BLOCK: usize = 64;
/// Width of the register-resident accumulator in the SpMM kernel.
const LANES: usize = 32;

impl Csr {
    pub fn nnz(&self) -> usize {
        self.val.len()
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.ptr[r], self.ptr[r + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }

    /// Squared Frobenius norm (f64 accumulation).
    pub fn frob_sq(&self) -> f64 {
        self.val.iter().map(|v| (*v as f64) * (*v as f64)).sum()
    }

    /// The transpose, with ascending indices in every row (a counting sort).
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0usize; self.ncols + 1];
        for &j in &self.idx {
            counts[j as usize + 1] += 1;
        }
        for j in 0..self.ncols {
            counts[j + 1] += counts[j];
        }
        let ptr = counts.clone();
        let mut next = counts;
        let mut idx = vec![0u32; self.nnz()];
        let mut val = vec![0f32; self.nnz()];
        for r in 0..self.nrows {
            let (cols, vals) = self.row(r);
            for (&j, &v) in cols.iter().zip(vals) {
                let slot = &mut next[j as usize];
                idx[*slot] = r as u32;
                val[*slot] = v;
                *slot += 1;
            }
        }
        Csr {
            nrows: self.ncols,
            ncols: self.nrows,
            ptr,
            idx,
            val,
        }
    }

    /// `out = self · b` where `b` is `ncols × r` row-major and `out` is `nrows × r`.
    /// Rows are processed in parallel blocks; each nnz streams one contiguous r-wide row
    /// of `b` into register accumulators.
    pub fn mul_dense(&self, b: &[f32], r: usize, out: &mut [f32]) {
        debug_assert_eq!(b.len(), self.ncols * r);
        debug_assert_eq!(out.len(), self.nrows * r);
        out.par_chunks_mut(ROW_BLOCK * r)
            .enumerate()
            .for_each(|(block, chunk)| {
                let first = block * ROW_BLOCK;
                for (q, o) in chunk.chunks_exact_mut(r).enumerate() {
                    let (cols, vals) = self.row(first + q);
                    spmm_row(cols, vals, b, r, o);
                }
            });
    }
}

/// One output row of a CSR × dense product, dispatched to an AVX2/FMA build when the CPU
/// has it (the plain build is the same code compiled for baseline x86-64).
fn spmm_row(cols: &[u32], vals: &[f32], b: &[f32], r: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the required CPU features were just detected.
            return unsafe { spmm_row_avx2(cols, vals, b, r, out) };
        }
    }
    spmm_row_generic(cols, vals, b, r, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_row_avx2(cols: &[u32], vals: &[f32], b: &[f32], r: usize, out: &mut [f32]) {
    spmm_row_generic(cols, vals, b, r, out)
}

#[inline(always)]
fn spmm_row_generic(cols: &[u32], vals: &[f32], b: &[f32], r: usize, out: &mut [f32]) {
    let mut c0 = 0;
    while c0 + LANES <= r {
        let mut acc = [0f32; LANES];
        for (&j, &v) in cols.iter().zip(vals) {
            let row = &b[j as usize * r + c0..j as usize * r + c0 + LANES];
            for l in 0..LANES {
                acc[l] = v.mul_add(row[l], acc[l]);
            }
        }
        out[c0..c0 + LANES].copy_from_slice(&acc);
        c0 += LANES;
    }
    if c0 < r {
        let tail = &mut out[c0..r];
        tail.fill(0.0);
        for (&j, &v) in cols.iter().zip(vals) {
            let row = &b[j as usize * r + c0..j as usize * r + r];
            for (o, x) in tail.iter_mut().zip(row) {
                *o = v.mul_add(*x, *o);
            }
        }
    }
}

fn view(a: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(a, rows, cols)
}

fn view_mut(a: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(a, rows, cols)
}

/// `aᵀa` (r×r) for a row-major `rows × r` matrix.
pub fn gram(a: &[f32], rows: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0f32; r * r];
    if rows > 0 {
        matmul(
            view_mut(&mut out, r, r),
            Accum::Replace,
            view(a, rows, r).transpose(),
            view(a, rows, r),
            1.0,
            Par::Seq,
        );
    }
    out
}

/// `a · m` for a row-major `rows × r` matrix and an r×r matrix.
pub fn mul_small(a: &[f32], rows: usize, r: usize, m: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; rows * r];
    if rows > 0 {
        matmul(
            view_mut(&mut out, rows, r),
            Accum::Replace,
            view(a, rows, r),
            view(m, r, r),
            1.0,
            Par::Seq,
        );
    }
    out
}

/// Element-wise sum of per-partition results, in partition order (deterministic).
pub fn sum_in_order(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut iter = parts.into_iter();
    let mut acc = iter.next().unwrap_or_default();
    for p in iter {
        for (a, b) in acc.iter_mut().zip(&p) {
            *a += b;
        }
    }
    acc
}

/// ⟨a, b⟩ with f64 accumulation.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Multiplicative update `x ← x ∘ num ⊘ (den + eps)`, clamped at zero.
pub fn multiplicative_update(x: &mut [f32], num: &[f32], den: &[f32], eps: f32) {
    x.par_chunks_mut(4096)
        .zip(num.par_chunks(4096))
        .zip(den.par_chunks(4096))
        .for_each(|((x, n), d)| {
            for ((x, n), d) in x.iter_mut().zip(n).zip(d) {
                *x = (*x * n.max(0.0) / (d + eps)).max(0.0);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spmm_and_transpose_match_dense() {
        // 3×4 sparse times 4×r dense, r chosen to exercise both the lanes and the tail.
        let a = Csr {
            nrows: 3,
            ncols: 4,
            ptr: vec![0, 2, 2, 5],
            idx: vec![1, 3, 0, 2, 3],
            val: vec![2.0, -1.0, 0.5, 3.0, 4.0],
        };
        let dense = |q: usize, j: usize| -> f32 {
            let (c, v) = a.row(q);
            c.iter()
                .zip(v)
                .find(|(c, _)| **c as usize == j)
                .map_or(0.0, |(_, v)| *v)
        };
        let r = 37;
        let b: Vec<f32> = (0..4 * r).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![f32::NAN; 3 * r];
        a.mul_dense(&b, r, &mut out);
        for q in 0..3 {
            for l in 0..r {
                let want: f32 = (0..4).map(|j| dense(q, j) * b[j * r + l]).sum();
                assert!((out[q * r + l] - want).abs() < 1e-5);
            }
        }
        let t = a.transpose();
        for j in 0..4 {
            for q in 0..3 {
                let (c, v) = t.row(j);
                let got = c
                    .iter()
                    .zip(v)
                    .find(|(c, _)| **c as usize == q)
                    .map_or(0.0, |(_, v)| *v);
                assert_eq!(got, dense(q, j));
            }
            assert!(t.row(j).0.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
