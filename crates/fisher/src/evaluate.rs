//! Scoring candidate merges with the model itself: the [`fisherkit_merge::search::Evaluator`]
//! behind `fisherkit merge --search`. One model is loaded once; each candidate's merged
//! tensors are written into it in memory and it is scored on held-out data.

use crate::model::{label_log_probs, to_vec, Item, Outputs};
use anyhow::{bail, ensure, Context, Result};
use fisherkit_merge::search::{Evaluator, MergedTensors};
use fisherkit_model::{Example, LogProbModel, ParamAccess};
use std::fmt;
use std::str::FromStr;

/// What a candidate merge is scored by (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Rank classification: the fraction of examples whose observed label has the
    /// highest label-sequence probability (needs label outputs).
    Accuracy,
    /// Mean log p(target | input): the target's summed token log-likelihood, or with
    /// label outputs the label-normalised log-probability of the observed label.
    LogProb,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::LogProb => "logprob",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "accuracy" => Metric::Accuracy,
            "logprob" => Metric::LogProb,
            other => bail!("unknown metric {other:?} (expected accuracy or logprob)"),
        })
    }
}

/// A model (on a non-autodiff device) scored on a fixed set of examples.
pub struct ModelEvaluator<M> {
    model: M,
    outputs: Outputs,
    items: Vec<Item>,
    metric: Metric,
    batch_size: usize,
}

impl<M: LogProbModel> ModelEvaluator<M> {
    pub fn new(
        model: M,
        outputs: Outputs,
        items: Vec<Item>,
        metric: Metric,
        batch_size: usize,
    ) -> Result<Self> {
        ensure!(
            batch_size >= 1,
            "the evaluation batch size must be at least 1"
        );
        ensure!(!items.is_empty(), "no evaluation examples");
        if metric == Metric::Accuracy {
            ensure!(
                matches!(outputs, Outputs::Labels { .. }),
                "--metric accuracy ranks label strings: give --labels a,b,... (or use --metric logprob)"
            );
        }
        Ok(Self {
            model,
            outputs,
            items,
            metric,
            batch_size,
        })
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The model as last loaded (e.g. to decode with a merge just scored).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Overwrite the model's parameters with a merge's tensors (by checkpoint name).
    pub fn load_merged(&mut self, merged: &MergedTensors) -> Result<()> {
        let mut values = Vec::new();
        for spec in self.model.param_specs() {
            let (found, (shape, data)) = self
                .model
                .checkpoint_names(&spec.name)
                .into_iter()
                .find_map(|n| merged.get(&n).map(|t| (n, t)))
                .with_context(|| {
                    format!(
                        "the merged model has no tensor {} that the evaluation model needs",
                        spec.name
                    )
                })?;
            ensure!(
                *shape == spec.shape,
                "merged tensor {found} has shape {shape:?}, the evaluation model needs {:?}",
                spec.shape
            );
            values.push((spec.name, data.clone()));
        }
        self.model.write_params(&values)
    }

    /// The metric of the model's current parameters on `items`.
    pub fn score(&self, items: &[Item]) -> Result<f64> {
        let mut total = 0.0;
        for batch in items.chunks(self.batch_size) {
            let examples: Vec<Example> = batch.iter().map(|i| i.example.clone()).collect();
            match &self.outputs {
                Outputs::Labels { targets, .. } => {
                    let lp = to_vec(label_log_probs(&self.model, &examples, targets)?)?;
                    for (item, row) in batch.iter().zip(lp.chunks(targets.len())) {
                        let label = item.label.context("an evaluation example has no label")?;
                        total += match self.metric {
                            Metric::LogProb => f64::from(row[label]),
                            Metric::Accuracy => {
                                let best =
                                    (0..row.len())
                                        .fold(0, |b, c| if row[c] > row[b] { c } else { b });
                                f64::from(u8::from(best == label))
                            }
                        };
                    }
                }
                Outputs::Tokens => {
                    let lp = to_vec(self.model.target_logprobs(&examples)?.sum_dim(1))?;
                    total += lp.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
            }
        }
        Ok(total / items.len() as f64)
    }

    /// Score later candidates on other examples (e.g. the chosen merge on test data).
    pub fn replace_items(&mut self, items: Vec<Item>) {
        self.items = items;
    }
}

impl<M: LogProbModel> Evaluator for ModelEvaluator<M> {
    fn evaluate(&mut self, _weights: &[f64], merged: &MergedTensors) -> Result<f64> {
        self.load_merged(merged)?;
        let score = self.score(&self.items)?;
        ensure!(
            score.is_finite(),
            "the merged model's {} is not finite",
            self.metric
        );
        Ok(score)
    }
}
