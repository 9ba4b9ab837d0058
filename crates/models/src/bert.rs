//! The registry entry of BERT and RoBERTa (`fisherkit-bert`).

use std::path::Path;

use anyhow::{Context, Result};
use fisherkit_bert::{checkpoint, BertConfig, MODEL_TYPES, PRESETS};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::Model;
use serde_json::Value;

use crate::Architecture;

pub const ENTRY: Architecture = Architecture {
    model_types: &MODEL_TYPES,
    architectures: &[
        "BertModel",
        "BertForSequenceClassification",
        "RobertaModel",
        "RobertaForSequenceClassification",
    ],
    load,
    init,
    presets: PRESETS,
    preset: BertConfig::preset,
};

fn load(dir: &Path, device: &Device) -> Result<Box<dyn Model>> {
    Ok(Box::new(checkpoint::load(dir, device)?))
}

fn init(config: &Value, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
    let config = BertConfig::from_json(config).context("invalid BERT/RoBERTa config")?;
    Ok(Box::new(checkpoint::init(&config, seed, device)?))
}
