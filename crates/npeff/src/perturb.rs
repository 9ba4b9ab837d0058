//! The NPEFF perturbation test: does a component's parameter direction drive the model
//! on its own examples? Perturb θ ± ε·ĝ along the component and compare the change of
//! the predictions (mean KL(p_θ± ‖ p_θ)) on its top examples with a random baseline set.
//!
//! Model-free: the model is a [`Predictor`] (the Fisher crate implements it for every
//! architecture of the loader registry; tests use closed-form models).

use crate::analysis::Analysed;
use crate::pef::PefKind;
use crate::solve::{normal_init, row_rng};
use anyhow::{bail, ensure, Result};
use fisherkit_common::argmax;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Random streams of this module (see [`row_rng`]).
const SIGN_STREAM: u64 = 0x5349_474e;
const CONTROL_STREAM: u64 = 0x4354_524c;

/// A parameter shift scattered into the flat parameter space.
pub struct Shift<'a> {
    /// Ascending flat parameter indices (the decomposition's kept columns).
    pub indices: &'a [u64],
    pub values: &'a [f32],
}

/// The model under test.
pub trait Predictor {
    /// Per example, its output rows of class log-probabilities (one row per target
    /// position, or one row over the labels) with the parameters θ + `shift` (θ when
    /// `None`).
    fn log_probs(
        &mut self,
        shift: Option<&Shift<'_>>,
        examples: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>>;
    /// The correct class of each output row of `example` (its label, or its target
    /// tokens).
    fn answers(&self, example: usize) -> Vec<usize>;
}

/// How the other components' overlap is removed from an LRM component's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Project g_c onto the orthogonal complement of the span of the rejected
    /// components: the result is orthogonal to each of them, whatever their order.
    Span,
    /// The reference's loop: subtract (g·g_i) g_i for each rejected unit g_i in index
    /// order (orthogonal to the last one only when they overlap each other).
    Sequential,
    /// Use g_c as it is.
    None,
}

/// How directions are built.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectionSettings {
    /// τ: other components with |cos(g_c, g_i)| ≤ τ are rejected from g_c; more similar
    /// ones are left in (the reference's semi-orthogonalisation).
    pub max_cos: f64,
    pub rejection: Rejection,
    /// Seeds the signs of D-NPEFF directions and the random controls.
    pub seed: u64,
}

/// A unit direction over the decomposition's kept columns.
#[derive(Clone, Debug)]
pub struct Direction {
    pub values: Vec<f32>,
    /// Components whose overlap was removed.
    pub rejected: Vec<usize>,
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(mut v: Vec<f64>, what: impl FnOnce() -> String) -> Result<Vec<f32>> {
    let n = norm(&v);
    ensure!(n > 0.0 && n.is_finite(), "{}", what());
    v.iter_mut().for_each(|x| *x /= n);
    Ok(v.into_iter().map(|x| x as f32).collect())
}

/// Component `c`'s perturbation direction.
///
/// - LRM-NPEFF: g_c with the overlap of every other component whose |cos| with g_c is
///   ≤ τ removed ([`Rejection`]), normalised.
/// - D-NPEFF (the reference's D perturbation is an unfinished draft; this construction
///   is ours): a rank-one pseudo-Fisher g gᵀ has diagonal g², so the diagonal analogue
///   of g_c has |ĝ_k| ∝ √h_c[k]. It is restricted to the parameters where h_c is the
///   largest of all (unit-norm) components' entries — the overlap with the others
///   removed — falling back to all of h_c when it dominates nowhere. A diagonal carries
///   no signs: they are drawn at random (seeded); both signs of ĝ are evaluated.
pub fn direction(an: &Analysed, c: usize, settings: &DirectionSettings) -> Result<Direction> {
    let dec = &an.decomposition;
    let r = dec.components();
    let m = dec.kept.len();
    let rows: Vec<Vec<f64>> = (0..r)
        .map(|j| {
            dec.dict[j * m..(j + 1) * m]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect();
    match dec.info.kind {
        PefKind::LowRank => {
            let gc = &rows[c];
            let nc = norm(gc);
            ensure!(nc > 0.0, "component {c}: its g is zero");
            let rejected: Vec<usize> = (0..r)
                .filter(|&i| i != c)
                .filter(|&i| {
                    let ni = norm(&rows[i]);
                    ni > 0.0 && (dot(gc, &rows[i]) / (nc * ni)).abs() <= settings.max_cos
                })
                .collect();
            let mut g = gc.clone();
            match settings.rejection {
                Rejection::None => {}
                Rejection::Sequential => {
                    for &i in &rejected {
                        let gi = &rows[i];
                        let coef = dot(&g, gi) / dot(gi, gi);
                        g.iter_mut().zip(gi).for_each(|(x, y)| *x -= coef * y);
                    }
                }
                Rejection::Span => {
                    // Orthonormal basis of the rejected span (Gram–Schmidt, twice for
                    // stability); nearly dependent vectors add nothing.
                    let mut basis: Vec<Vec<f64>> = Vec::new();
                    for &i in &rejected {
                        let mut q = rows[i].clone();
                        let scale = norm(&q);
                        for _ in 0..2 {
                            for b in &basis {
                                let coef = dot(&q, b);
                                q.iter_mut().zip(b).for_each(|(x, y)| *x -= coef * y);
                            }
                        }
                        let n = norm(&q);
                        if n > 1e-8 * scale {
                            q.iter_mut().for_each(|x| *x /= n);
                            basis.push(q);
                        }
                    }
                    for _ in 0..2 {
                        for b in &basis {
                            let coef = dot(&g, b);
                            g.iter_mut().zip(b).for_each(|(x, y)| *x -= coef * y);
                        }
                    }
                }
            }
            if settings.rejection == Rejection::None {
                return Ok(Direction {
                    values: unit(g, || format!("component {c}: zero direction"))?,
                    rejected: vec![],
                });
            }
            let values = unit(g, || {
                format!("component {c} lies in the span of the components it is made orthogonal to; raise --max-cos or use --rejection none")
            })?;
            Ok(Direction { values, rejected })
        }
        PefKind::Diagonal => {
            let unit_rows: Vec<Vec<f64>> = rows
                .iter()
                .map(|row| {
                    let n = norm(row);
                    row.iter()
                        .map(|v| if n > 0.0 { v.max(0.0) / n } else { 0.0 })
                        .collect()
                })
                .collect();
            let hc = &unit_rows[c];
            ensure!(hc.iter().any(|&v| v > 0.0), "component {c}: its h is zero");
            let dominates =
                |k: usize| hc[k] > 0.0 && (0..r).all(|j| j == c || unit_rows[j][k] <= hc[k]);
            let exclusive = (0..m).any(dominates);
            let mut rng = row_rng(settings.seed, SIGN_STREAM, c);
            let g: Vec<f64> = (0..m)
                .map(|k| {
                    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                    if !exclusive || dominates(k) {
                        sign * hc[k].sqrt()
                    } else {
                        0.0
                    }
                })
                .collect();
            let rejected = if exclusive {
                (0..r).filter(|&j| j != c).collect()
            } else {
                vec![]
            };
            Ok(Direction {
                values: unit(g, || format!("component {c}: zero direction"))?,
                rejected,
            })
        }
    }
}

/// A random unit direction over `m` kept columns (the control: a direction of the same
/// norm on the same parameters, unrelated to any component).
pub fn random_direction(m: usize, seed: u64, c: usize) -> Vec<f32> {
    let g = normal_init(1, m, 1.0, seed, CONTROL_STREAM ^ c as u64);
    unit(g.into_iter().map(f64::from).collect(), || {
        "empty direction".into()
    })
    .expect("a Gaussian vector is non-zero")
}

/// KL(p ‖ q) of two rows of log-probabilities, Σ_k p_k (log p_k − log q_k).
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let pa = f64::from(a).exp();
            if pa > 0.0 {
                pa * (f64::from(a) - f64::from(b))
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Mean over examples of [`example_kl`].
fn mean_kl(perturbed: &[Vec<Vec<f32>>], original: &[Vec<Vec<f32>>]) -> f64 {
    perturbed
        .iter()
        .zip(original)
        .map(|(p, q)| example_kl(p, q))
        .sum::<f64>()
        / perturbed.len().max(1) as f64
}

/// Mean over an example's output rows of KL(perturbed ‖ original).
fn example_kl(perturbed: &[Vec<f32>], original: &[Vec<f32>]) -> f64 {
    let n = perturbed.len().max(1) as f64;
    perturbed
        .iter()
        .zip(original)
        .map(|(p, q)| kl(p, q))
        .sum::<f64>()
        / n
}

/// Fraction of an example's output rows whose argmax is the answer.
fn example_accuracy(rows: &[Vec<f32>], answers: &[usize]) -> f64 {
    let n = rows.len().max(1) as f64;
    rows.iter()
        .zip(answers)
        .filter(|(r, &a)| argmax(r) == a)
        .count() as f64
        / n
}

/// The perturbation step: given directly, or found per component so that the mean
/// baseline KL (over both signs) hits a target.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Epsilon {
    Fixed(f64),
    TargetKl(f64),
}

/// Settings of the perturbation test.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerturbSettings {
    /// Components to test (all when empty).
    pub components: Vec<usize>,
    /// Top examples per component.
    pub top: usize,
    /// Baseline examples per component: a seeded random sample of the examples outside
    /// the component's top set (not the reference's first n of the same set, which
    /// overlaps the top examples and follows the data's order).
    pub baseline: usize,
    pub epsilon: Epsilon,
    pub direction: DirectionSettings,
    /// Also perturb along a random direction of the same norm on the same parameters.
    pub random_control: bool,
}

/// Mean KL and accuracies of one perturbed model.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SignResult {
    pub kl_top: f64,
    pub kl_baseline: f64,
    /// kl_top / kl_baseline.
    pub ratio: f64,
    pub accuracy_top: f64,
    pub accuracy_baseline: f64,
}

/// Both signs of one direction.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PlusMinus {
    pub plus: SignResult,
    pub minus: SignResult,
    /// The larger of the two ratios (what the reference reports).
    pub max_ratio: f64,
}

/// The perturbation test of one component.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ComponentPerturbation {
    pub component: usize,
    pub epsilon: f64,
    pub top_examples: Vec<usize>,
    pub baseline_examples: usize,
    /// Components whose overlap was removed from the direction.
    pub rejected_components: Vec<usize>,
    pub original_accuracy_top: f64,
    pub original_accuracy_baseline: f64,
    pub component_direction: PlusMinus,
    /// The random direction of the same norm (with `random_control`).
    pub random_direction: Option<PlusMinus>,
}

/// The `npeff perturb` report.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PerturbReport {
    pub kind: PefKind,
    pub settings: PerturbSettings,
    pub per_component: Vec<ComponentPerturbation>,
    /// Median over the components of the component direction's max ratio.
    pub median_ratio: f64,
    /// The same for the random directions (with `random_control`).
    pub median_random_ratio: Option<f64>,
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One component's examples and what the unperturbed model says about them.
struct Sets {
    top: Vec<usize>,
    baseline: Vec<usize>,
    original_top: Vec<Vec<Vec<f32>>>,
    original_baseline: Vec<Vec<Vec<f32>>>,
}

struct Runner<'a> {
    predictor: &'a mut dyn Predictor,
    kept: &'a [u64],
}

impl Runner<'_> {
    fn shifted(
        &mut self,
        direction: &[f32],
        step: f64,
        examples: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let values: Vec<f32> = direction
            .iter()
            .map(|&g| (step * f64::from(g)) as f32)
            .collect();
        let shift = Shift {
            indices: self.kept,
            values: &values,
        };
        self.predictor.log_probs(Some(&shift), examples)
    }

    fn accuracy(&self, rows: &[Vec<Vec<f32>>], examples: &[usize]) -> f64 {
        rows.iter()
            .zip(examples)
            .map(|(r, &i)| example_accuracy(r, &self.predictor.answers(i)))
            .sum::<f64>()
            / examples.len().max(1) as f64
    }

    fn sign(&mut self, direction: &[f32], step: f64, sets: &Sets) -> Result<SignResult> {
        let top = self.shifted(direction, step, &sets.top)?;
        let base = self.shifted(direction, step, &sets.baseline)?;
        let kl_top = mean_kl(&top, &sets.original_top);
        let kl_baseline = mean_kl(&base, &sets.original_baseline);
        Ok(SignResult {
            kl_top,
            kl_baseline,
            ratio: kl_top / kl_baseline,
            accuracy_top: self.accuracy(&top, &sets.top),
            accuracy_baseline: self.accuracy(&base, &sets.baseline),
        })
    }

    fn plus_minus(&mut self, direction: &[f32], step: f64, sets: &Sets) -> Result<PlusMinus> {
        let plus = self.sign(direction, step, sets)?;
        let minus = self.sign(direction, -step, sets)?;
        let max_ratio = plus.ratio.max(minus.ratio);
        Ok(PlusMinus {
            plus,
            minus,
            max_ratio,
        })
    }

    /// The step ε at which the mean baseline KL over both signs is `target` (within 5 %):
    /// bracket by factors of 4 from ε = 1, then bisect in log space.
    fn step_for(&mut self, direction: &[f32], target: f64, sets: &Sets) -> Result<f64> {
        let kl_at = |runner: &mut Self, eps: f64| -> Result<f64> {
            let plus = mean_kl(
                &runner.shifted(direction, eps, &sets.baseline)?,
                &sets.original_baseline,
            );
            let minus = mean_kl(
                &runner.shifted(direction, -eps, &sets.baseline)?,
                &sets.original_baseline,
            );
            Ok((plus + minus) / 2.0)
        };
        let (mut lo, mut hi) = (1.0f64, 1.0f64);
        let mut kl = kl_at(self, 1.0)?;
        let mut tries = 0;
        while kl < target {
            tries += 1;
            ensure!(
                tries <= 20,
                "the baseline KL stays below --target-kl {target} up to ε = {hi:.3e} (the model does not respond to this direction; give --epsilon)"
            );
            lo = hi;
            hi *= 4.0;
            kl = kl_at(self, hi)?;
        }
        if (kl - target).abs() <= 0.05 * target {
            return Ok(hi);
        }
        if lo == hi {
            while kl > target {
                tries += 1;
                ensure!(
                    tries <= 20,
                    "the baseline KL stays above --target-kl {target} down to ε = {lo:.3e}; give --epsilon"
                );
                hi = lo;
                lo /= 4.0;
                kl = kl_at(self, lo)?;
            }
            if (kl - target).abs() <= 0.05 * target {
                return Ok(lo);
            }
        }
        let mut mid = (lo * hi).sqrt();
        for _ in 0..24 {
            mid = (lo * hi).sqrt();
            let kl = kl_at(self, mid)?;
            if (kl - target).abs() <= 0.05 * target {
                break;
            }
            if kl < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(mid)
    }
}

/// Run the perturbation test of `settings.components` on `predictor`, whose examples
/// are the PEF directory's. `progress` is called once per finished component.
pub fn perturb(
    an: &Analysed,
    predictor: &mut dyn Predictor,
    settings: &PerturbSettings,
    mut progress: impl FnMut(usize),
) -> Result<PerturbReport> {
    ensure!(settings.top > 0, "--top must be positive");
    ensure!(settings.baseline > 0, "--baseline must be positive");
    match settings.epsilon {
        Epsilon::Fixed(e) => ensure!(
            e > 0.0 && e.is_finite(),
            "--epsilon must be positive and finite (got {e})"
        ),
        Epsilon::TargetKl(k) => ensure!(
            k > 0.0 && k.is_finite(),
            "--target-kl must be positive and finite (got {k})"
        ),
    }
    ensure!(
        (0.0..=1.0).contains(&settings.direction.max_cos),
        "--max-cos must lie in [0, 1] (got {})",
        settings.direction.max_cos
    );
    let components = an.select_components(&settings.components)?;
    let n = an.n_examples();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        settings.direction.seed,
    ));
    let mut runner = Runner {
        predictor,
        kept: &an.decomposition.kept,
    };
    let mut per_component = Vec::new();
    for &c in &components {
        let top = an.top_examples(c, settings.top);
        if top.is_empty() {
            bail!("component {c} has no example with a positive coefficient: nothing to perturb against");
        }
        let baseline: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| !top.contains(i))
            .take(settings.baseline)
            .collect();
        ensure!(
            !baseline.is_empty(),
            "component {c}: every example is among its top {}; lower --top",
            settings.top
        );
        let sets = Sets {
            original_top: runner.predictor.log_probs(None, &top)?,
            original_baseline: runner.predictor.log_probs(None, &baseline)?,
            top,
            baseline,
        };
        let dir = direction(an, c, &settings.direction)?;
        let step = match settings.epsilon {
            Epsilon::Fixed(e) => e,
            Epsilon::TargetKl(k) => runner.step_for(&dir.values, k, &sets)?,
        };
        let component_direction = runner.plus_minus(&dir.values, step, &sets)?;
        let random_direction = if settings.random_control {
            let random = random_direction(dir.values.len(), settings.direction.seed, c);
            Some(runner.plus_minus(&random, step, &sets)?)
        } else {
            None
        };
        per_component.push(ComponentPerturbation {
            component: c,
            epsilon: step,
            baseline_examples: sets.baseline.len(),
            rejected_components: dir.rejected,
            original_accuracy_top: runner.accuracy(&sets.original_top, &sets.top),
            original_accuracy_baseline: runner.accuracy(&sets.original_baseline, &sets.baseline),
            top_examples: sets.top,
            component_direction,
            random_direction,
        });
        progress(c);
    }
    let ratios: Vec<f64> = per_component
        .iter()
        .map(|p| p.component_direction.max_ratio)
        .collect();
    let random: Vec<f64> = per_component
        .iter()
        .filter_map(|p| p.random_direction.as_ref().map(|r| r.max_ratio))
        .collect();
    Ok(PerturbReport {
        kind: an.decomposition.info.kind,
        settings: settings.clone(),
        median_ratio: median(&ratios),
        median_random_ratio: settings.random_control.then(|| median(&random)),
        per_component,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_matches_the_two_class_closed_form() {
        let log_softmax = |z: f64| {
            let lse = (z.exp() + 1.0).ln();
            vec![(z - lse) as f32, (-lse) as f32]
        };
        for (a, b) in [(0.3, -1.2), (2.0, 2.5), (-4.0, 1.0)] {
            let (p, q) = (log_softmax(a), log_softmax(b));
            let (pa, qa) = (1.0 / (1.0 + (-a).exp()), 1.0 / (1.0 + (-b).exp()));
            let want = pa * (pa / qa).ln() + (1.0 - pa) * ((1.0 - pa) / (1.0 - qa)).ln();
            assert!(
                (kl(&p, &q) - want).abs() < 1e-5,
                "{a} {b}: {} vs {want}",
                kl(&p, &q)
            );
        }
        assert_eq!(kl(&log_softmax(0.7), &log_softmax(0.7)), 0.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn accuracy_counts_rows_whose_argmax_is_the_answer() {
        let rows = vec![vec![0.1, 0.9], vec![0.8, 0.2], vec![0.3, 0.7]];
        assert!((example_accuracy(&rows, &[1, 0, 0]) - 2.0 / 3.0).abs() < 1e-12);
    }
}
