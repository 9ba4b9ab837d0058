//! The Fisher math against closed forms, finite differences and brute force, on small
//! models implemented twice (burn autodiff; plain f64).

mod common;

use common::{Dims, Example, TestModel};
use fisherkit_fisher::{
    dataset_fisher, example_classes, example_diagonal, example_diagonal_streamed, top_k_diagonal,
    top_k_low_rank, ClassSelection, FisherRun, GradientModel, Mode,
};

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// The diagonal PEF over every class, as `fisherkit pefs` and the exact Fisher compute it.
fn diagonal(model: &TestModel, example: &Example) -> Vec<f32> {
    let log_probs = model.log_probs(example).unwrap();
    example_diagonal_streamed(model, example, &log_probs, &ClassSelection::all())
        .unwrap()
        .expect("finite")
}

/// Softmax-linear: ∇_W log p_c = (e_c − p) xᵀ and ∇_b log p_c = e_c − p, so
/// Σ_c p_c g_c g_cᵀ = (diag(p) − ppᵀ) ⊗ [x;1][x;1]ᵀ (in the W-then-b layout).
#[test]
fn softmax_linear_matches_the_closed_form() {
    let dims = Dims {
        input: 4,
        hidden: None,
        classes: 5,
    };
    let model = TestModel::new(dims, 11);
    for example in model.examples(3, 1, 5) {
        let x = &example.rows[0];
        let p: Vec<f64> = model.log_probs_f64(&model.theta, &example)[0]
            .iter()
            .map(|l| l.exp())
            .collect();
        let (c, d) = (dims.classes, dims.input);
        // Flat index of W[i, j] is i*d + j; of b[i] is c*d + i. Feature of column j is
        // x_j for weights and 1 for the bias.
        let coord = |k: usize| {
            if k < c * d {
                (k / d, x[k % d])
            } else {
                (k - c * d, 1.0)
            }
        };
        let n = c * d + c;
        let closed = |a: usize, b: usize| {
            let ((i, xi), (j, xj)) = (coord(a), coord(b));
            let cov = if i == j { p[i] } else { 0.0 } - p[i] * p[j];
            cov * xi * xj
        };
        let fisher = example_classes(&model, &example, &ClassSelection::all()).unwrap();
        assert_eq!(fisher.classes.len(), c);
        let diag_want: Vec<f64> = (0..n).map(|k| closed(k, k)).collect();
        assert_close(
            &diagonal(&model, &example),
            &diag_want,
            1e-6,
            "diagonal PEF",
        );
        let a = fisher.low_rank();
        let mut aat = Vec::with_capacity(n * n);
        let mut want = Vec::with_capacity(n * n);
        for r in 0..n {
            for s in 0..n {
                aat.push(a.iter().map(|col| col[r] * col[s]).sum::<f32>());
                want.push(closed(r, s));
            }
        }
        assert_close(&aat, &want, 1e-6, "A Aᵀ");
    }
}

/// The full Jacobian of log p_t(c) by central differences in f64.
fn finite_difference_jacobian(model: &TestModel, example: &Example) -> Vec<Vec<Vec<f64>>> {
    let h = 1e-5;
    let base = model.log_probs_f64(&model.theta, example);
    let mut jac = vec![vec![vec![0.0; model.theta.len()]; base[0].len()]; base.len()];
    for k in 0..model.theta.len() {
        let mut plus = model.theta.clone();
        let mut minus = model.theta.clone();
        plus[k] += h;
        minus[k] -= h;
        let (lp, lm) = (
            model.log_probs_f64(&plus, example),
            model.log_probs_f64(&minus, example),
        );
        for t in 0..base.len() {
            for c in 0..base[t].len() {
                jac[t][c][k] = (lp[t][c] - lm[t][c]) / (2.0 * h);
            }
        }
    }
    jac
}

#[test]
fn per_example_fishers_match_finite_differences() {
    let dims = Dims {
        input: 3,
        hidden: Some(4),
        classes: 3,
    };
    let model = TestModel::new(dims, 3);
    for example in model.examples(2, 2, 9) {
        let jac = finite_difference_jacobian(&model, &example);
        let lp = model.log_probs_f64(&model.theta, &example);
        let n = model.theta.len();
        let mut diag = vec![0.0; n];
        for t in 0..lp.len() {
            for c in 0..lp[t].len() {
                let p = lp[t][c].exp();
                for k in 0..n {
                    diag[k] += p * jac[t][c][k] * jac[t][c][k];
                }
            }
        }
        let fisher = example_classes(&model, &example, &ClassSelection::all()).unwrap();
        assert_eq!(fisher.classes.len(), 6, "every class at both positions");
        // Columns come in the order of the kept classes (by position, most probable first).
        let columns: Vec<Vec<f64>> = fisher
            .classes
            .iter()
            .map(|class| {
                let (t, c) = class.pick;
                let p = lp[t][c].exp();
                assert!((class.prob - p).abs() < 1e-6);
                jac[t][c].iter().map(|g| p.sqrt() * g).collect()
            })
            .collect();
        assert_close(&diagonal(&model, &example), &diag, 1e-6, "diagonal PEF");
        let factor = fisher.low_rank();
        assert_eq!(factor.len(), columns.len());
        for (got, want) in factor.iter().zip(&columns) {
            assert_close(got, want, 1e-6, "low-rank factor column");
        }
        // The sampled-mode building block: the gradient of a sum of picks is the sum of
        // the Jacobian rows.
        let g = model.grad(&example, &[(0, 2), (1, 0)]).unwrap();
        let want: Vec<f64> = (0..n).map(|k| jac[0][2][k] + jac[1][0][k]).collect();
        assert_close(&g, &want, 1e-6, "gradient of summed picks");
    }
}

fn run(mode: Mode, batch_size: usize) -> FisherRun {
    FisherRun {
        mode,
        selection: ClassSelection::all(),
        seed: 42,
        batch_size,
    }
}

#[test]
fn dataset_fisher_is_the_mean_of_per_example_diagonals_for_every_batch_size() {
    let model = TestModel::new(
        Dims {
            input: 3,
            hidden: Some(3),
            classes: 4,
        },
        8,
    );
    let examples = model.examples(7, 2, 1);
    for mode in [Mode::Exact, Mode::Sampled, Mode::Empirical] {
        let single = dataset_fisher(&model, &examples, &run(mode, 1), |_| {}).unwrap();
        let n = single.examples;
        assert_eq!(n, examples.len());
        let mean_single = single.mean().unwrap();
        // One at a time, by hand: the mean of per-example diagonals.
        let mut sum = vec![0f64; mean_single.len()];
        for (i, ex) in examples.iter().enumerate() {
            let d = example_diagonal(&model, ex, i as u64, mode, &ClassSelection::all(), 42)
                .unwrap()
                .unwrap();
            for (s, v) in sum.iter_mut().zip(d) {
                *s += f64::from(v);
            }
        }
        let by_hand: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
        assert_eq!(
            mean_single, by_hand,
            "{mode}: mean of per-example diagonals"
        );
        for b in [2, 3, 7, 16] {
            let batched = dataset_fisher(&model, &examples, &run(mode, b), |_| {}).unwrap();
            assert_eq!(
                batched.mean().unwrap(),
                mean_single,
                "{mode}: batch size {b}"
            );
        }
    }
    // The classic bug — squaring the gradient summed over a batch — gives something else.
    let picks: Vec<_> = (0..2).map(|t| (t, 1)).collect();
    let g0 = model.grad(&examples[0], &picks).unwrap();
    let g1 = model.grad(&examples[1], &picks).unwrap();
    let separate: f32 = g0.iter().zip(&g1).map(|(a, b)| a * a + b * b).sum();
    let summed: f32 = g0.iter().zip(&g1).map(|(a, b)| (a + b) * (a + b)).sum();
    assert!((separate - summed).abs() > 1e-3 * separate);
}

#[test]
fn sampled_fisher_is_unbiased_and_empirical_uses_observed_classes() {
    let model = TestModel::new(
        Dims {
            input: 2,
            hidden: None,
            classes: 3,
        },
        4,
    );
    let example = &model.examples(1, 1, 2)[0];
    let exact = example_diagonal(&model, example, 0, Mode::Exact, &ClassSelection::all(), 0)
        .unwrap()
        .unwrap();
    let draws = 3000;
    let mut mean = vec![0f64; exact.len()];
    for i in 0..draws {
        let d = example_diagonal(&model, example, i, Mode::Sampled, &ClassSelection::all(), 5)
            .unwrap()
            .unwrap();
        for (m, v) in mean.iter_mut().zip(d) {
            *m += f64::from(v) / draws as f64;
        }
    }
    let scale = exact.iter().cloned().fold(0f32, f32::max) as f64;
    for (m, e) in mean.iter().zip(&exact) {
        assert!((m - f64::from(*e)).abs() < 0.06 * scale, "{m} vs {e}");
    }
    let empirical = example_diagonal(
        &model,
        example,
        0,
        Mode::Empirical,
        &ClassSelection::all(),
        0,
    )
    .unwrap()
    .unwrap();
    let g = model.grad(example, &[(0, example.observed[0])]).unwrap();
    let want: Vec<f32> = g.iter().map(|v| v * v).collect();
    assert_eq!(empirical, want);
}

#[test]
fn sparsified_pefs_keep_the_true_top_k_and_dense_norms() {
    let model = TestModel::new(
        Dims {
            input: 3,
            hidden: Some(3),
            classes: 3,
        },
        21,
    );
    let example = &model.examples(1, 1, 3)[0];
    let fisher = example_classes(&model, example, &ClassSelection::all()).unwrap();
    let dense = diagonal(&model, example);
    let sparse = top_k_diagonal(&dense, 5).unwrap();
    let mut sorted = dense.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kept_min = sparse.values.iter().cloned().fold(f32::INFINITY, f32::min);
    assert_eq!(
        kept_min, sorted[4],
        "the 5th largest value is the smallest kept"
    );
    let norm: f64 = dense
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((sparse.dense_norm - norm).abs() < 1e-12);
    let a = fisher.low_rank();
    let lr = top_k_low_rank(&a, 7).unwrap();
    assert_eq!(lr.columns.iter().map(|c| c.0.len()).sum::<usize>(), 7);
    let n = model.theta.len();
    assert!(top_k_diagonal(&dense, n + 1).is_err());
}

/// A model whose gradient has a NaN entry for examples listed in `poisoned` (what a
/// diverged checkpoint produces), otherwise the test model's.
struct Poisoned<'a> {
    inner: &'a TestModel,
    poisoned: Vec<usize>,
    examples: Vec<Example>,
}

impl GradientModel for Poisoned<'_> {
    type Example = Example;

    fn params(&self) -> &[fisherkit_fisher::ParamSpec] {
        self.inner.params()
    }

    fn log_probs(&self, example: &Example) -> anyhow::Result<Vec<Vec<f32>>> {
        self.inner.log_probs(example)
    }

    fn grad(
        &self,
        example: &Example,
        picks: &[fisherkit_fisher::Pick],
    ) -> anyhow::Result<Vec<f32>> {
        let mut grad = self.inner.grad(example, picks)?;
        let index = self.examples.iter().position(|e| e.rows == example.rows);
        if index.is_some_and(|i| self.poisoned.contains(&i)) {
            grad[2] = f32::NAN;
        }
        Ok(grad)
    }

    fn observed(&self, example: &Example) -> anyhow::Result<Vec<fisherkit_fisher::Pick>> {
        self.inner.observed(example)
    }
}

/// Non-finite gradients skip the example (counted) in every mode, and the diagonal PEF of
/// such an example is `None`; the other examples' Fisher is unchanged.
#[test]
fn non_finite_gradients_skip_the_example_and_are_counted() {
    let model = TestModel::new(
        Dims {
            input: 3,
            hidden: Some(3),
            classes: 4,
        },
        5,
    );
    let examples = model.examples(5, 1, 2);
    let poisoned = Poisoned {
        inner: &model,
        poisoned: vec![1, 3],
        examples: examples.clone(),
    };
    for mode in [Mode::Exact, Mode::Sampled, Mode::Empirical] {
        let got = dataset_fisher(&poisoned, &examples, &run(mode, 2), |_| {}).unwrap();
        assert_eq!((got.examples, got.skipped_nonfinite), (3, 2), "{mode}");
        // The mean over the clean examples, each with its own index (its sampling seed).
        let mut sum = vec![0f64; got.mean().unwrap().len()];
        for i in [0, 2, 4] {
            let selection = ClassSelection::all();
            let d = example_diagonal(&model, &examples[i], i as u64, mode, &selection, 42)
                .unwrap()
                .unwrap();
            sum.iter_mut().zip(d).for_each(|(s, v)| *s += f64::from(v));
        }
        let want: Vec<f32> = sum.iter().map(|s| (s / 3.0) as f32).collect();
        assert_eq!(got.mean().unwrap(), want, "{mode}");
    }
    let log_probs = model.log_probs(&examples[1]).unwrap();
    let pef =
        example_diagonal_streamed(&poisoned, &examples[1], &log_probs, &ClassSelection::all());
    assert!(pef.unwrap().is_none());
    let all_poisoned = Poisoned {
        inner: &model,
        poisoned: (0..5).collect(),
        examples: examples.clone(),
    };
    let none = dataset_fisher(&all_poisoned, &examples, &run(Mode::Exact, 1), |_| {}).unwrap();
    assert!(none
        .mean()
        .unwrap_err()
        .to_string()
        .contains("no example had finite gradients"));
}
