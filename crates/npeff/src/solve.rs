//! D-NPEFF and LRM-NPEFF iterations on column-partitioned data, and W-only coefficient
//! fitting.
//!
//! Layout: W is n×r row-major and shared; each partition p owns the transposed block of
//! H (or G) for its columns, `ht[p]` (m_p × r row-major). Per step the only quantities
//! summed across partitions are n·c×r products (X·Hᵀ, X·Gᵀ) and r×r Grams — the
//! all-reduces of the multi-device reference. Partitions run on rayon threads and their
//! results are summed in partition order, so any thread count gives identical bits.

use crate::linalg::{dot, gram, mul_small, multiplicative_update, sum_in_order, Csr};
use crate::pef::sparse_dot;
use crate::prep::Partitioned;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// D-NPEFF's multiplicative-update epsilon.
pub const D_EPS: f32 = 1e-8;
/// LRM-NPEFF's W-step epsilon.
pub const LRM_EPS: f32 = 1e-9;
/// Epsilon of D coefficient fitting (spec).
pub const D_COEFF_EPS: f32 = 1e-7;

/// A generator for one row of an initial matrix: row-seeded so the initial state does
/// not depend on partitioning, chunking or threads.
pub fn row_rng(seed: u64, stream: u64, row: usize) -> rand::rngs::StdRng {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (row as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
    rand::rngs::StdRng::seed_from_u64(z ^ (z >> 31))
}

/// `rows × r` matrix with U[0,1) entries.
pub fn uniform_init(rows: usize, r: usize, seed: u64, stream: u64, first_row: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * r];
    out.par_chunks_mut(r).enumerate().for_each(|(i, row)| {
        let mut rng = row_rng(seed, stream, first_row + i);
        row.iter_mut().for_each(|v| *v = rng.random::<f32>());
    });
    out
}

/// `rows × cols` matrix with N(0, σ²) entries (Box–Muller).
pub fn normal_init(rows: usize, cols: usize, sigma: f32, seed: u64, stream: u64) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        let mut rng = row_rng(seed, stream, i);
        for pair in row.chunks_mut(2) {
            let u1 = 1.0 - rng.random::<f64>();
            let u2 = rng.random::<f64>();
            let rad = (-2.0 * u1.ln()).sqrt();
            let th = std::f64::consts::TAU * u2;
            pair[0] = (rad * th.cos()) as f32 * sigma;
            if pair.len() > 1 {
                pair[1] = (rad * th.sin()) as f32 * sigma;
            }
        }
    });
    out
}

/// `x · b` for a CSR matrix and a dense `x.ncols × r` matrix.
fn spmm(x: &Csr, b: &[f32], r: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.nrows * r];
    x.mul_dense(b, r, &mut out);
    out
}

/// One multiplicative W step `W ← W ∘ num ⊘ (W·hh + eps)`.
pub fn w_step(w: &mut [f32], num: &[f32], hh: &[f32], r: usize, eps: f32) {
    let den = mul_small(w, w.len() / r, r, hh);
    multiplicative_update(w, num, &den, eps);
}

/// State of a D-NPEFF fit.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagState {
    pub w: Vec<f32>,
    pub ht: Vec<Vec<f32>>,
}

/// D-NPEFF: min ‖X − WH‖²_F with W, H ≥ 0 by Lee–Seung multiplicative updates.
pub struct DiagSolver<'a> {
    pub x: &'a Partitioned,
    pub r: usize,
}

impl<'a> DiagSolver<'a> {
    pub fn init(&self, seed: u64) -> DiagState {
        let h = uniform_init(self.r, self.x.ncols, seed, 2, 0);
        DiagState {
            w: uniform_init(self.x.nrows, self.r, seed, 1, 0),
            ht: self.x.split_transposed(&h, self.r),
        }
    }

    /// Σ_p X_p·H_pᵀ (n×r).
    fn x_ht(&self, ht: &[Vec<f32>]) -> Vec<f32> {
        let parts: Vec<Vec<f32>> = self
            .x
            .parts
            .par_iter()
            .zip(ht)
            .map(|(p, t)| spmm(&p.by_row, t, self.r))
            .collect();
        sum_in_order(parts)
    }

    /// H Hᵀ = Σ_p H_p H_pᵀ (r×r).
    pub fn hh(&self, ht: &[Vec<f32>]) -> Vec<f32> {
        let parts: Vec<Vec<f32>> = ht
            .par_iter()
            .map(|t| gram(t, t.len() / self.r, self.r))
            .collect();
        sum_in_order(parts)
    }

    /// ‖X − WH‖²_F = ‖X‖² + ⟨WᵀW, HHᵀ⟩ − 2⟨W, XHᵀ⟩, never forming WH.
    pub fn loss_sq(&self, st: &DiagState) -> f64 {
        let wtw = gram(&st.w, self.x.nrows, self.r);
        self.x.frob_sq + dot(&wtw, &self.hh(&st.ht)) - 2.0 * dot(&st.w, &self.x_ht(&st.ht))
    }

    /// W ← W ∘ (XHᵀ) ⊘ (W HHᵀ + eps), given the current HHᵀ.
    pub fn w_step(&self, st: &mut DiagState, hh: &[f32]) {
        let num = self.x_ht(&st.ht);
        w_step(&mut st.w, &num, hh, self.r, D_EPS);
    }

    /// H ← H ∘ (WᵀX) ⊘ (WᵀW H + eps), per partition. Returns the new HHᵀ and the
    /// squared loss after the step.
    pub fn h_step(&self, st: &mut DiagState) -> (Vec<f32>, f64) {
        let r = self.r;
        let wtw = gram(&st.w, self.x.nrows, r);
        let w = &st.w;
        let per_part: Vec<(f64, Vec<f32>)> = self
            .x
            .parts
            .par_iter()
            .zip(st.ht.par_iter_mut())
            .map(|(p, t)| {
                let wtx = spmm(&p.by_col, w, r);
                let den = mul_small(t, p.ncols, r, &wtw);
                multiplicative_update(t, &wtx, &den, D_EPS);
                (dot(&wtx, t), gram(t, p.ncols, r))
            })
            .collect();
        let cross: f64 = per_part.iter().map(|(c, _)| c).sum();
        let hh = sum_in_order(per_part.into_iter().map(|(_, g)| g).collect());
        let loss = self.x.frob_sq + dot(&wtw, &hh) - 2.0 * cross;
        (hh, loss)
    }

    /// One full iteration (W then H); returns the squared loss after it and the new HHᵀ.
    pub fn iterate(&self, st: &mut DiagState, hh: &[f32]) -> (Vec<f32>, f64) {
        self.w_step(st, hh);
        self.h_step(st)
    }
}

/// State of an LRM-NPEFF fit.
#[derive(Clone, Debug, PartialEq)]
pub struct LrmState {
    pub w: Vec<f32>,
    pub gt: Vec<Vec<f32>>,
}

/// Products of G that one joint iteration needs.
pub struct LrmProducts {
    /// X Gᵀ (n·c × r).
    pub ag: Vec<f32>,
    /// S = G Gᵀ (r×r).
    pub s: Vec<f32>,
    /// N_ij = Σ_k AG[(i,k), j]² (n×r).
    pub n: Vec<f32>,
    /// S∘S.
    pub hh: Vec<f32>,
}

/// LRM-NPEFF: F_i ≈ Σ_j W_ij g_j g_jᵀ with W ≥ 0, G free.
pub struct LrmSolver<'a> {
    pub x: &'a Partitioned,
    pub n_examples: usize,
    pub classes: usize,
    pub r: usize,
    pub lr: f32,
    pub orth_reg: f32,
    /// Σ_i ‖A_iᵀA_i‖²_F of the normalised data.
    pub tr_xx: f64,
}

/// Σ_i ‖A_iᵀA_i‖²_F where A_i's class columns are rows i·c..(i+1)·c of `x`
/// (every cross term counted exactly twice, diagonal terms once).
pub fn tr_xx(x: &Csr, classes: usize) -> f64 {
    let per_example: Vec<f64> = (0..x.nrows / classes)
        .into_par_iter()
        .map(|i| {
            let mut sq = 0.0;
            for a in 0..classes {
                let (ia, va) = x.row(i * classes + a);
                for b in a..classes {
                    let (ib, vb) = x.row(i * classes + b);
                    let d = sparse_dot(ia, va, ib, vb);
                    sq += if a == b { d * d } else { 2.0 * d * d };
                }
            }
            sq
        })
        .collect();
    per_example.iter().sum()
}

/// N_ij = Σ_k AG[(i,k), j]².
fn class_energy(ag: &[f32], classes: usize, r: usize) -> Vec<f32> {
    let mut n = vec![0f32; ag.len() / classes];
    n.par_chunks_mut(r).enumerate().for_each(|(i, row)| {
        for k in 0..classes {
            let src = &ag[(i * classes + k) * r..(i * classes + k + 1) * r];
            for (o, v) in row.iter_mut().zip(src) {
                *o += v * v;
            }
        }
    });
    n
}

impl<'a> LrmSolver<'a> {
    pub fn init(&self, seed: u64) -> LrmState {
        let sigma = 1.0 / ((self.r * self.x.ncols) as f32 / 2.0).sqrt();
        let g = normal_init(self.r, self.x.ncols, sigma, seed, 3);
        LrmState {
            w: uniform_init(self.n_examples, self.r, seed, 1, 0),
            gt: self.x.split_transposed(&g, self.r),
        }
    }

    /// AG and S summed over partitions, then N and S∘S.
    pub fn products(&self, gt: &[Vec<f32>]) -> LrmProducts {
        let r = self.r;
        let per_part: Vec<(Vec<f32>, Vec<f32>)> = self
            .x
            .parts
            .par_iter()
            .zip(gt)
            .map(|(p, t)| (spmm(&p.by_row, t, r), gram(t, p.ncols, r)))
            .collect();
        let (ags, ss): (Vec<_>, Vec<_>) = per_part.into_iter().unzip();
        let ag = sum_in_order(ags);
        let s = sum_in_order(ss);
        let n = class_energy(&ag, self.classes, r);
        let hh = s.iter().map(|v| v * v).collect();
        LrmProducts { ag, s, n, hh }
    }

    /// λ‖S − (2/r)I‖²_F.
    fn orth_penalty(&self, s: &[f32]) -> f64 {
        if self.orth_reg == 0.0 {
            return 0.0;
        }
        let target = 2.0 / self.r as f64;
        let sq: f64 = s
            .iter()
            .enumerate()
            .map(|(e, v)| {
                let d = *v as f64 - if e % (self.r + 1) == 0 { target } else { 0.0 };
                d * d
            })
            .sum();
        self.orth_reg as f64 * sq
    }

    /// tr_xx − 2⟨W, N⟩ + ⟨WᵀW, S∘S⟩ (+ the orthogonality penalty).
    pub fn loss(&self, w: &[f32], p: &LrmProducts) -> f64 {
        let wtw = gram(w, self.n_examples, self.r);
        self.tr_xx - 2.0 * dot(w, &p.n) + dot(&wtw, &p.hh) + self.orth_penalty(&p.s)
    }

    /// ∇_G in the transposed per-partition layout:
    /// Gᵀ·[4((WᵀW)∘S) + 4λ(S − (2/r)I)] − 4 Xᵀ(W⊙AG).
    pub fn gradient(&self, w: &[f32], gt: &[Vec<f32>], p: &LrmProducts) -> Vec<Vec<f32>> {
        let r = self.r;
        let wtw = gram(w, self.n_examples, r);
        let target = 2.0 / r as f32;
        let m: Vec<f32> = wtw
            .iter()
            .zip(&p.s)
            .enumerate()
            .map(|(e, (a, s))| {
                let eye = if e % (r + 1) == 0 { target } else { 0.0 };
                4.0 * a * s + 4.0 * self.orth_reg * (s - eye)
            })
            .collect();
        let mut wag = p.ag.clone();
        wag.par_chunks_mut(r).enumerate().for_each(|(q, row)| {
            let wi = &w[(q / self.classes) * r..(q / self.classes + 1) * r];
            row.iter_mut().zip(wi).for_each(|(v, wv)| *v *= wv);
        });
        self.x
            .parts
            .par_iter()
            .zip(gt)
            .map(|(part, t)| {
                let xt_b = spmm(&part.by_col, &wag, r);
                let mut grad = mul_small(t, part.ncols, r, &m);
                grad.iter_mut().zip(&xt_b).for_each(|(g, b)| *g -= 4.0 * b);
                grad
            })
            .collect()
    }

    /// One iteration: products of the current G, then (if `update_w`) the W step, then
    /// the G step. Returns the loss at the start of the iteration.
    pub fn iterate(&self, st: &mut LrmState, update_w: bool) -> f64 {
        let p = self.products(&st.gt);
        let loss = self.loss(&st.w, &p);
        if update_w {
            w_step(&mut st.w, &p.n, &p.hh, self.r, LRM_EPS);
        }
        let grad = self.gradient(&st.w, &st.gt, &p);
        st.gt.par_iter_mut().zip(&grad).for_each(|(t, g)| {
            t.iter_mut().zip(g).for_each(|(v, d)| *v -= self.lr * d);
        });
        loss
    }
}

/// W-only multiplicative fitting of new examples against a fixed dictionary.
/// `x` holds the examples' rows (one per example for diagonal PEFs, c per example for
/// low-rank ones: `low_rank_classes = Some(c)`), `dict_t` is the fixed H or G transposed
/// (m × r). Rows are seeded by global example index `first_example + i`, so chunking
/// does not change the result.
pub fn fit_coefficients(
    x: &Csr,
    low_rank_classes: Option<usize>,
    dict_t: &[f32],
    r: usize,
    iters: usize,
    seed: u64,
    first_example: usize,
) -> Vec<f32> {
    let classes = low_rank_classes.unwrap_or(1);
    let n = x.nrows / classes;
    let xd = spmm(x, dict_t, r);
    let gram_d = gram(dict_t, x.ncols, r);
    let (num, hh, eps) = if low_rank_classes.is_some() {
        let hh: Vec<f32> = gram_d.iter().map(|v| v * v).collect();
        (class_energy(&xd, classes, r), hh, LRM_EPS)
    } else {
        (xd, gram_d, D_COEFF_EPS)
    };
    let mut w = uniform_init(n, r, seed, 1, first_example);
    for _ in 0..iters {
        w_step(&mut w, &num, &hh, r, eps);
    }
    w
}
