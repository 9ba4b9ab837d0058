//! The diagonal dataset Fisher (1/N) Σ_x F(x), with F(x) computed per example.

use crate::select::{example_seed, sample_classes};
use crate::{example_classes, ClassSelection, GradientModel};
use anyhow::{bail, Result};
use rand::SeedableRng;
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
    let picks = match mode {
        Mode::Exact => {
            let fisher = example_classes(model, example, selection)?;
            return Ok(fisher.is_finite().then(|| fisher.diagonal()));
        }
        Mode::Sampled => {
            let log_probs = model.log_probs(example)?;
            if log_probs.iter().flatten().any(|v| v.is_nan()) {
                return Ok(None);
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(example_seed(seed, index));
            sample_classes(&log_probs, &mut rng)
        }
        Mode::Empirical => model.observed(example)?,
    };
    let grad = model.grad(example, &picks)?;
    if grad.iter().any(|g| !g.is_finite()) {
        return Ok(None);
    }
    Ok(Some(grad.into_iter().map(|g| g * g).collect()))
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
                for (s, &v) in self.sum.iter_mut().zip(d) {
                    *s += f64::from(v);
                }
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
    /// Examples computed concurrently (spread over the machine's cores) and held in
    /// memory together before they are added.
    pub batch_size: usize,
}

/// The dataset Fisher over `examples`. Examples of a batch are computed on worker
/// threads, each with its own backward passes, and added in data order, so the result
/// is bit-identical for every batch size. `on_batch` is told how many examples finished.
pub fn dataset_fisher<M>(
    model: &M,
    examples: &[M::Example],
    run: &FisherRun,
    mut on_batch: impl FnMut(usize),
) -> Result<DatasetFisher>
where
    M: GradientModel + Sync,
    M::Example: Sync,
{
    anyhow::ensure!(run.batch_size >= 1, "the batch size must be at least 1");
    run.selection.validate()?;
    let mut fisher = DatasetFisher::new(crate::param_count(model.params()));
    for (batch_no, batch) in examples.chunks(run.batch_size).enumerate() {
        let first = batch_no * run.batch_size;
        let results = crate::parallel::map_in_order(batch, |i, example| {
            let index = (first + i) as u64;
            example_diagonal(model, example, index, run.mode, &run.selection, run.seed)
                .map_err(|e| e.context(format!("example {}", index + 1)))
        })?;
        for diagonal in &results {
            fisher.add(diagonal.as_deref());
        }
        on_batch(batch.len());
    }
    Ok(fisher)
}
