//! Decomposition-time preprocessing: per-example normalisation, column pruning with the
//! kept→original map, and the column partitioning every solver works on.

use crate::linalg::Csr;
use crate::pef::{PefKind, PefRows};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// The normalised, pruned sparse matrix: rows are examples (diagonal) or
/// (example, class) pairs (low-rank), columns are kept parameters.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub kind: PefKind,
    pub n_examples: usize,
    pub rows_per_example: usize,
    pub x: Csr,
    /// kept column → original flat parameter index (ascending).
    pub kept: Vec<u64>,
    /// Examples with no non-zero left after pruning (kept as zero rows).
    pub empty_examples: usize,
}

/// Normalise each example (diagonal: v/(‖f‖+1e-9); low-rank: A/sqrt(max(‖AAᵀ‖_F,1e-12)))
/// and drop parameters with fewer than `min_nnz` non-zeros over all rows.
pub fn prepare(kind: PefKind, rows: &PefRows, min_nnz: usize) -> Result<Prepared> {
    let mut sorted: Vec<u64> = rows.indices.clone();
    sorted.par_sort_unstable();
    let mut kept = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let end = start + sorted[start..].partition_point(|&j| j == sorted[start]);
        if end - start >= min_nnz.max(1) {
            kept.push(sorted[start]);
        }
        start = end;
    }
    drop(sorted);
    ensure!(
        !kept.is_empty(),
        "no parameter has at least {min_nnz} non-zeros across the examples: nothing to decompose"
    );
    ensure!(
        kept.len() <= u32::MAX as usize,
        "{} kept parameters exceed the u32 column index range",
        kept.len()
    );
    Ok(project(kind, rows, &kept))
}

/// Map new examples onto an existing kept-column set (for coefficient fitting):
/// entries of parameters the decomposition dropped are ignored.
pub fn project(kind: PefKind, rows: &PefRows, kept: &[u64]) -> Prepared {
    let c = rows.rows_per_example;
    let nrows = rows.n_examples * c;
    let built: Vec<(Vec<u32>, Vec<f32>)> = (0..nrows)
        .into_par_iter()
        .map(|q| {
            let (idx, val) = rows.row(q);
            let nrm = rows.norms[q / c];
            let s = match kind {
                PefKind::Diagonal => 1.0 / (nrm + 1e-9),
                PefKind::LowRank => 1.0 / nrm.max(1e-12).sqrt(),
            };
            let mut pairs: Vec<(u32, f32)> = idx
                .iter()
                .zip(val)
                .filter_map(|(&j, &v)| kept.binary_search(&j).ok().map(|k| (k as u32, v * s)))
                .collect();
            pairs.sort_unstable_by_key(|p| p.0);
            pairs.into_iter().unzip()
        })
        .collect();
    let mut x = Csr {
        nrows,
        ncols: kept.len(),
        ptr: Vec::with_capacity(nrows + 1),
        idx: Vec::with_capacity(rows.values.len()),
        val: Vec::with_capacity(rows.values.len()),
    };
    x.ptr.push(0);
    for (idx, val) in built {
        x.idx.extend(idx);
        x.val.extend(val);
        x.ptr.push(x.val.len());
    }
    let empty_examples = (0..rows.n_examples)
        .filter(|i| x.ptr[i * c] == x.ptr[(i + 1) * c])
        .count();
    Prepared {
        kind,
        n_examples: rows.n_examples,
        rows_per_example: c,
        x,
        kept: kept.to_vec(),
        empty_examples,
    }
}

/// One column block of X: the unit of distribution. It owns its slice of X in both
/// orientations (rows for X·B products, columns for Xᵀ·B products).
#[derive(Clone, Debug)]
pub struct Partition {
    pub first_col: usize,
    pub ncols: usize,
    /// nrows × ncols (local column indices).
    pub by_row: Csr,
    /// ncols × nrows: the transpose, for Xᵀ·B.
    pub by_col: Csr,
}

/// X split into fixed column blocks. The split depends only on the data and
/// `cols_per_partition`, never on the thread count, so results are reproducible.
#[derive(Clone, Debug)]
pub struct Partitioned {
    pub nrows: usize,
    pub ncols: usize,
    pub parts: Vec<Partition>,
    pub frob_sq: f64,
}

impl Partitioned {
    pub fn new(x: &Csr, cols_per_partition: usize) -> Self {
        let width = cols_per_partition.max(1);
        let starts: Vec<usize> = (0..x.ncols).step_by(width).collect();
        let parts = starts
            .par_iter()
            .map(|&first| {
                let last = (first + width).min(x.ncols);
                let mut by_row = Csr {
                    nrows: x.nrows,
                    ncols: last - first,
                    ptr: Vec::with_capacity(x.nrows + 1),
                    ..Csr::default()
                };
                by_row.ptr.push(0);
                for q in 0..x.nrows {
                    let (idx, val) = x.row(q);
                    let a = idx.partition_point(|&j| (j as usize) < first);
                    let b = idx.partition_point(|&j| (j as usize) < last);
                    by_row
                        .idx
                        .extend(idx[a..b].iter().map(|&j| j - first as u32));
                    by_row.val.extend_from_slice(&val[a..b]);
                    by_row.ptr.push(by_row.val.len());
                }
                let by_col = by_row.transpose();
                Partition {
                    first_col: first,
                    ncols: last - first,
                    by_row,
                    by_col,
                }
            })
            .collect();
        Self {
            nrows: x.nrows,
            ncols: x.ncols,
            parts,
            frob_sq: x.frob_sq(),
        }
    }

    pub fn nnz(&self) -> usize {
        self.parts.iter().map(|p| p.by_row.nnz()).sum()
    }

    /// Split a row-major `r × ncols` matrix into per-partition transposed blocks
    /// (`ncols_p × r` row-major), the layout the kernels stream.
    pub fn split_transposed(&self, full: &[f32], r: usize) -> Vec<Vec<f32>> {
        self.parts
            .iter()
            .map(|p| {
                let mut t = vec![0f32; p.ncols * r];
                for j in 0..p.ncols {
                    for l in 0..r {
                        t[j * r + l] = full[l * self.ncols + p.first_col + j];
                    }
                }
                t
            })
            .collect()
    }

    /// Inverse of [`split_transposed`](Self::split_transposed).
    pub fn gather_transposed(&self, blocks: &[Vec<f32>], r: usize) -> Vec<f32> {
        let mut full = vec![0f32; r * self.ncols];
        for (p, t) in self.parts.iter().zip(blocks) {
            for j in 0..p.ncols {
                for l in 0..r {
                    full[l * self.ncols + p.first_col + j] = t[j * r + l];
                }
            }
        }
        full
    }
}
