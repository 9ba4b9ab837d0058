//! Hugging Face checkpoint directories: `config.json` + `model.safetensors` or sharded
//! `model.safetensors.index.json`, loading with the tied/untied name fallbacks and saving
//! in exactly the layout `transformers` reads. Also the reference random initialisation.

use std::path::{Path, PathBuf};

use anyhow::Result;
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::checkpoint::{initialise, save_hf, HfWeights, Init};

use crate::config::{ResidualKind, T5Config};
use crate::model::T5;

pub use fisherkit_model::checkpoint::{CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE};
pub use fisherkit_model::tokenizer::TOKENIZER_FILE;

/// Unused tensor some checkpoints carry (cross-attention has no position bias).
const IGNORED: &str = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight";

/// Names under which a parameter may be stored, preferred first (the one list the
/// loader and, through [`fisherkit_model::LogProbModel::checkpoint_names`], the merge
/// evaluator use).
pub fn candidate_names(name: &str) -> Vec<String> {
    let mut names = vec![name.to_string()];
    match name {
        "shared.weight" => {
            names.push("encoder.embed_tokens.weight".into());
            names.push("decoder.embed_tokens.weight".into());
        }
        // Some exports name the untied head after the decoder embedding.
        "lm_head.weight" => names.push("decoder.lm_head.weight".into()),
        _ => {}
    }
    names
}

/// Load a checkpoint directory onto `device` (weights upcast to f32).
pub fn load(dir: &Path, device: &Device) -> Result<T5> {
    let config = T5Config::load(&dir.join(CONFIG_FILE))?;
    let weights = HfWeights::open(dir)?;
    // An untied head is what the checkpoint has; transformers ≥ 5 writes
    // `tie_word_embeddings: true` even for v1.1 and omits lm_head when it equals shared.
    let untied = weights.contains("lm_head.weight") || weights.contains("decoder.lm_head.weight");
    let mut model = T5::skeleton(&config, untied, device)?;
    weights.fill(dir, model.named_params_mut(), candidate_names, |name| {
        name == IGNORED || name.ends_with("embed_tokens.weight")
    })?;
    Ok(model)
}

/// Save `model` into `dir` in the Hugging Face layout (see [`save_hf`]).
pub fn save(model: &T5, dir: &Path, tokenizer: Option<&Path>, overwrite: bool) -> Result<PathBuf> {
    let mut config = model.config().clone();
    config.tie_word_embeddings = model.lm_head.is_none();
    config.scale_decoder_outputs = Some(model.config().scales_decoder_output());
    save_hf(model, &config.to_hf_json(), dir, tokenizer, overwrite)
}

/// The reference initialisation of each parameter (HF / mesh TF: normal with a per-kind
/// standard deviation, norm weights 1), and for the switches' parameters: biases and
/// ReZero's α 0, absolute positions like token embeddings, a factorised embedding's
/// projection `width^-½`; with Fixup, each residual branch's last projection (`o`, `wo`)
/// 0, its other projections scaled by `L^-½` (L residual branches, two layers each) and
/// its multiplier 1.
fn init_of(name: &str, config: &T5Config) -> Result<Init> {
    let factor = config.initializer_factor;
    let d_model = config.d_model as f64;
    let fixup = config.norm_type()?.residual == ResidualKind::Fixup;
    let mut parts = name.rsplit('.');
    let (last, leaf) = (parts.next().unwrap_or(name), parts.next().unwrap_or(name));
    match last {
        "residual_scale" if fixup => return Ok(Init::Ones),
        "bias" | "residual_scale" | "residual_bias_in" | "residual_bias_out" => {
            return Ok(Init::Zeros)
        }
        _ => {}
    }
    let branches = if config.is_single_stack() {
        2 * config.decoder_layers()
    } else {
        2 * config.num_layers + 3 * config.decoder_layers()
    };
    let branch_scale = match leaf {
        "o" | "wo" if fixup => return Ok(Init::Zeros),
        "q" | "k" | "v" | "wi" | "wi_0" | "wi_1" if fixup => (branches as f64).powf(-0.5),
        _ => 1.0,
    };
    let std = match leaf {
        "shared" | "lm_head" | "embed_positions" => 1.0,
        "projection" => (config.embedding_width() as f64).powf(-0.5),
        "q" => (d_model * config.d_kv as f64).powf(-0.5),
        // The router as the input projections (unit-variance logits over normed inputs;
        // HF's SwitchTransformers draws std 1, which makes routing nearly one-hot).
        "k" | "v" | "relative_attention_bias" | "wi" | "wi_0" | "wi_1" | "classifier" => {
            d_model.powf(-0.5)
        }
        "o" => (config.inner_dim() as f64).powf(-0.5),
        "wo" => (config.d_ff as f64).powf(-0.5),
        _ => return Ok(Init::Ones),
    };
    Ok(Init::Normal(factor * std * branch_scale))
}

/// A randomly initialised model with the reference initialisation, reproducible from
/// `seed` (see [`initialise`]).
pub fn init(config: &T5Config, untied_lm_head: bool, seed: u64, device: &Device) -> Result<T5> {
    let mut model = T5::skeleton(config, untied_lm_head, device)?;
    initialise(model.named_params_mut(), seed, |name| init_of(name, config))?;
    Ok(model)
}
