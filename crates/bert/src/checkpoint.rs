//! Hugging Face BERT/RoBERTa checkpoint directories: loading (bare encoders and sequence
//! classifiers, single or sharded safetensors), saving in the layout `transformers`
//! reads, the reference initialisation, and a new head on a pre-trained encoder.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::checkpoint::{initialise, save_hf, HfWeights, Init, CONFIG_FILE};
use fisherkit_model::ParamAccess;

use crate::config::{BertConfig, Family};
use crate::model::{Bert, Head};

/// Checkpoint tensors that are buffers, not parameters (`position_ids`) or unused.
fn ignored(name: &str) -> bool {
    name.ends_with("embeddings.position_ids") || name.ends_with("embeddings.token_type_ids")
}

/// Load a checkpoint directory onto `device`. The head is what the weights hold: a
/// `classifier` makes a sequence classifier (BERT: `classifier.weight`, RoBERTa:
/// `classifier.out_proj.weight`), its rows the classes; otherwise a bare encoder.
pub fn load(dir: &Path, device: &Device) -> Result<Bert> {
    let config_path = dir.join(CONFIG_FILE);
    let mut config = BertConfig::load(&config_path)?;
    let weights = HfWeights::open(dir)?;
    let prefix = config.family.body_prefix();
    let head = match config.family {
        Family::Bert if weights.contains("classifier.weight") => Head::Bert,
        Family::Roberta if weights.contains("classifier.out_proj.weight") => Head::Roberta,
        _ => Head::None,
    };
    let body = if head == Head::None
        && !weights.contains(&format!("{prefix}embeddings.word_embeddings.weight"))
    {
        ""
    } else {
        prefix
    };
    let pooler = weights.contains(&format!("{body}pooler.dense.weight"));
    if head != Head::None {
        let classifier = match head {
            Head::Roberta => "classifier.out_proj.weight",
            _ => "classifier.weight",
        };
        let (_, shape, _) = weights
            .read(&[classifier.to_string()])?
            .expect("checked above");
        let classes = shape[0];
        if config.labels.is_empty() {
            config.set_num_labels(classes);
        }
        ensure!(
            config.labels.len() == classes,
            "{}: id2label/num_labels name {} classes, but {classifier} has {classes} rows",
            config_path.display(),
            config.labels.len()
        );
    }
    let mut model = Bert::skeleton(&config, head, pooler, device)
        .with_context(|| format!("{}", config_path.display()))?;
    // A bare encoder stored under the task model's prefix (or the other way round) is
    // found under either name.
    let candidates = |name: &str| {
        let mut names = vec![name.to_string()];
        match name.strip_prefix(prefix) {
            Some(bare) => names.push(bare.to_string()),
            None if !name.starts_with("classifier.") => names.push(format!("{prefix}{name}")),
            None => {}
        }
        names
    };
    weights.fill(dir, model.named_params_mut(), candidates, ignored)?;
    Ok(model)
}

/// Save `model` into `dir` in the Hugging Face layout (see [`save_hf`]).
pub fn save(
    model: &Bert,
    dir: &Path,
    tokenizer: Option<&Path>,
    overwrite: bool,
) -> Result<PathBuf> {
    let config = model.config().to_json(model.head() != Head::None);
    save_hf(model, &config, dir, tokenizer, overwrite)
}

/// The reference initialisation (`transformers`' `_init_weights`): projections and
/// embeddings normal(0, `initializer_range`), biases 0, LayerNorm weights 1.
fn init_of(name: &str, config: &BertConfig) -> Init {
    if name.ends_with(".bias") {
        Init::Zeros
    } else if name.contains("LayerNorm.") {
        Init::Ones
    } else {
        Init::Normal(config.initializer_range)
    }
}

/// A randomly initialised model, reproducible from `seed`: with a classification head
/// when the config names labels (`id2label` or `num_labels`).
pub fn init(config: &BertConfig, seed: u64, device: &Device) -> Result<Bert> {
    let head = match (config.labels.is_empty(), config.family) {
        (true, _) => Head::None,
        (false, Family::Bert) => Head::Bert,
        (false, Family::Roberta) => Head::Roberta,
    };
    let pooler = config.family == Family::Bert;
    let mut model = Bert::skeleton(config, head, pooler, device)?;
    initialise(model.named_params_mut(), seed, |name| {
        Ok(init_of(name, config))
    })?;
    zero_padding_rows(&mut model)?;
    Ok(model)
}

/// `transformers` zeroes the padding id's row of the word embeddings at initialisation.
fn zero_padding_rows(model: &mut Bert) -> Result<()> {
    let d = model.config().hidden_size;
    let pad = model.config().pad_token_id as usize;
    let mut table = model.read_param(&word_embeddings_name(model))?;
    table[pad * d..(pad + 1) * d].fill(0.0);
    let name = word_embeddings_name(model);
    model.write_params(&[(name, table)])
}

fn word_embeddings_name(model: &Bert) -> String {
    model
        .named_params()
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| name.ends_with("embeddings.word_embeddings.weight"))
        .expect("every encoder has word embeddings")
}

/// The pre-trained encoder of `dir` with a new, randomly initialised classification head
/// for the classes `labels` (reproducible from `seed`); the pooler is kept when the
/// checkpoint has one and drawn fresh when a BERT head needs it.
pub fn with_new_head(dir: &Path, labels: &[String], seed: u64, device: &Device) -> Result<Bert> {
    let pretrained = load(dir, device)?;
    let mut config = pretrained.config().clone();
    config.set_labels(labels)?;
    let mut model = init(&config, seed, device)?;
    let body: Vec<(String, Vec<f32>)> = pretrained
        .read_params()?
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .collect();
    let prefix = config.family.body_prefix();
    let renamed: Vec<(String, Vec<f32>)> = body
        .into_iter()
        .map(|(name, values)| {
            let bare = name.strip_prefix(prefix).unwrap_or(&name);
            (format!("{prefix}{bare}"), values)
        })
        .filter(|(name, _)| {
            // RoBERTa classifiers have no pooler: drop a pre-trained one.
            config.family == Family::Bert || !name.contains("pooler.")
        })
        .collect();
    model.write_params(&renamed)?;
    Ok(model)
}
