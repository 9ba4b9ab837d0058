//! One example's class gradients and the per-example Fishers built from them.

use crate::{ClassSelection, GradientModel, Pick, CHUNK};
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
    let picks: Vec<Vec<Pick>> = kept.iter().map(|&(pick, _)| vec![pick]).collect();
    let mut classes = Vec::with_capacity(kept.len());
    model.grads_each(example, &picks, &mut |index, grad| {
        check_length(&grad, crate::param_count(model.params()))?;
        let (pick, prob) = kept[index];
        classes.push(ClassGradient { pick, prob, grad });
        Ok(())
    })?;
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
}

/// The most probable class at each position.
pub fn predictions(log_probs: &[Vec<f32>]) -> Vec<usize> {
    log_probs
        .iter()
        .map(|row| fisherkit_model::argmax(row))
        .collect()
}

/// The diagonal PEF Σ_c p_c g_c² of the selected classes, summed as each class gradient
/// is computed so that one gradient is held at a time ([`example_classes`] keeps them all,
/// as a low-rank PEF needs: for t5-small with 5 tokens kept at 32 positions that would be
/// 160 gradients of 242 MB). Each entry is summed over classes in f64, in class order.
/// `None` when a log-probability, probability or gradient is not finite.
pub fn example_diagonal_streamed<M: GradientModel>(
    model: &M,
    example: &M::Example,
    log_probs: &[Vec<f32>],
    selection: &ClassSelection,
) -> Result<Option<Vec<f32>>> {
    if log_probs.iter().flatten().any(|v| v.is_nan()) {
        return Ok(None);
    }
    let n = crate::param_count(model.params());
    // The first class's terms fill the sum and later ones add to it; the last gradient's
    // buffer receives the result. (Passes over all parameters are memory-bound.)
    let mut sum: Vec<f64> = Vec::new();
    let mut result = Vec::new();
    let kept = selection.select(log_probs);
    if kept.iter().any(|(_, prob)| !prob.is_finite()) {
        return Ok(None);
    }
    let picks: Vec<Vec<Pick>> = kept.iter().map(|&(pick, _)| vec![pick]).collect();
    model.grads_each(example, &picks, &mut |index, grad| {
        check_length(&grad, n)?;
        let prob = kept[index].1;
        let term = |g: f32| prob * f64::from(g) * f64::from(g);
        if index == 0 {
            sum = grad.par_iter().map(|&g| term(g)).collect();
        } else {
            sum.par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .for_each(|(sum, grad)| {
                    sum.iter_mut().zip(grad).for_each(|(s, &g)| *s += term(g));
                });
        }
        result = grad;
        Ok(())
    })?;
    if kept.is_empty() {
        // No class kept (all below `min_prob`): the truncated sum is empty.
        return Ok(Some(vec![0.0; n]));
    }
    // With p_c finite, a term is finite exactly when its gradient entry is, so the
    // sums are all finite exactly when every gradient was.
    let finite = result
        .par_chunks_mut(CHUNK)
        .zip(sum.par_chunks(CHUNK))
        .map(|(out, sum)| {
            out.iter_mut().zip(sum).fold(true, |finite, (o, &s)| {
                *o = s as f32;
                finite && s.is_finite()
            })
        })
        .reduce(|| true, |a, b| a && b);
    Ok(finite.then_some(result))
}

fn check_length(grad: &[f32], num_params: usize) -> Result<()> {
    ensure!(
        grad.len() == num_params,
        "the model returned a gradient of {} values for {num_params} parameters",
        grad.len()
    );
    Ok(())
}
