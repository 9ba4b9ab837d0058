//! T5 encoder–decoder on burn: Hugging Face checkpoints, exact teacher-forced scoring,
//! greedy and beam decoding — and the T5 paper's decoder-only and prefix LMs from the
//! same parts (config `architecture`).
//!
//! - [`T5Config`]: `config.json` with HF defaults, and presets.
//! - [`T5`]: the model (v1.0 and v1.1/Flan), implementing the architecture-neutral
//!   [`fisherkit_model::Model`] (the loader registry `fisherkit-models` hands it out).
//! - [`checkpoint`]: load/save of the HF layout, reference initialisation.
//! - generation: [`fisherkit_model::generate`] over the model's
//!   [`IncrementalDecoder`](fisherkit_model::generate::IncrementalDecoder) (cached keys/values).
//! - [`backprop`]: per-example gradients by a hand-written backward pass (CPU, f32).

pub mod backprop;
pub mod checkpoint;
pub mod config;
pub mod flops;
pub mod model;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::{Example, LoadModel, LogProbModel, Model, SpecialTokens};

pub use config::T5Config;
pub use fisherkit_model::{score, GenerateOptions, LengthPenalty, TextTokenizer};
pub use model::{relative_position_bucket, T5};

/// `config.json`'s `model_type` of T5 checkpoints.
pub const MODEL_TYPE: &str = "t5";

impl LogProbModel for T5 {
    fisherkit_model::burn_module_log_prob_basics!();

    fn output_size(&self) -> usize {
        self.config.vocab_size
    }

    fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(self, dir, None, true).map(|_| ())
    }

    fn checkpoint_names(&self, name: &str) -> Vec<String> {
        checkpoint::candidate_names(name)
    }

    fn example_backprop(&self) -> Option<Box<dyn fisherkit_model::ExampleBackprop>> {
        backprop::T5Backprop::new(self).map(|b| Box::new(b) as _)
    }
}

impl Model for T5 {
    fn model_type(&self) -> &str {
        MODEL_TYPE
    }

    fn forward_flops(&self, batch: usize, input_len: usize, target_len: usize) -> f64 {
        flops::forward(&self.config, batch, input_len, target_len)
    }

    fn dominant_matmul(&self, rows: usize) -> [usize; 3] {
        [rows, self.config.d_model, self.config.d_ff]
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            pad: self.config.pad_token_id,
            eos: self.config.eos_token_id,
            decoder_start: self
                .encoder
                .is_some()
                .then_some(self.config.decoder_start_token_id),
        }
    }

    fn check_ids(&self, ids: &[u32], what: &str) -> Result<()> {
        self.config.check_ids(ids, what)
    }

    fn logits(&self, batch: &[Example]) -> Result<Tensor<3>> {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input_ids.clone()).collect();
        let targets: Vec<Vec<u32>> = batch.iter().map(|e| e.target_ids.clone()).collect();
        self.teacher_forced_logits(&inputs, &targets)
    }

    fn dropout(&self) -> f64 {
        self.config.dropout_rate
    }

    fn set_dropout(&mut self, rate: f64) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&rate),
            "dropout must be in [0, 1), got {rate}"
        );
        // Dropout masks are drawn from the rate at every forward pass: no module holds it.
        self.config.dropout_rate = rate;
        Ok(())
    }

    fn generate(&self, inputs: &[Vec<u32>], options: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        fisherkit_model::generate::generate(self, inputs, options)
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        tokenizer: Option<&Path>,
        overwrite: bool,
    ) -> Result<PathBuf> {
        checkpoint::save(self, dir, tokenizer, overwrite)
    }

    fn encoder_states(&self, batch: &[Example]) -> Result<(Tensor<3>, Tensor<2>)> {
        ensure!(
            batch
                .iter()
                .all(|e| e.token_type_ids.iter().all(|&t| t == 0)),
            "T5 has no token types: give sentence pairs as one text"
        );
        let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input_ids.clone()).collect();
        // A single-stack LM has no encoder: `encode` says so.
        let encoded = self.encode(&inputs)?;
        Ok((
            encoded.hidden,
            fisherkit_nn::attention::token_mask(encoded.additive_mask),
        ))
    }

    fn is_decoder_only(&self) -> bool {
        self.encoder.is_none()
    }

    fisherkit_model::burn_module_without_autodiff!();
}

impl LoadModel for T5 {
    fn load(dir: &Path, device: &Device) -> Result<Self> {
        checkpoint::load(dir, device)
    }
}
