//! The solvers against independent dense computations: expanded losses vs brute force,
//! ∇_G vs finite differences, monotone multiplicative steps.

use fisherkit_npeff::linalg::Csr;
use fisherkit_npeff::prep::Partitioned;
use fisherkit_npeff::solve::{tr_xx, w_step, DiagSolver, LrmSolver, LRM_EPS};
use rand::{Rng, SeedableRng};

/// A random sparse `nrows × ncols` matrix (density ~40 %), plus its dense copy.
fn random_csr(nrows: usize, ncols: usize, nonneg: bool, seed: u64) -> (Csr, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dense = vec![0f64; nrows * ncols];
    let mut x = Csr {
        nrows,
        ncols,
        ptr: vec![0],
        ..Csr::default()
    };
    for q in 0..nrows {
        for j in 0..ncols {
            if rng.random::<f32>() < 0.4 {
                let v: f32 = if nonneg {
                    rng.random_range(0.0..1.0)
                } else {
                    rng.random_range(-1.0..1.0)
                };
                x.idx.push(j as u32);
                x.val.push(v);
                dense[q * ncols + j] = v as f64;
            }
        }
        x.ptr.push(x.val.len());
    }
    (x, dense)
}

fn random_vec(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

const N: usize = 5;
const C: usize = 2;
const M: usize = 7;
const R: usize = 3;

fn lrm_problem() -> (Partitioned, Vec<f64>, f64) {
    let (x, dense) = random_csr(N * C, M, false, 1);
    let trxx = tr_xx(&x, C);
    // Three partitions of widths 3, 3, 1 exercise the cross-partition reductions.
    let parts = Partitioned::new(&x, 3);
    assert_eq!(parts.parts.len(), 3);
    (parts, dense, trxx)
}

fn solver(x: &Partitioned, trxx: f64, orth_reg: f32) -> LrmSolver<'_> {
    LrmSolver {
        x,
        n_examples: N,
        classes: C,
        r: R,
        lr: 1e-3,
        orth_reg,
        tr_xx: trxx,
    }
}

/// Σ_i ‖A_iA_iᵀ − Σ_j W_ij g_j g_jᵀ‖²_F with explicit m×m matrices, in f64.
fn dense_lrm_loss(a: &[f64], w: &[f32], g: &[f64]) -> f64 {
    let mut total = 0.0;
    for i in 0..N {
        for p in 0..M {
            for q in 0..M {
                let f: f64 = (0..C)
                    .map(|k| a[(i * C + k) * M + p] * a[(i * C + k) * M + q])
                    .sum();
                let model: f64 = (0..R)
                    .map(|j| w[i * R + j] as f64 * g[j * M + p] * g[j * M + q])
                    .sum();
                total += (f - model).powi(2);
            }
        }
    }
    total
}

#[test]
fn lrm_expanded_loss_equals_dense_frobenius() {
    let (x, a, trxx) = lrm_problem();
    let s = solver(&x, trxx, 0.0);
    let w = random_vec(N * R, 0.0, 1.0, 2);
    let g = random_vec(R * M, -1.0, 1.0, 3);
    let gt = x.split_transposed(&g, R);
    let got = s.loss(&w, &s.products(&gt));
    let g64: Vec<f64> = g.iter().map(|v| *v as f64).collect();
    let want = dense_lrm_loss(&a, &w, &g64);
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "expanded {got} vs dense {want}"
    );
    // tr_xx alone: the loss with W = 0.
    let zero = vec![0f32; N * R];
    assert!((s.loss(&zero, &s.products(&gt)) - dense_lrm_loss(&a, &zero, &g64)).abs() < 1e-4);
}

#[test]
fn lrm_gradient_matches_finite_differences() {
    for orth_reg in [0.0f32, 0.5] {
        let (x, _, trxx) = lrm_problem();
        let s = solver(&x, trxx, orth_reg);
        let w = random_vec(N * R, 0.0, 1.0, 4);
        let g = random_vec(R * M, -1.0, 1.0, 5);
        let gt = x.split_transposed(&g, R);
        let grad = x.gather_transposed(&s.gradient(&w, &gt, &s.products(&gt)), R);
        let h = 1e-2f32;
        for e in 0..R * M {
            let mut plus = g.clone();
            plus[e] += h;
            let mut minus = g.clone();
            minus[e] -= h;
            let loss = |gg: &[f32]| {
                let t = x.split_transposed(gg, R);
                s.loss(&w, &s.products(&t))
            };
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            assert!(
                (fd - grad[e] as f64).abs() <= 2e-2 * fd.abs().max(1.0),
                "λ = {orth_reg}, entry {e}: analytic {} vs finite difference {fd}",
                grad[e]
            );
        }
    }
}

#[test]
fn lrm_w_step_never_increases_the_loss() {
    let (x, _, trxx) = lrm_problem();
    let s = solver(&x, trxx, 0.0);
    let mut w = random_vec(N * R, 0.0, 1.0, 6);
    let g = random_vec(R * M, -1.0, 1.0, 7);
    let p = s.products(&x.split_transposed(&g, R));
    let mut prev = s.loss(&w, &p);
    for _ in 0..50 {
        w_step(&mut w, &p.n, &p.hh, R, LRM_EPS);
        let now = s.loss(&w, &p);
        assert!(now <= prev + 1e-6 * prev.abs(), "{now} > {prev}");
        prev = now;
    }
}

/// ‖A − WH‖²_F with dense matrices, in f64.
fn dense_d_loss(a: &[f64], n: usize, m: usize, w: &[f32], h: &[f32], r: usize) -> f64 {
    let mut total = 0.0;
    for i in 0..n {
        for j in 0..m {
            let model: f64 = (0..r)
                .map(|l| w[i * r + l] as f64 * h[l * m + j] as f64)
                .sum();
            total += (a[i * m + j] - model).powi(2);
        }
    }
    total
}

#[test]
fn d_loss_matches_dense_and_each_half_step_is_monotone() {
    let (n, m, r) = (12, 20, 4);
    let (x, a) = random_csr(n, m, true, 8);
    let parts = Partitioned::new(&x, 6);
    let s = DiagSolver { x: &parts, r };
    let mut st = s.init(9);
    let h = parts.gather_transposed(&st.ht, r);
    let want = dense_d_loss(&a, n, m, &st.w, &h, r);
    assert!((s.loss_sq(&st) - want).abs() <= 1e-4 * want);
    let mut hh = s.hh(&st.ht);
    let mut prev = s.loss_sq(&st);
    for it in 0..60 {
        s.w_step(&mut st, &hh);
        let after_w = s.loss_sq(&st);
        assert!(
            after_w <= prev * (1.0 + 1e-5),
            "iteration {it}: W step {prev} → {after_w}"
        );
        let (new_hh, after_h) = s.h_step(&mut st);
        // The loss the H step reports is the expanded formula; it must agree with a fresh one.
        assert!((after_h - s.loss_sq(&st)).abs() <= 1e-4 * after_h.max(1e-3));
        assert!(
            after_h <= after_w * (1.0 + 1e-5),
            "iteration {it}: H step {after_w} → {after_h}"
        );
        hh = new_hh;
        prev = after_h;
    }
    let h = parts.gather_transposed(&st.ht, r);
    let dense = dense_d_loss(&a, n, m, &st.w, &h, r);
    assert!(
        (prev - dense).abs() <= 1e-3 * dense.max(1e-3),
        "{prev} vs {dense}"
    );
}
