//! JSONL inputs of `score` and `generate`: `{"input": "...", "target": "..."}` (needs a
//! tokenizer) or `{"input_ids": [...], "target_ids": [...]}`. Errors name the line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fisherkit_common::jsonl;
use serde_json::Value;

use crate::tokenizer::TextTokenizer;
use crate::Example;

/// Read examples; `with_targets` demands a target on every line (`score`).
/// Ids are checked against `vocab_size`; text is tokenized with EOS appended.
pub fn read_examples(
    path: &Path,
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
    with_targets: bool,
) -> Result<Vec<Example>> {
    let lines = jsonl::read_all::<Value>(path)?;
    lines
        .into_iter()
        .map(|line| {
            let at = format!("{}:{}", path.display(), line.line_no);
            parse_line(&line.value, tokenizer, vocab_size, with_targets).with_context(|| at)
        })
        .collect()
}

fn parse_line(
    value: &Value,
    tokenizer: Option<&TextTokenizer>,
    vocab_size: usize,
    with_targets: bool,
) -> Result<Example> {
    let object = value.as_object().context("expected a JSON object")?;
    let input_ids = field_ids(object, "input", tokenizer, vocab_size)?
        .context("missing \"input\" (text) or \"input_ids\" (list of token ids)")?;
    let target_ids = match field_ids(object, "target", tokenizer, vocab_size)? {
        Some(ids) => ids,
        None if with_targets => {
            bail!("missing \"target\" (text) or \"target_ids\" (list of token ids)")
        }
        None => Vec::new(),
    };
    Ok(Example {
        input_ids,
        target_ids,
    })
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
        let list = ids
            .as_array()
            .with_context(|| format!("\"{ids_key}\" must be a list of token ids"))?;
        list.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&id| id <= u32::MAX as u64)
                    .map(|id| id as u32)
                    .with_context(|| format!("\"{ids_key}\" holds {v}, not a token id"))
            })
            .collect::<Result<Vec<u32>>>()?
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
