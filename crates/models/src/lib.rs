//! The loader registry: the one place that maps a checkpoint's `config.json` to the
//! architecture that reads it. Everything above the model crates (training, Fishers,
//! merge search, experiments, the CLI) gets its models here, as `Box<dyn Model>`.
//!
//! A checkpoint is matched by `config.json`'s `model_type` (e.g. `t5`) or, failing that,
//! by an entry of its `architectures` list (e.g. `T5ForConditionalGeneration`). Adding an
//! architecture is its module (a crate implementing [`Model`]) plus one [`Architecture`]
//! entry in [`ARCHITECTURES`].

mod bert;
mod llama;
mod t5;

use std::path::Path;

use anyhow::{bail, Context, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::Model;
use serde_json::Value;

/// The checkpoint file the registry reads to choose an architecture.
pub const CONFIG_FILE: &str = "config.json";

/// One architecture the registry can load and initialise.
pub struct Architecture {
    /// `config.json` `model_type` values this architecture reads.
    pub model_types: &'static [&'static str],
    /// `config.json` `architectures` entries this architecture reads (checkpoints without
    /// a `model_type`).
    pub architectures: &'static [&'static str],
    /// Load a checkpoint directory onto a device.
    pub load: fn(&Path, &Device) -> Result<Box<dyn Model>>,
    /// A randomly initialised model (the architecture's reference initialisation,
    /// reproducible from the seed) of a `config.json` value; missing keys take the
    /// architecture's defaults.
    pub init: fn(&Value, u64, &Device) -> Result<Box<dyn Model>>,
    /// Named shapes (`fisherkit init --preset`, benchmarks).
    pub presets: &'static [&'static str],
    /// The `config.json` value of a preset named in `presets`.
    pub preset: fn(&str) -> Result<Value>,
}

/// Every architecture fisherkit knows.
pub const ARCHITECTURES: &[Architecture] = &[t5::ENTRY, bert::ENTRY, llama::ENTRY];

/// The `model_type`s of [`ARCHITECTURES`], for error messages.
pub fn known_model_types() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.model_types.iter().copied())
        .collect()
}

/// The architecture of a `config.json` value; `source` names where it came from in
/// errors.
pub fn architecture_of(config: &Value, source: &str) -> Result<&'static Architecture> {
    let known = || known_model_types().join(", ");
    if let Some(model_type) = config.get("model_type") {
        let model_type = model_type
            .as_str()
            .with_context(|| format!("{source}: \"model_type\" is {model_type}, not a string"))?;
        return ARCHITECTURES
            .iter()
            .find(|a| a.model_types.contains(&model_type))
            .with_context(|| {
                format!(
                    "{source}: model_type {model_type:?} is not supported; known model types: {}",
                    known()
                )
            });
    }
    let names: Vec<&str> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        bail!(
            "{source}: neither \"model_type\" nor \"architectures\" says which model this is; known model types: {}",
            known()
        );
    }
    ARCHITECTURES
        .iter()
        .find(|a| names.iter().any(|n| a.architectures.contains(n)))
        .with_context(|| {
            format!(
                "{source}: architectures {names:?} are not supported; known model types: {} (architectures {})",
                known(),
                ARCHITECTURES
                    .iter()
                    .flat_map(|a| a.architectures.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Read a checkpoint directory's `config.json` as JSON.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a model directory needs a {CONFIG_FILE}; known model types: {})",
            path.display(),
            known_model_types().join(", ")
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Load the checkpoint in `dir` onto `device` with the architecture its `config.json`
/// names. Dropout is off (evaluation mode) after loading.
pub fn load(dir: &Path, device: &Device) -> Result<Box<dyn Model>> {
    let config = read_config(dir)?;
    let architecture = architecture_of(&config, &dir.join(CONFIG_FILE).display().to_string())?;
    (architecture.load)(dir, device)
        .with_context(|| format!("loading the model in {}", dir.display()))
}

/// A randomly initialised model of a `config.json` value (its `model_type` chooses the
/// architecture).
pub fn init(config: &Value, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
    (architecture_of(config, "the model config")?.init)(config, seed, device)
}

/// The `config.json` value of a named preset of any architecture.
pub fn preset(name: &str) -> Result<Value> {
    match ARCHITECTURES.iter().find(|a| a.presets.contains(&name)) {
        Some(architecture) => (architecture.preset)(name),
        None => bail!(
            "unknown preset {name:?}; known: {}",
            ARCHITECTURES
                .iter()
                .flat_map(|a| a.presets.iter().copied())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
