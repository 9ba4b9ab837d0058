//! T5 encoder–decoder on burn: Hugging Face checkpoints, exact teacher-forced scoring,
//! greedy and beam decoding.
//!
//! - [`T5Config`]: `config.json` with HF defaults, and presets.
//! - [`T5`]: the model (v1.0 and v1.1/Flan), implementing the architecture-neutral
//!   [`fisherkit_model::LogProbModel`].
//! - [`checkpoint`]: load/save of the HF layout, reference initialisation.
//! - [`generate`]: greedy and beam search with cached keys/values.
//! - [`score`]: per-token target log-probabilities.
//! - [`backprop`]: per-example gradients by a hand-written backward pass (CPU, f32).

pub mod backprop;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod generate;
pub mod model;
pub mod tokenizer;

use std::path::Path;

use anyhow::Result;
use fisherkit_model::burn::tensor::activation::log_softmax;
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::{Example, LoadModel, LogProbModel, ParamMut, ParamRef};

pub use config::T5Config;
pub use generate::{generate, GenerateOptions, LengthPenalty};
pub use model::{relative_position_bucket, T5};
pub use tokenizer::TextTokenizer;

impl LogProbModel for T5 {
    fn named_params(&self) -> Vec<(String, ParamRef<'_>)> {
        T5::named_params(self)
    }

    fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        T5::named_params_mut(self)
    }

    fn device(&self) -> Device {
        T5::device(self)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn output_size(&self) -> usize {
        self.config.vocab_size
    }

    fn log_softmax(&self, batch: &[Example]) -> Result<Tensor<3>> {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input_ids.clone()).collect();
        let targets: Vec<Vec<u32>> = batch.iter().map(|e| e.target_ids.clone()).collect();
        Ok(log_softmax(
            self.teacher_forced_logits(&inputs, &targets)?,
            2,
        ))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(self, dir, None, true).map(|_| ())
    }

    fn example_backprop(&self) -> Option<Box<dyn fisherkit_model::ExampleBackprop>> {
        backprop::T5Backprop::new(self).map(|b| Box::new(b) as _)
    }
}

impl LoadModel for T5 {
    fn load(dir: &Path, device: &Device) -> Result<Self> {
        checkpoint::load(dir, device)
    }
}

/// Teacher-forced per-token log-probabilities of each example's target, in order.
pub fn score(model: &T5, batch: &[Example]) -> Result<Vec<Vec<f32>>> {
    let log_probs = model.target_logprobs(batch)?;
    let [rows, len] = log_probs.dims();
    let values = log_probs
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))?;
    Ok((0..rows)
        .map(|r| values[r * len..r * len + batch[r].target_ids.len()].to_vec())
        .collect())
}
