//! [`GradientModel`] for any model behind the fisherkit model interface.

use crate::{GradientModel, ParamSpec, Pick};
use anyhow::{ensure, Context, Result};
use fisherkit_model::burn::tensor::{Tensor, TensorData};
use fisherkit_model::{Example, LogProbModel, ParamAccess};

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

/// A model on an autodiff device, seen as a [`GradientModel`].
pub struct ModelGradients<'a, M> {
    model: &'a M,
    outputs: Outputs,
    params: Vec<ParamSpec>,
}

impl<'a, M: LogProbModel> ModelGradients<'a, M> {
    pub fn new(model: &'a M, outputs: Outputs) -> Result<Self> {
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
        })
    }

    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// The differentiable per-position log-probabilities: `[positions, classes]`.
    fn forward(&self, item: &Item) -> Result<Tensor<2>> {
        match &self.outputs {
            Outputs::Labels { targets, .. } => {
                let batch: Vec<Example> = targets
                    .iter()
                    .map(|t| Example {
                        input_ids: item.example.input_ids.clone(),
                        target_ids: t.clone(),
                    })
                    .collect();
                // Sequence log-likelihood of each label, normalised over the labels.
                let scores: Tensor<1> = self
                    .model
                    .target_logprobs(&batch)?
                    .sum_dim(1)
                    .squeeze_dim(1);
                let max = scores.clone().max().detach();
                let lse = (scores.clone() - max.clone()).exp().sum().log() + max;
                Ok((scores - lse).unsqueeze_dim(0))
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

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading model outputs: {e:?}"))
}

impl<M: LogProbModel + Sync> GradientModel for ModelGradients<'_, M> {
    type Example = Item;

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn log_probs(&self, item: &Item) -> Result<Vec<Vec<f32>>> {
        let lp = self.forward(item)?.detach();
        let [_, classes] = lp.dims();
        Ok(to_vec(lp)?.chunks(classes).map(<[f32]>::to_vec).collect())
    }

    fn grad(&self, item: &Item, picks: &[Pick]) -> Result<Vec<f32>> {
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
        Ok(named.into_iter().flat_map(|(_, g)| g).collect())
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
