//! Llama-family causal language models on burn (`LlamaForCausalLM`): Hugging Face
//! checkpoints, exact teacher-forced scoring, greedy/sampled/beam generation with a
//! key/value cache, per-example gradients.
//!
//! - [`LlamaConfig`]: `config.json`, kept whole so that saving writes back every key.
//! - [`Llama`]: the model, assembled from `fisherkit_nn` parts, implementing the
//!   architecture-neutral [`fisherkit_model::Model`] as a decoder-only LM: an example's
//!   input and target form one sequence and the target is scored.
//! - [`checkpoint`]: load/save of the HF layout, reference initialisation.

pub mod checkpoint;
pub mod config;
pub mod model;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::{
    Example, ExampleBackprop, GenerateOptions, LoadModel, LogProbModel, Model, SpecialTokens,
};
use fisherkit_nn::attention::Mask;
use fisherkit_nn::cpu::Binder;
use fisherkit_nn::lm::CpuDecoder;

pub use config::{LlamaConfig, MODEL_TYPE, PRESETS};
pub use model::Llama;

impl LogProbModel for Llama {
    fisherkit_model::burn_module_log_prob_basics!();

    fn output_size(&self) -> usize {
        self.config.vocab_size
    }

    fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(self, dir, None, true).map(|_| ())
    }

    fn example_backprop(&self) -> Option<Box<dyn ExampleBackprop>> {
        if self.training {
            return None;
        }
        let binder = Binder::new(self)?;
        let decoder = self.output_head().bind_decoder(&self.body, &binder);
        Some(Box::new(LlamaBackprop {
            config: self.config.clone(),
            decoder,
            binder,
        }))
    }
}

/// The per-example backward pass: the shared single-stack one, causal.
struct LlamaBackprop {
    config: LlamaConfig,
    decoder: CpuDecoder,
    binder: Binder,
}

impl ExampleBackprop for LlamaBackprop {
    fn gradients(
        &self,
        example: &Example,
        targets: &[Vec<u32>],
        objectives: &mut fisherkit_model::ChooseObjectives<'_>,
        each: &mut fisherkit_model::EachGradient<'_>,
    ) -> Result<()> {
        ensure!(
            example.token_type_ids.iter().all(|&t| t == 0),
            "Llama has no token types"
        );
        let input = &example.input_ids;
        self.config.check_ids(input, "input")?;
        for target in targets {
            self.config.check_ids(target, "target")?;
            self.config.check_length(input.len() + target.len() - 1)?;
        }
        let causal = |_| Mask::Causal;
        self.decoder
            .lm_gradients(&self.binder, input, targets, causal, objectives, each)
    }
}

impl Model for Llama {
    fn model_type(&self) -> &str {
        MODEL_TYPE
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            pad: self.config.pad_token_id,
            eos: self.config.eos_token_id,
            decoder_start: None,
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
        self.config.attention_dropout
    }

    fn set_dropout(&mut self, rate: f64) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&rate),
            "dropout must be in [0, 1), got {rate}"
        );
        self.config.attention_dropout = rate;
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

    fisherkit_model::burn_module_without_autodiff!();

    /// One causal stack over `input_len + target_len − 1` positions: per layer the four
    /// projections (k and v over the key/value heads), the two attention products and
    /// the three feed-forward matrices; the head over the target positions.
    fn forward_flops(&self, batch: usize, input_len: usize, target_len: usize) -> f64 {
        let c = &self.config;
        let d = c.hidden_size as f64;
        let inner = (c.num_attention_heads * c.head_dim) as f64;
        let kv_inner = (c.num_key_value_heads * c.head_dim) as f64;
        let len = (input_len + target_len).saturating_sub(1) as f64;
        let tokens = batch as f64 * len;
        let per_token = 2.0 * d * inner + 2.0 * d * kv_inner + 3.0 * d * c.intermediate_size as f64;
        let layer = tokens * per_token + 2.0 * batch as f64 * len * len * inner;
        let head = (batch * target_len) as f64 * d * c.vocab_size as f64;
        2.0 * (c.num_hidden_layers as f64 * layer + head)
    }

    fn dominant_matmul(&self, rows: usize) -> [usize; 3] {
        [rows, self.config.hidden_size, self.config.intermediate_size]
    }

    fn is_decoder_only(&self) -> bool {
        true
    }

    fn encoder_states(&self, _: &[Example]) -> Result<(Tensor<3>, Tensor<2>)> {
        anyhow::bail!("a Llama model is a decoder: it has no encoder states to embed")
    }
}

impl LoadModel for Llama {
    fn load(dir: &Path, device: &Device) -> Result<Self> {
        checkpoint::load(dir, device)
    }
}
