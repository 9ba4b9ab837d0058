//! `x · Wᵀ` for PyTorch-layout `[out, in]` weights, the projection every model here is
//! made of.
//!
//! Large products go to the backend's matmul. Products with a handful of rows — one
//! decoding step of a batch — are the exception: the backend's gemm packs the whole weight
//! matrix into its panel layout on every call, which for an inference step costs as much
//! as the multiplication itself. On the CPU backend and without gradient tracking those
//! products are computed here straight from the row-major weight: each weight row is read
//! once and dotted with every input row while it sits in L1, so a step runs at the speed
//! the weights stream from memory.

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Above this many input rows the backend's gemm is faster (its packing cost is
/// amortised over the rows).
pub const FEW_ROWS: usize = 32;

/// Weight rows per parallel task: large enough to amortise scheduling, small enough to
/// balance the two-to-many cores.
const ROWS_PER_TASK: usize = 256;

/// `x · weightᵀ`: `x` is `[rows, in]`, `weight` is `[out, in]`; returns `[rows, out]`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    if x.dims()[0] <= FEW_ROWS {
        if let Some(out) = few_rows_on_cpu(&x, &weight) {
            return out;
        }
    }
    x.matmul(weight.transpose())
}

/// The few-row product when both operands are untracked f32 tensors of the CPU backend
/// and the weight is contiguous; `None` otherwise (autodiff, GPU, other dtypes).
fn few_rows_on_cpu(x: &Tensor<2>, weight: &Tensor<2>) -> Option<Tensor<2>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let w = crate::host::cpu_f32(weight.clone())?;
    let [out_dim, in_dim] = weight.dims();
    let w_data = crate::host::flex_values(&w, out_dim * in_dim);
    let x_flex = x.clone().try_into_primitive::<Flex>().ok()?;
    let rows = x.dims()[0];
    let x_data = x_flex.into_data().try_into_vec::<f32>().ok()?;
    let out = matmul_transposed(&x_data, rows, w_data, out_dim, in_dim);
    let out = FlexTensor::from_data(TensorData::new(out, [rows, out_dim]));
    Some(Tensor::from_primitive::<Flex>(out))
}

/// `x · wᵀ` for row-major `x` `[rows, k]` and `w` `[n, k]`, returned row-major `[rows, n]`.
pub fn matmul_transposed(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not [{rows}, {k}]");
    assert_eq!(w.len(), n * k, "w is not [{n}, {k}]");
    // Rows are padded to a multiple of the tile height with zeros, whose results are
    // dropped, so the kernel only handles full tiles of x.
    let padded_rows = rows.div_ceil(X_TILE) * X_TILE;
    let mut x_padded = x.to_vec();
    x_padded.resize(padded_rows * k, 0.0);
    // Each task fills an `[n_block, padded_rows]` block (weight row major), transposed
    // into the output afterwards.
    let mut blocks = vec![0.0f32; n * padded_rows];
    blocks
        .par_chunks_mut(ROWS_PER_TASK * padded_rows)
        .enumerate()
        .for_each(|(task, block)| {
            let first = task * ROWS_PER_TASK;
            let count = block.len() / padded_rows;
            dot_block(
                &x_padded,
                padded_rows,
                &w[first * k..(first + count) * k],
                k,
                block,
            );
        });
    let mut out = vec![0.0f32; rows * n];
    for (j, block_row) in blocks.chunks_exact(padded_rows).enumerate() {
        for (i, &value) in block_row[..rows].iter().enumerate() {
            out[i * n + j] = value;
        }
    }
    out
}

/// Input rows per tile.
const X_TILE: usize = 4;
/// Weight rows per tile.
const W_TILE: usize = 4;
/// How many weight rows ahead the same columns are prefetched while a tile is computed:
/// the weights stream from memory once, and the hardware prefetcher alone does not keep
/// enough reads in flight when the arithmetic per row grows with the input rows.
const PREFETCH_ROWS: usize = 2 * W_TILE;

/// Dispatches to the widest SIMD the CPU has (AVX-512 only in builds with the `avx512`
/// feature, like the backend's gemm); the kernel is one generic body over [`Lanes`],
/// compiled per target feature set.
fn dot_block(x: &[f32], rows: usize, w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { x86::dot_block_avx512(x, rows, w, k, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_block_avx2(x, rows, w, k, out) };
        }
    }
    // SAFETY: scalar lanes need no CPU feature.
    unsafe { dot_block_generic::<f32>(x, rows, w, k, out) }
}

/// A SIMD register of f32 lanes. The methods are `unsafe` because the vector types need
/// their target feature: callers run inside a function compiled with it.
trait Lanes: Copy {
    const WIDTH: usize;
    unsafe fn zero() -> Self;
    /// Loads `WIDTH` values from `values[0..WIDTH]`.
    unsafe fn load(values: &[f32]) -> Self;
    /// `self * b + acc`, fused.
    unsafe fn mul_add(self, b: Self, acc: Self) -> Self;
    unsafe fn sum(self) -> f32;
}

/// Hints that `values[0]` will be read soon; independent of the register width (SSE's
/// prefetch is part of every x86-64 CPU; elsewhere a no-op).
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            values.as_ptr().cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

impl Lanes for f32 {
    const WIDTH: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        0.0
    }
    #[inline(always)]
    unsafe fn load(values: &[f32]) -> Self {
        values[0]
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, acc: Self) -> Self {
        f32::mul_add(self, b, acc)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        self
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{dot_block_generic, Lanes};

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Lanes for Avx512 {
        const WIDTH: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(values: &[f32]) -> Self {
            debug_assert!(values.len() >= Self::WIDTH);
            Avx512(unsafe { _mm512_loadu_ps(values.as_ptr()) })
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, acc: Self) -> Self {
            Avx512(_mm512_fmadd_ps(self.0, b.0, acc.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Lanes for Avx2 {
        const WIDTH: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(values: &[f32]) -> Self {
            debug_assert!(values.len() >= Self::WIDTH);
            Avx2(unsafe { _mm256_loadu_ps(values.as_ptr()) })
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, acc: Self) -> Self {
            Avx2(_mm256_fmadd_ps(self.0, b.0, acc.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let half = _mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps(self.0, 1),
            );
            let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn dot_block_avx512(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        out: &mut [f32],
    ) {
        unsafe { dot_block_generic::<Avx512>(x, rows, w, k, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_block_avx2(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        out: &mut [f32],
    ) {
        unsafe { dot_block_generic::<Avx2>(x, rows, w, k, out) }
    }
}

/// `out[j * rows + i] = x_i · w_j` for every input row `i` (`rows` a multiple of
/// [`X_TILE`]) and weight row `j` of the block. Each group of [`W_TILE`] weight rows is
/// dotted with all input rows before moving on, so it is read from memory once.
#[inline(always)]
unsafe fn dot_block_generic<L: Lanes>(
    x: &[f32],
    rows: usize,
    w: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let n = w.len() / k;
    let mut j = 0;
    while j < n {
        let w_rows = W_TILE.min(n - j);
        for i in (0..rows).step_by(X_TILE) {
            let x_tile: [&[f32]; X_TILE] =
                std::array::from_fn(|r| &x[(i + r) * k..(i + r + 1) * k]);
            let mut sums = [[0.0f32; X_TILE]; W_TILE];
            let row = |r: usize| &w[r * k..(r + 1) * k];
            // Empty past the end of the block: nothing to prefetch.
            let ahead = |r: usize| {
                w.get((r + PREFETCH_ROWS) * k..(r + PREFETCH_ROWS + 1) * k)
                    .unwrap_or(&[])
            };
            if w_rows == W_TILE {
                let w_tile: [&[f32]; W_TILE] = std::array::from_fn(|c| row(j + c));
                let w_ahead: [&[f32]; W_TILE] = std::array::from_fn(|c| ahead(j + c));
                unsafe { tile::<L, W_TILE>(&x_tile, &w_tile, &w_ahead, &mut sums) };
            } else {
                for (c, row_sums) in sums.iter_mut().take(w_rows).enumerate() {
                    let mut one = [[0.0f32; X_TILE]; 1];
                    unsafe { tile::<L, 1>(&x_tile, &[row(j + c)], &[&[]], &mut one) };
                    *row_sums = one[0];
                }
            }
            for (c, row_sums) in sums.iter().take(w_rows).enumerate() {
                out[(j + c) * rows + i..(j + c) * rows + i + X_TILE].copy_from_slice(row_sums);
            }
        }
        j += w_rows;
    }
}

/// Dot products of [`X_TILE`] input rows with `WR` weight rows: one register of partial
/// sums per pair, reduced at the end, and a scalar tail when `k` is not a multiple of the
/// register width. `w_ahead` are the rows to prefetch (empty slices for none).
#[inline(always)]
unsafe fn tile<L: Lanes, const WR: usize>(
    x: &[&[f32]; X_TILE],
    w: &[&[f32]; WR],
    w_ahead: &[&[f32]; WR],
    sums: &mut [[f32; X_TILE]; WR],
) {
    let k = x[0].len();
    let body = k - k % L::WIDTH;
    let mut acc = [[unsafe { L::zero() }; X_TILE]; WR];
    let mut p = 0;
    while p < body {
        let xs: [L; X_TILE] = std::array::from_fn(|r| unsafe { L::load(&x[r][p..]) });
        for c in 0..WR {
            if p < w_ahead[c].len() {
                prefetch(&w_ahead[c][p..]);
            }
            let wv = unsafe { L::load(&w[c][p..]) };
            for r in 0..X_TILE {
                acc[c][r] = unsafe { xs[r].mul_add(wv, acc[c][r]) };
            }
        }
        p += L::WIDTH;
    }
    for c in 0..WR {
        for r in 0..X_TILE {
            let mut total = unsafe { acc[c][r].sum() };
            for q in body..k {
                total = x[r][q].mul_add(w[c][q], total);
            }
            sums[c][r] = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; rows * n];
        for i in 0..rows {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|q| x[i * k + q] as f64 * w[j * k + q] as f64)
                    .sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32)
                    - 0.5
            })
            .collect()
    }

    /// Every tile-edge case: rows and weight rows off the tile sizes, `k` off the lane
    /// widths, more weight rows than one parallel task.
    #[test]
    fn matches_the_f64_product_on_ragged_shapes() {
        for &(rows, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 513, 64),
            (5, 6, 33),
            (32, 300, 17),
            (2, 1030, 100),
        ] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            let got = matmul_transposed(&x, rows, &w, n, k);
            let want = reference(&x, rows, &w, n, k);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "{rows}x{n}x{k}: {g} vs {e}"
                );
            }
        }
    }

    /// `matmul_transposed` takes the widest kernel the CPU has; the narrower ones (other
    /// CPUs) are checked here directly, block by block, against the same f64 reference.
    #[test]
    fn every_kernel_width_this_cpu_can_run_agrees() {
        let (rows, n, k) = (8, 37, 53);
        let x = values(rows * k, 7);
        let w = values(n * k, 8);
        let want = reference(&x, rows, &w, n, k);
        type Kernel = fn(&[f32], usize, &[f32], usize, &mut [f32]);
        let mut kernels: Vec<(&str, Kernel)> = vec![("scalar", |x, rows, w, k, out| unsafe {
            dot_block_generic::<f32>(x, rows, w, k, out)
        })];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("avx2", |x, rows, w, k, out| unsafe {
                    x86::dot_block_avx2(x, rows, w, k, out)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512", |x, rows, w, k, out| unsafe {
                    x86::dot_block_avx512(x, rows, w, k, out)
                }));
            }
        }
        for (name, kernel) in kernels {
            // Block layout: out[j * rows + i].
            let mut out = vec![0.0f32; n * rows];
            kernel(&x, rows, &w, k, &mut out);
            for i in 0..rows {
                for j in 0..n {
                    let (g, e) = (out[j * rows + i] as f64, want[i * n + j]);
                    assert!(
                        (g - e).abs() < 1e-5 * (1.0 + e.abs()),
                        "{name} ({i}, {j}): {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Tracked tensors keep the backend's matmul, which has a backward pass.
    #[test]
    fn autodiff_tensors_take_the_backend_path() {
        let device = burn::tensor::Device::flex().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(values(2 * 8, 5), [2, 8]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(values(3 * 8, 6), [3, 8]), &device)
            .require_grad();
        assert!(few_rows_on_cpu(&x, &w).is_none());
        let grads = linear(x, w.clone()).sum().backward();
        assert!(w.grad(&grads).is_some());
    }

    /// The tensor entry point agrees with the backend's matmul, on the fast path (few
    /// rows) and on the gemm path.
    #[test]
    fn linear_agrees_with_the_backend_matmul() {
        let device = burn::tensor::Device::flex();
        for rows in [3, FEW_ROWS + 5] {
            let x =
                Tensor::<2>::from_data(TensorData::new(values(rows * 40, 3), [rows, 40]), &device);
            let w = Tensor::<2>::from_data(TensorData::new(values(70 * 40, 4), [70, 40]), &device);
            assert!(
                few_rows_on_cpu(&x, &w).is_some(),
                "untracked f32 on the CPU"
            );
            let fast = linear(x.clone(), w.clone())
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            let gemm = x
                .matmul(w.transpose())
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            for (a, b) in fast.iter().zip(&gemm) {
                assert!((a - b).abs() < 1e-5, "{rows} rows: {a} vs {b}");
            }
        }
    }
}
