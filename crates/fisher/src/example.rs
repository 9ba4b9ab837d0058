//! One example's class gradients and the per-example Fishers built from them.

use crate::{ClassSelection, GradientModel, Pick};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// The gradient of log p(class | x) for one kept class.
#[derive(Debug, Clone)]
pub struct ClassGradient {
    pub pick: Pick,
    pub prob: f64,
    pub grad: Vec<f32>,
}

/// Everything the per-example Fishers of one example are made of.
#[derive(Debug, Clone)]
pub struct ExampleFisher {
    /// Log-probabilities of all classes at all positions (for predictions/logits).
    pub log_probs: Vec<Vec<f32>>,
    pub classes: Vec<ClassGradient>,
}

/// Compute the gradients of the selected classes of one example, one backward pass
/// per class (never a summed gradient).
pub fn example_classes<M: GradientModel>(
    model: &M,
    example: &M::Example,
    selection: &ClassSelection,
) -> Result<ExampleFisher> {
    example_classes_given(model, example, model.log_probs(example)?, selection)
}

/// [`example_classes`] with the example's log-probabilities already computed (e.g. in
/// a batched forward pass).
pub fn example_classes_given<M: GradientModel>(
    model: &M,
    example: &M::Example,
    log_probs: Vec<Vec<f32>>,
    selection: &ClassSelection,
) -> Result<ExampleFisher> {
    let kept = selection.select(&log_probs);
    let mut classes = Vec::with_capacity(kept.len());
    for (pick, prob) in kept {
        let grad = model.grad(example, &[pick])?;
        ensure!(
            grad.len() == crate::param_count(model.params()),
            "the model returned a gradient of {} values for {} parameters",
            grad.len(),
            crate::param_count(model.params())
        );
        classes.push(ClassGradient { pick, prob, grad });
    }
    Ok(ExampleFisher { log_probs, classes })
}

impl ExampleFisher {
    /// Whether all probabilities and gradients are finite.
    pub fn is_finite(&self) -> bool {
        self.log_probs.iter().flatten().all(|v| !v.is_nan())
            && self
                .classes
                .iter()
                .all(|c| c.prob.is_finite() && c.grad.iter().all(|g| g.is_finite()))
    }

    /// The diagonal PEF Σ_c p_c g_c² (each entry summed over classes in f64; one pass
    /// over the parameters, without an f64 buffer the size of the model).
    pub fn diagonal(&self) -> Vec<f32> {
        let n = self.classes.first().map_or(0, |c| c.grad.len());
        (0..n)
            .into_par_iter()
            .map(|i| {
                self.classes
                    .iter()
                    .map(|c| c.prob * f64::from(c.grad[i]) * f64::from(c.grad[i]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// The low-rank PEF factor A (columns sqrt(p_c) g_c), so that the PEF is A Aᵀ.
    pub fn low_rank(&self) -> Vec<Vec<f32>> {
        self.classes
            .iter()
            .map(|class| {
                let s = class.prob.sqrt();
                class
                    .grad
                    .iter()
                    .map(|&g| (s * f64::from(g)) as f32)
                    .collect()
            })
            .collect()
    }

    /// The most probable class at each position.
    pub fn predictions(&self) -> Vec<usize> {
        self.log_probs
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (c, &v)| {
                        if v > best.1 {
                            (c, v)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect()
    }
}
