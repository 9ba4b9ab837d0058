//! The CPU side every part's backward pass shares: parameters bound by identity to their
//! slot in one flat gradient, and matrix products on row-major slices (the `gemm` kernels
//! burn-flex uses, called directly).
//!
//! A model's parameter list ([`fisherkit_model::LogProbModel::named_params`], produced by
//! the same visitor that names parameters for checkpoints) is the only source of slots:
//! [`Binder::new`] numbers the parameters in that order and each part looks its own
//! parameters up by their burn [`ParamId`], so a weight used by several layers (a shared
//! block, a tied output head) has one slot and its gradients add up there.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use fisherkit_model::burn::backend::flex::FlexTensor;
use fisherkit_model::burn::module::{Param, ParamId};
use fisherkit_model::burn::tensor::Tensor;
use fisherkit_model::host::{cpu_f32, flex_values};
use fisherkit_model::{matmul_transposed, LogProbModel, ParamAccess, ParamRef, FEW_ROWS};

/// Products with at least this many multiply-adds run on all cores (burn-flex's
/// threshold); smaller ones on the calling thread.
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// One parameter as the CPU passes see it: its values, read in place from the model's
/// CPU tensor, and where its gradient goes in the flat vector.
pub struct Weight {
    tensor: FlexTensor,
    /// `[rows, cols]`; a vector is one row.
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    /// Position in the parameter list (index into [`Gradient::written`]).
    index: usize,
    /// `[cols, rows]` row-major copy, made on first use by a projection's forward
    /// product: gemm runs `x · Wᵀ` about twice as fast with both operands row-major.
    transposed: OnceLock<Vec<f32>>,
}

impl Weight {
    pub fn values(&self) -> &[f32] {
        flex_values(&self.tensor, self.len())
    }

    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The transposed copy (made once).
    pub fn transposed(&self) -> &[f32] {
        self.transposed
            .get_or_init(|| transpose(self.values(), self.rows, self.cols))
    }

    /// `x · Wᵀ` for `x` `[rows, cols]`: `[rows, self.rows]`. Projections (`transposed`)
    /// read the transposed copy; other matrices (the large output head) stream the
    /// weight once when there are few rows.
    pub fn product(&self, x: &[f32], rows: usize, transposed: bool) -> Vec<f32> {
        let weight_t = if transposed {
            mat(self.transposed(), self.cols, self.rows)
        } else if rows <= FEW_ROWS {
            return matmul_transposed(x, rows, self.values(), self.rows, self.cols);
        } else {
            mat(self.values(), self.rows, self.cols).t()
        };
        let mut out = vec![0.0; rows * self.rows];
        matmul(&mut out, mat(x, rows, self.cols), weight_t, false);
        out
    }

    /// `dx (+)= dy · W`: the input gradient of `y = x · Wᵀ`.
    pub fn input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32], accumulate: bool) {
        matmul(
            dx,
            mat(dy, rows, self.rows),
            mat(self.values(), self.rows, self.cols),
            accumulate,
        );
    }
}

/// Binds parts to the CPU tensors of a model's parameters, by parameter identity.
pub struct Binder {
    weights: HashMap<ParamId, Arc<Weight>>,
    names: Vec<String>,
    num_params: usize,
}

impl Binder {
    /// `None` when a parameter is not a contiguous f32 tensor of the CPU backend (GPU
    /// devices and reduced precision keep burn's autodiff).
    pub fn new<M: LogProbModel + ?Sized>(model: &M) -> Option<Self> {
        let specs = model.param_specs();
        let mut weights = HashMap::new();
        let mut names = Vec::with_capacity(specs.len());
        for (index, ((name, param), spec)) in
            model.named_params().into_iter().zip(&specs).enumerate()
        {
            let (id, tensor) = match param {
                ParamRef::Vector(p) => (p.id, cpu_f32(p.val())?),
                ParamRef::Matrix(p) => (p.id, cpu_f32(p.val())?),
            };
            let (rows, cols) = match spec.shape[..] {
                [n] => (1, n),
                [r, c] => (r, c),
                _ => return None,
            };
            names.push(name);
            weights.insert(
                id,
                Arc::new(Weight {
                    tensor,
                    rows,
                    cols,
                    offset: spec.offset,
                    index,
                    transposed: OnceLock::new(),
                }),
            );
        }
        Some(Self {
            weights,
            names,
            num_params: specs.iter().map(|s| s.numel()).sum(),
        })
    }

    /// The bound weight of `param`. A part's parameter missing from the model's list is a
    /// bug in the model's visitor, not a user error.
    pub fn weight<const D: usize>(&self, param: &Param<Tensor<D>>) -> Arc<Weight> {
        self.weights.get(&param.id).cloned().unwrap_or_else(|| {
            panic!(
                "a part's parameter is missing from the model's parameter list ({} listed: {}…)",
                self.names.len(),
                self.names.first().map(String::as_str).unwrap_or("")
            )
        })
    }

    /// A zero gradient over all parameters.
    pub fn gradient(&self) -> Gradient {
        Gradient {
            values: vec![0.0; self.num_params],
            written: vec![false; self.names.len()],
        }
    }
}

/// The flat gradient being written: each weight's first contribution overwrites its
/// (zero) slot, later ones add.
pub struct Gradient {
    pub values: Vec<f32>,
    written: Vec<bool>,
}

impl Gradient {
    fn slot(&mut self, w: &Weight) -> (&mut [f32], bool) {
        let accumulate = std::mem::replace(&mut self.written[w.index], true);
        (&mut self.values[w.offset..w.offset + w.len()], accumulate)
    }

    /// The gradient of `y = x · Wᵀ` with respect to W: `dyᵀ · x`.
    pub fn linear(&mut self, w: &Weight, x: &[f32], dy: &[f32], rows: usize) {
        let (slot, accumulate) = self.slot(w);
        matmul(
            slot,
            mat(dy, rows, w.rows).t(),
            mat(x, rows, w.cols),
            accumulate,
        );
    }

    /// A slot to add into directly (norm weights, biases, tables, embeddings).
    pub fn add(&mut self, w: &Weight) -> &mut [f32] {
        self.written[w.index] = true;
        &mut self.values[w.offset..w.offset + w.len()]
    }
}

/// `[cols, rows]` row-major transpose of a `[rows, cols]` matrix, in cache-sized tiles.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 64;
    let mut out = vec![0.0; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

pub fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// A read-only strided matrix: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A row-major `[rows, cols]` matrix.
pub fn mat(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    assert_eq!(data.len(), rows * cols, "matrix is not [{rows}, {cols}]");
    View {
        data,
        rows,
        cols,
        row_stride: cols,
        col_stride: 1,
    }
}

impl<'a> View<'a> {
    pub fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            data: self.data,
        }
    }

    /// Columns `first..first + count` (one attention head of a `[len, inner]` matrix).
    pub fn columns(self, first: usize, count: usize) -> View<'a> {
        assert!(first + count <= self.cols);
        View {
            data: &self.data[first * self.col_stride..],
            cols: count,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), `dst` row-major `[a.rows, b.cols]`.
pub fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    assert!(a.last_index() < a.data.len() && b.last_index() < b.data.len());
    let parallelism = if m * n * k >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm reads or writes inside the
    // slices; `dst` is exclusively borrowed and does not overlap `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
