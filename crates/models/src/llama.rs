//! The registry entry of Llama-family causal LMs (`fisherkit-llama`).

use std::path::Path;

use anyhow::{Context, Result};
use fisherkit_llama::{checkpoint, LlamaConfig, MODEL_TYPE, PRESETS};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::Model;
use serde_json::Value;

use crate::Architecture;

pub const ENTRY: Architecture = Architecture {
    model_types: &[MODEL_TYPE],
    architectures: &["LlamaForCausalLM"],
    load,
    init,
    presets: PRESETS,
    preset: LlamaConfig::preset,
};

fn load(dir: &Path, device: &Device) -> Result<Box<dyn Model>> {
    Ok(Box::new(checkpoint::load(dir, device)?))
}

fn init(config: &Value, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
    let config = LlamaConfig::from_json(config).context("invalid Llama config")?;
    Ok(Box::new(checkpoint::init(&config, seed, device)?))
}
