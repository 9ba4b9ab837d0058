//! The diagonal dataset Fisher (1/N) Σ_x F(x), with F(x) computed per example.

use crate::select::{example_seed, sample_classes};
use crate::{example_diagonal_streamed, ClassSelection, GradientModel, CHUNK};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// How the expectation over the model's output distribution is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Σ_c p_c (∇ log p_c)² over the selected classes.
    Exact,
    /// (∇ log p(y|x))² with y drawn from the model at every position.
    Sampled,
    /// (∇ log p(y|x))² with y the observed target (the "empirical Fisher").
    Empirical,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Sampled => "sampled",
            Mode::Empirical => "empirical",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "exact" => Mode::Exact,
            "sampled" => Mode::Sampled,
            "empirical" => Mode::Empirical,
            other => bail!("unknown Fisher mode {other:?} (expected exact, sampled or empirical)"),
        })
    }
}

/// The diagonal Fisher of one example under `mode`, or `None` when the example's
/// probabilities or gradients are not finite (the caller skips and counts it).
/// `index` is the example's position in the data set: it alone seeds the sampled
/// mode, so results do not depend on batching.
pub fn example_diagonal<M: GradientModel>(
    model: &M,
    example: &M::Example,
    index: u64,
    mode: Mode,
    selection: &ClassSelection,
    seed: u64,
) -> Result<Option<Vec<f32>>> {
    let log_probs = match mode {
        Mode::Empirical => None,
        Mode::Exact | Mode::Sampled => Some(model.log_probs(example)?),
    };
    example_diagonal_given(model, example, log_probs, index, mode, selection, seed)
}

/// [`example_diagonal`] with the example's log-probabilities already computed (needed
/// by the exact and sampled modes; a batched forward pass provides them).
pub fn example_diagonal_given<M: GradientModel>(
    model: &M,
    example: &M::Example,
    log_probs: Option<Vec<Vec<f32>>>,
    index: u64,
    mode: Mode,
    selection: &ClassSelection,
    seed: u64,
) -> Result<Option<Vec<f32>>> {
    let picks = match mode {
        Mode::Empirical => model.observed(example)?,
        Mode::Exact | Mode::Sampled => {
            let log_probs =
                log_probs.context("the exact and sampled modes need log-probabilities")?;
            if mode == Mode::Exact {
                return example_diagonal_streamed(model, example, &log_probs, selection);
            }
            if log_probs.iter().flatten().any(|v| v.is_nan()) {
                return Ok(None);
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(example_seed(seed, index));
            sample_classes(&log_probs, &mut rng)
        }
    };
    Ok(square_if_finite(model.grad(example, &picks)?))
}

/// The squared gradient, or `None` if any entry is not finite. In place and on all cores:
/// at tens of millions of parameters this pass is memory-bound.
fn square_if_finite(mut grad: Vec<f32>) -> Option<Vec<f32>> {
    grad.par_chunks_mut(CHUNK)
        .all(|chunk| {
            chunk.iter_mut().fold(true, |finite, g| {
                let ok = g.is_finite();
                *g *= *g;
                finite && ok
            })
        })
        .then_some(grad)
}

/// A running sum of per-example diagonal Fishers (f64, so long runs do not lose
/// small contributions).
#[derive(Debug, Clone)]
pub struct DatasetFisher {
    sum: Vec<f64>,
    /// Examples added.
    pub examples: usize,
    /// Examples skipped because their gradients were not finite.
    pub skipped_nonfinite: usize,
}

impl DatasetFisher {
    pub fn new(num_params: usize) -> Self {
        Self {
            sum: vec![0.0; num_params],
            examples: 0,
            skipped_nonfinite: 0,
        }
    }

    /// Add one example's diagonal Fisher (`None`: a skipped non-finite example).
    pub fn add(&mut self, diagonal: Option<&[f32]>) {
        match diagonal {
            Some(d) => {
                debug_assert_eq!(d.len(), self.sum.len());
                self.sum
                    .par_chunks_mut(CHUNK)
                    .zip(d.par_chunks(CHUNK))
                    .for_each(|(sum, d)| {
                        sum.iter_mut().zip(d).for_each(|(s, &v)| *s += f64::from(v));
                    });
                self.examples += 1;
            }
            None => self.skipped_nonfinite += 1,
        }
    }

    /// The mean over added examples. Errors when every example was skipped.
    pub fn mean(&self) -> Result<Vec<f32>> {
        if self.examples == 0 {
            bail!(
                "no example had finite gradients ({} skipped): the Fisher is undefined",
                self.skipped_nonfinite
            );
        }
        let n = self.examples as f64;
        Ok(self.sum.iter().map(|&s| (s / n) as f32).collect())
    }
}

/// Settings of a dataset-Fisher run.
#[derive(Debug, Clone)]
pub struct FisherRun {
    pub mode: Mode,
    pub selection: ClassSelection,
    pub seed: u64,
    /// Examples whose output distributions are computed in one forward pass.
    pub batch_size: usize,
}

/// The dataset Fisher over `examples`. The output distributions of a batch come from
/// one forward pass; every gradient is taken for one example alone (its own forward and
/// backward pass: burn's autodiff graphs over shared parameters cannot run concurrently
/// on threads), and examples are added in data order, so the batch size changes the
/// result only through the rounding of padded forward passes. `on_batch` is told how many examples finished.
pub fn dataset_fisher<M>(
    model: &M,
    examples: &[M::Example],
    run: &FisherRun,
    mut on_batch: impl FnMut(usize),
) -> Result<DatasetFisher>
where
    M: GradientModel,
{
    anyhow::ensure!(run.batch_size >= 1, "the batch size must be at least 1");
    run.selection.validate()?;
    let mut fisher = DatasetFisher::new(crate::param_count(model.params()));
    for (batch_no, batch) in examples.chunks(run.batch_size).enumerate() {
        let first = batch_no * run.batch_size;
        // One batched forward pass for the output distributions; gradients per example.
        let mut log_probs = match run.mode {
            Mode::Empirical => Vec::new(),
            Mode::Exact | Mode::Sampled => model
                .log_probs_batch(batch)
                .with_context(|| format!("examples {}..{}", first + 1, first + batch.len()))?,
        }
        .into_iter();
        for (i, example) in batch.iter().enumerate() {
            let index = (first + i) as u64;
            let diagonal = example_diagonal_given(
                model,
                example,
                log_probs.next(),
                index,
                run.mode,
                &run.selection,
                run.seed,
            )
            .with_context(|| format!("example {}", index + 1))?;
            fisher.add(diagonal.as_deref());
        }
        on_batch(batch.len());
    }
    Ok(fisher)
}
