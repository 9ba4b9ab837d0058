//! The registry entry of T5 (`fisherkit-t5`).

use std::path::Path;

use anyhow::{Context, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::Model;
use fisherkit_t5::config::PRESETS;
use fisherkit_t5::{checkpoint, T5Config, MODEL_TYPE};
use serde_json::Value;

use crate::Architecture;

pub const ENTRY: Architecture = Architecture {
    model_types: &[MODEL_TYPE],
    architectures: &["T5ForConditionalGeneration", "T5WithLMHeadModel"],
    load,
    init,
    presets: PRESETS,
    preset,
};

fn load(dir: &Path, device: &Device) -> Result<Box<dyn Model>> {
    Ok(Box::new(checkpoint::load(dir, device)?))
}

fn init(config: &Value, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
    let config: T5Config =
        serde_json::from_value(config.clone()).context("not a valid T5 config")?;
    config.validate().context("invalid T5 config")?;
    let untied = !config.tie_word_embeddings;
    Ok(Box::new(checkpoint::init(&config, untied, seed, device)?))
}

fn preset(name: &str) -> Result<Value> {
    Ok(serde_json::to_value(T5Config::preset(name)?)?)
}
