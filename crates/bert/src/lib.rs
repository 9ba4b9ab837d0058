//! BERT and RoBERTa encoders on burn: Hugging Face checkpoints (bare encoders and
//! sequence classifiers), classification, sentence embeddings.
//!
//! - [`BertConfig`]: `config.json`, kept whole so that saving writes back every key.
//! - [`Bert`]: the model, assembled from `fisherkit_nn` parts, implementing the
//!   architecture-neutral [`fisherkit_model::Model`]: a classifier's output distribution
//!   is its classes (one target position; the target is the class index), so Fishers,
//!   merging and training run on it unchanged.
//! - [`checkpoint`]: load/save of the HF layout, reference initialisation, a new head on
//!   a pre-trained encoder.
//! - [`pooling`]: sentence-transformers' pooling and normalisation.

pub mod backprop;
pub mod checkpoint;
pub mod config;
pub mod model;
pub mod pooling;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::tokenizer::TOKENIZER_FILE;
use fisherkit_model::{
    Example, GenerateOptions, LoadModel, LogProbModel, Model, SpecialTokens, TextTokenizer,
};

pub use config::{BertConfig, Family, MODEL_TYPES, PRESETS};
pub use model::{Bert, Head};

impl LogProbModel for Bert {
    fisherkit_model::burn_module_log_prob_basics!();

    /// The number of classes (0 for a bare encoder).
    fn output_size(&self) -> usize {
        self.labels().len()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save(self, dir, None, true).map(|_| ())
    }

    fn example_backprop(&self) -> Option<Box<dyn fisherkit_model::ExampleBackprop>> {
        backprop::BertBackprop::new(self).map(|b| Box::new(b) as _)
    }
}

impl Model for Bert {
    fn model_type(&self) -> &str {
        self.config.family.model_type()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// BERT has no end-of-sequence token; its tokenizer's post-processor places `[SEP]`
    /// (RoBERTa: `</s>`, its `eos_token_id`).
    fn special_tokens(&self) -> SpecialTokens {
        let pad = self.config.pad_token_id;
        SpecialTokens {
            pad,
            eos: match self.config.family {
                Family::Roberta => 2,
                Family::Bert => pad,
            },
            decoder_start: None,
        }
    }

    fn check_ids(&self, ids: &[u32], what: &str) -> Result<()> {
        self.config.check_ids(ids, what)
    }

    /// The head's logits as `[batch, 1, classes]`.
    fn logits(&self, batch: &[Example]) -> Result<Tensor<3>> {
        let logits = self.class_logits(batch)?;
        let [rows, classes] = logits.dims();
        Ok(logits.reshape([rows, 1, classes]))
    }

    fn dropout(&self) -> f64 {
        self.config.hidden_dropout_prob
    }

    /// Sets both of BERT's rates (hidden and attention probabilities).
    fn set_dropout(&mut self, rate: f64) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&rate),
            "dropout must be in [0, 1), got {rate}"
        );
        self.config.hidden_dropout_prob = rate;
        self.config.attention_probs_dropout_prob = rate;
        Ok(())
    }

    fn generate(&self, _: &[Vec<u32>], _: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        bail!(
            "{} is an encoder: it classifies and embeds but does not generate text",
            self.config.family.model_type()
        )
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

    /// Embeddings are lookups; per layer the four attention projections, the two
    /// attention products and the feed-forward; then the head on the first token.
    fn forward_flops(&self, batch: usize, input_len: usize, _target_len: usize) -> f64 {
        let c = &self.config;
        let (d, ff, n) = (
            c.hidden_size as f64,
            c.intermediate_size as f64,
            input_len as f64,
        );
        let layer = n * (4.0 * d * d + 2.0 * d * ff) + 2.0 * n * n * d;
        let head = d * d * 2.0 + d * self.labels().len() as f64;
        2.0 * batch as f64 * (c.num_hidden_layers as f64 * layer + head)
    }

    fn dominant_matmul(&self, rows: usize) -> [usize; 3] {
        [rows, self.config.hidden_size, self.config.intermediate_size]
    }

    /// `tokenizer.json` truncating at the longest input the positions reach, or
    /// sentence-transformers' `max_seq_length` when `sentence_bert_config.json` is there.
    fn tokenizer_in(&self, dir: &Path) -> Result<Option<TextTokenizer>> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let max_len = pooling::max_seq_length(dir)?
            .unwrap_or(self.config.max_len())
            .min(self.config.max_len());
        Ok(Some(TextTokenizer::load_encoder(&path, max_len)?))
    }

    fn class_labels(&self) -> &[String] {
        self.labels()
    }

    fn encoder_states(&self, batch: &[Example]) -> Result<(Tensor<3>, Tensor<2>)> {
        self.hidden_states(batch)
    }
}

impl LoadModel for Bert {
    fn load(dir: &Path, device: &Device) -> Result<Self> {
        checkpoint::load(dir, device)
    }
}
