//! [`GradientModel`] for any model behind the fisherkit model interface.

use crate::{GradientModel, ParamSpec, Pick};
use anyhow::{ensure, Context, Result};
use fisherkit_model::burn::tensor::{Int, Tensor, TensorData};
use fisherkit_model::{
    EachGradient, Example, ExampleBackprop, LogProbModel, ParamAccess, WeightedClasses,
};

/// The output distribution a Fisher is taken over.
#[derive(Debug, Clone)]
pub enum Outputs {
    /// Classification by label strings (text-to-text): one position whose classes are
    /// the labels, p(c|x) = the normalised probability of each label's full token
    /// sequence.
    Labels {
        names: Vec<String>,
        targets: Vec<Vec<u32>>,
    },
    /// Teacher-forced next-token distributions over the vocabulary, one position per
    /// target token.
    Tokens,
}

/// One data example: the model input/target ids and, for labels, the observed label.
#[derive(Debug, Clone)]
pub struct Item {
    pub example: Example,
    pub label: Option<usize>,
}

/// Where per-example gradients come from (`--gradients`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientRoute {
    /// The model's own backward pass when it has one (f32 parameters on the CPU), else
    /// burn's autodiff.
    #[default]
    Auto,
    /// The model's own backward pass; an error when it has none.
    Fast,
    /// burn's autodiff, even where the model has its own backward pass (to cross-check).
    Autodiff,
}

/// A model on an autodiff device, seen as a [`GradientModel`].
pub struct ModelGradients<'a, M> {
    model: &'a M,
    outputs: Outputs,
    params: Vec<ParamSpec>,
    /// The model's own backward pass, when it has one ([`LogProbModel::example_backprop`]);
    /// otherwise gradients come from burn's autodiff.
    backprop: Option<Box<dyn ExampleBackprop>>,
}

impl<'a, M: LogProbModel> ModelGradients<'a, M> {
    /// Gradients from the model's own backward pass where it has one, else autodiff.
    pub fn new(model: &'a M, outputs: Outputs) -> Result<Self> {
        Self::with_route(model, outputs, GradientRoute::Auto)
    }

    /// Gradients from the chosen route; the choice is reported once (tracing, info).
    pub fn with_route(model: &'a M, outputs: Outputs, route: GradientRoute) -> Result<Self> {
        let mut gradients = Self::autodiff(model, outputs)?;
        if route != GradientRoute::Autodiff {
            gradients.backprop = model.example_backprop();
        }
        ensure!(
            route != GradientRoute::Fast || gradients.backprop.is_some(),
            "--gradients fast: this model has no hand-written backward pass here (it needs \
             f32 parameters on the CPU); use --gradients autodiff or auto"
        );
        if gradients.backprop.is_some() {
            tracing::info!("per-example gradients: the model parts' hand-written backward pass");
        } else {
            tracing::info!("per-example gradients: burn autodiff");
        }
        Ok(gradients)
    }

    /// Gradients from burn's autodiff even where the model has its own backward pass
    /// (for comparisons).
    pub fn autodiff(model: &'a M, outputs: Outputs) -> Result<Self> {
        ensure!(
            model.device().is_autodiff(),
            "per-example gradients need the model on an autodiff device"
        );
        ensure!(
            !model.is_training(),
            "Fishers are computed in eval mode (dropout off)"
        );
        if let Outputs::Labels { names, targets } = &outputs {
            ensure!(names.len() >= 2, "at least two label strings are needed");
            for (name, t) in names.iter().zip(targets) {
                ensure!(!t.is_empty(), "label {name:?} tokenises to nothing");
            }
        }
        let params = model
            .param_specs()
            .into_iter()
            .map(|s| ParamSpec {
                name: s.name,
                shape: s.shape,
            })
            .collect();
        Ok(Self {
            model,
            outputs,
            params,
            backprop: None,
        })
    }

    /// Whether gradients come from the model's own backward pass.
    pub fn uses_backprop(&self) -> bool {
        self.backprop.is_some()
    }

    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// The differentiable per-position log-probabilities: `[positions, classes]`.
    fn forward(&self, item: &Item) -> Result<Tensor<2>> {
        match &self.outputs {
            Outputs::Labels { targets, .. } => {
                label_log_probs(self.model, std::slice::from_ref(&item.example), targets)
            }
            Outputs::Tokens => {
                let lsm = self
                    .model
                    .log_softmax(std::slice::from_ref(&item.example))?;
                let [_, len, vocab] = lsm.dims();
                Ok(lsm.reshape([len, vocab]))
            }
        }
    }
}

/// The log-probabilities of `outputs` for each item, without gradients: per item its
/// rows (one per target position, or one row over the labels) of class log-probabilities.
pub fn output_log_probs<M: LogProbModel + ?Sized>(
    model: &M,
    outputs: &Outputs,
    items: &[Item],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let examples: Vec<Example> = items.iter().map(|i| i.example.clone()).collect();
    match outputs {
        Outputs::Labels { targets, .. } => {
            let lp = to_vec(label_log_probs(model, &examples, targets)?.detach())?;
            Ok(lp
                .chunks(targets.len())
                .map(|row| vec![row.to_vec()])
                .collect())
        }
        Outputs::Tokens => {
            let lsm = model.log_softmax(&examples)?.detach();
            let [_, len, vocab] = lsm.dims();
            let values = to_vec(lsm)?;
            Ok(examples
                .iter()
                .enumerate()
                .map(|(b, e)| {
                    // Rows beyond the example's own target are padding.
                    (0..e.target_ids.len())
                        .map(|t| values[(b * len + t) * vocab..(b * len + t + 1) * vocab].to_vec())
                        .collect()
                })
                .collect())
        }
    }
}

/// log p(label | input) of every label for every example, normalised over the labels
/// (each label's probability is that of its full token sequence): `[examples, labels]`.
/// Differentiable when the model is on an autodiff device.
pub fn label_log_probs<M: LogProbModel + ?Sized>(
    model: &M,
    examples: &[Example],
    targets: &[Vec<u32>],
) -> Result<Tensor<2>> {
    let scores = if targets.iter().all(|t| t.len() == 1) {
        // One-token labels (a classifier's classes, or one-token label strings): one
        // forward pass per example, its first output row's label columns.
        let batch: Vec<Example> = examples
            .iter()
            .map(|e| Example {
                target_ids: targets[0].clone(),
                ..e.clone()
            })
            .collect();
        let log_probs = model.log_softmax(&batch)?;
        let [rows, _, outputs] = log_probs.dims();
        let columns: Vec<i64> = targets.iter().map(|t| t[0] as i64).collect();
        let columns = Tensor::<1, Int>::from_data(
            TensorData::new(columns, [targets.len()]),
            &log_probs.device(),
        );
        log_probs
            .narrow(1, 0, 1)
            .reshape([rows, outputs])
            .select(1, columns)
    } else {
        let batch: Vec<Example> = examples
            .iter()
            .flat_map(|e| {
                targets.iter().map(|t| Example {
                    target_ids: t.clone(),
                    ..e.clone()
                })
            })
            .collect();
        model
            .target_logprobs(&batch)?
            .sum_dim(1)
            .reshape([examples.len(), targets.len()])
    };
    // log-sum-exp with the (constant) row maximum taken out for stability.
    let max = scores.clone().max_dim(1).detach();
    let lse = (scores.clone() - max.clone()).exp().sum_dim(1).log() + max;
    Ok(scores - lse)
}

/// The objective `Σ_{(t,c) ∈ picks} log p_t(c | x)` as weighted token classes per target
/// sequence of a model's own backward pass, given each sequence's log-softmax rows.
fn objective(outputs: &Outputs, rows: &[&[f32]], picks: &[Pick]) -> Result<Vec<WeightedClasses>> {
    match outputs {
        Outputs::Tokens => Ok(vec![picks.iter().map(|&(t, c)| (t, c, 1.0)).collect()]),
        Outputs::Labels { targets, .. } => {
            // log p(label k) = S_k − logsumexp(S), S_k = Σ_t log p(target_k,t). The
            // objective Σ_k m_k log p(k) has dS_k = m_k − (Σ m) softmax(S)_k, and each
            // S_k is a sum of token log-probabilities of label k's sequence.
            let mut counts = vec![0f32; targets.len()];
            for &(t, c) in picks {
                ensure!(t == 0 && c < targets.len(), "class ({t}, {c}) out of range");
                counts[c] += 1.0;
            }
            let vocab = rows[0].len() / targets[0].len();
            let scores: Vec<f64> = targets
                .iter()
                .zip(rows)
                .map(|(target, row)| {
                    target
                        .iter()
                        .enumerate()
                        .map(|(t, &id)| f64::from(row[t * vocab + id as usize]))
                        .sum()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let total: f32 = counts.iter().sum();
            Ok(targets
                .iter()
                .zip(&scores)
                .zip(&counts)
                .map(|((target, score), &count)| {
                    let weight = count - total * ((score - max).exp() / sum) as f32;
                    target
                        .iter()
                        .enumerate()
                        .map(|(t, &id)| (t, id as usize, weight))
                        .collect()
                })
                .collect())
        }
    }
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading model outputs: {e:?}"))
}

impl<M: LogProbModel> GradientModel for ModelGradients<'_, M> {
    type Example = Item;

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn log_probs(&self, item: &Item) -> Result<Vec<Vec<f32>>> {
        let lp = self.forward(item)?.detach();
        let [_, classes] = lp.dims();
        Ok(to_vec(lp)?.chunks(classes).map(<[f32]>::to_vec).collect())
    }

    fn log_probs_batch(&self, items: &[Item]) -> Result<Vec<Vec<Vec<f32>>>> {
        output_log_probs(self.model, &self.outputs, items)
    }

    fn grad(&self, item: &Item, picks: &[Pick]) -> Result<Vec<f32>> {
        if self.backprop.is_some() {
            let mut grad = None;
            self.grads_each(item, &[picks.to_vec()], &mut |_, g| {
                grad = Some(g);
                Ok(())
            })?;
            return grad.context("the backward pass returned no gradient");
        }
        let lp = self.forward(item)?;
        let [positions, classes] = lp.dims();
        // Σ over picks as a weighted sum with a count mask (one backward pass).
        let mut mask = vec![0f32; positions * classes];
        for &(t, c) in picks {
            ensure!(
                t < positions && c < classes,
                "class ({t}, {c}) out of range"
            );
            mask[t * classes + c] += 1.0;
        }
        let mask = Tensor::<2>::from_data(
            TensorData::new(mask, [positions, classes]),
            (&lp.device(), lp.dtype()),
        );
        let objective = (lp * mask).sum();
        let grads = objective.backward();
        let named = self
            .model
            .gradients(&grads)
            .context("reading per-parameter gradients")?;
        let mut flat = Vec::with_capacity(crate::param_count(&self.params));
        for (_, g) in named {
            flat.extend_from_slice(&g);
        }
        Ok(flat)
    }

    fn grads_each(
        &self,
        item: &Item,
        picks: &[Vec<Pick>],
        each: &mut EachGradient<'_>,
    ) -> Result<()> {
        let Some(backprop) = &self.backprop else {
            return crate::grads_one_by_one(self, item, picks, each);
        };
        let targets = match &self.outputs {
            Outputs::Tokens => std::slice::from_ref(&item.example.target_ids),
            Outputs::Labels { targets, .. } => targets.as_slice(),
        };
        backprop.gradients(
            &item.example,
            targets,
            &mut |rows| {
                picks
                    .iter()
                    .map(|picks| objective(&self.outputs, rows, picks))
                    .collect()
            },
            each,
        )
    }

    fn observed(&self, item: &Item) -> Result<Vec<Pick>> {
        Ok(match &self.outputs {
            Outputs::Labels { .. } => vec![(
                0,
                item.label
                    .context("the empirical Fisher needs each example's label")?,
            )],
            Outputs::Tokens => item
                .example
                .target_ids
                .iter()
                .enumerate()
                .map(|(t, &c)| (t, c as usize))
                .collect(),
        })
    }
}
