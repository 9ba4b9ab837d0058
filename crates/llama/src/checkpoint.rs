//! Hugging Face `LlamaForCausalLM` checkpoint directories: loading (single or sharded
//! safetensors, tied or untied head), saving in the layout `transformers` reads, and the
//! reference initialisation.

use std::path::{Path, PathBuf};

use anyhow::Result;
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::checkpoint::{initialise, save_hf, HfWeights, Init, CONFIG_FILE};

use crate::config::LlamaConfig;
use crate::model::Llama;

const HEAD: &str = "lm_head.weight";
const EMBEDDING: &str = "model.embed_tokens.weight";

/// Load a checkpoint directory onto `device`. The head is tied when the config says so
/// (a stored `lm_head.weight` is then ignored, as transformers ties it) or when the
/// checkpoint has none.
pub fn load(dir: &Path, device: &Device) -> Result<Llama> {
    let config = LlamaConfig::load(&dir.join(CONFIG_FILE))?;
    let weights = HfWeights::open(dir)?;
    weights.expect_shape(dir, EMBEDDING, &[config.vocab_size, config.hidden_size])?;
    let tied = config.tie_word_embeddings || !weights.contains(HEAD);
    let mut model = Llama::skeleton(&config, tied, device)?;
    let names = |name: &str| vec![name.to_string()];
    // Rotary frequency buffers some exports carry are recomputed from rope_theta.
    let ignored = |name: &str| name.ends_with("rotary_emb.inv_freq") || (tied && name == HEAD);
    weights.fill(dir, model.named_params_mut(), names, ignored)?;
    Ok(model)
}

/// Save `model` into `dir` in the Hugging Face layout (see [`save_hf`]).
pub fn save(
    model: &Llama,
    dir: &Path,
    tokenizer: Option<&Path>,
    overwrite: bool,
) -> Result<PathBuf> {
    let config = model.config().to_json(model.lm_head.is_none());
    save_hf(model, &config, dir, tokenizer, overwrite)
}

/// A randomly initialised model with transformers' initialisation (projections and
/// embeddings normal(0, `initializer_range`), biases 0, RMSNorm weights 1), reproducible
/// from `seed`.
pub fn init(config: &LlamaConfig, seed: u64, device: &Device) -> Result<Llama> {
    let mut model = Llama::skeleton(config, config.tie_word_embeddings, device)?;
    initialise(model.named_params_mut(), seed, |name| {
        Ok(if name.ends_with(".bias") {
            Init::Zeros
        } else if name.ends_with("norm.weight") {
            Init::Ones
        } else {
            Init::Normal(config.initializer_range)
        })
    })?;
    Ok(model)
}
