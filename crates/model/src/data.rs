//! JSONL inputs. `score` and `generate`: `{"input": "...", "target": "..."}` (needs a
//! tokenizer) or `{"input_ids": [...], "target_ids": [...]}`. Encoders (`classify`,
//! `embed`, classifier training and Fishers): `{"text": ...}`, `{"text": ...,
//! "text_pair": ...}` or `{"input_ids": [...], "token_type_ids": [...]}`, with an optional
//! `"label"`. Errors name the line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fisherkit_common::jsonl;
use serde_json::Value;

use crate::tokenizer::TextTokenizer;
use crate::Example;

/// What a line of `read_examples` must say about its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every line has one (`score`, `train`).
    Required,
    /// Targets are read when present (`generate`).
    Optional,
    /// A line without a target is an input to score token by token (a decoder-only or
    /// prefix LM): its first token becomes the input, the rest the target.
    OrSplitInput,
}

impl Targets {
    /// What a model scores or trains on: targets, or (single-stack LMs) inputs alone.
    pub fn for_model(model: &dyn crate::Model) -> Self {
        if model.is_decoder_only() {
            Self::OrSplitInput
        } else {
            Self::Required
        }
    }
}

/// Read examples; `targets` says whether each line needs a target. Ids are checked
/// against `vocab_size`; text is tokenized with EOS appended.
pub fn read_examples(
    path: &Path,
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
    targets: Targets,
) -> Result<Vec<Example>> {
    read_lines(path, |value| {
        parse_line(value, tokenizer, vocab_size, targets)
    })
}

/// Every line of a JSONL file through `parse`; an error names the file and line.
fn read_lines(path: &Path, parse: impl Fn(&Value) -> Result<Example>) -> Result<Vec<Example>> {
    jsonl::read_all::<Value>(path)?
        .into_iter()
        .map(|line| {
            parse(&line.value).with_context(|| format!("{}:{}", path.display(), line.line_no))
        })
        .collect()
}

fn parse_line(
    value: &Value,
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
    targets: Targets,
) -> Result<Example> {
    let object = value.as_object().context("expected a JSON object")?;
    let mut input_ids = field_ids(object, "input", tokenizer, vocab_size)?
        .context("missing \"input\" (text) or \"input_ids\" (list of token ids)")?;
    let target_ids = match (field_ids(object, "target", tokenizer, vocab_size)?, targets) {
        (Some(ids), _) => ids,
        (None, Targets::Required) => {
            bail!("missing \"target\" (text) or \"target_ids\" (list of token ids)")
        }
        (None, Targets::Optional) => Vec::new(),
        (None, Targets::OrSplitInput) => {
            if input_ids.len() < 2 {
                bail!("an input without a target is scored token by token and needs at least two tokens");
            }
            input_ids.split_off(1)
        }
    };
    Ok(Example::new(input_ids, target_ids))
}

/// Read encoder inputs. With `labels` (the model's classes), each line's `"label"` (a
/// class name or a class index) becomes the one-token target, and `require_label` makes
/// it mandatory; without, labels are ignored (embeddings).
pub fn read_classification(
    path: &Path,
    tokenizer: Option<&TextTokenizer>,
    labels: Option<&[String]>,
    require_label: bool,
) -> Result<Vec<Example>> {
    read_lines(path, |value| {
        parse_classification(value, tokenizer, labels, require_label)
    })
}

fn parse_classification(
    value: &Value,
    tokenizer: Option<&TextTokenizer>,
    labels: Option<&[String]>,
    require_label: bool,
) -> Result<Example> {
    let object = value.as_object().context("expected a JSON object")?;
    let (input_ids, token_type_ids) = if let Some(ids) = object.get("input_ids") {
        let types = match object.get("token_type_ids") {
            Some(types) => id_list(types, "token_type_ids")?,
            None => Vec::new(),
        };
        (id_list(ids, "input_ids")?, types)
    } else if let Some(text) = object.get("text") {
        let text = text.as_str().context("\"text\" must be a string")?;
        let pair = match object.get("text_pair") {
            Some(pair) => Some(pair.as_str().context("\"text_pair\" must be a string")?),
            None => None,
        };
        let tokenizer = tokenizer.context(
            "\"text\" needs the model's tokenizer.json, which its directory lacks; give \"input_ids\"",
        )?;
        tokenizer.encode_segments(text, pair)?
    } else {
        bail!("missing \"text\" (with an optional \"text_pair\") or \"input_ids\"");
    };
    if input_ids.is_empty() {
        bail!("the input is empty");
    }
    let target_ids = match (labels, object.get("label")) {
        (Some(labels), Some(label)) => vec![class_index(label, labels)?],
        (Some(_), None) if require_label => bail!("missing \"label\""),
        _ => Vec::new(),
    };
    Ok(Example {
        input_ids,
        target_ids,
        token_type_ids,
    })
}

/// A label as its class index: a name from `labels` or an index below their count.
fn class_index(label: &Value, labels: &[String]) -> Result<u32> {
    let known = || labels.join(", ");
    match label {
        Value::String(name) => labels
            .iter()
            .position(|l| l == name)
            .map(|i| i as u32)
            .with_context(|| {
                format!(
                    "label {name:?} is not one of the model's labels: {}",
                    known()
                )
            }),
        Value::Number(n) => n
            .as_u64()
            .filter(|&i| (i as usize) < labels.len())
            .map(|i| i as u32)
            .with_context(|| {
                format!(
                    "label {n} is not a class index below {} ({})",
                    labels.len(),
                    known()
                )
            }),
        other => bail!("\"label\" is {other}, not a label name or a class index"),
    }
}

fn id_list(value: &Value, key: &str) -> Result<Vec<u32>> {
    value
        .as_array()
        .with_context(|| format!("\"{key}\" must be a list of token ids"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&id| id <= u32::MAX as u64)
                .map(|id| id as u32)
                .with_context(|| format!("\"{key}\" holds {v}, not a token id"))
        })
        .collect()
}

/// `<name>` as text (tokenized) or `<name>_ids` as ids; `None` when neither is present.
fn field_ids(
    object: &serde_json::Map<String, Value>,
    name: &str,
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
) -> Result<Option<Vec<u32>>> {
    let ids_key = format!("{name}_ids");
    let ids = if let Some(ids) = object.get(&ids_key) {
        id_list(ids, &ids_key)?
    } else if let Some(text) = object.get(name) {
        let text = text
            .as_str()
            .with_context(|| format!("\"{name}\" must be a string"))?;
        let tokenizer = tokenizer.with_context(|| {
            format!("\"{name}\" is text but the model directory has no tokenizer.json; give \"{ids_key}\"")
        })?;
        tokenizer.encode(text)?
    } else {
        return Ok(None);
    };
    if ids.is_empty() {
        bail!("\"{name}\" is empty");
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        bail!("\"{name}\" has token id {bad}, outside the vocabulary (vocab_size {vocab_size})");
    }
    Ok(Some(ids))
}
