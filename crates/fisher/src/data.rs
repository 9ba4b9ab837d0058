//! Data for Fisher computation: JSONL rows of text (`input`/`target`, tokenised with the
//! model directory's `tokenizer.json`) or of token ids (`input_ids`/`target_ids`); for
//! classifiers, the encoder inputs `fisherkit classify` reads.

use crate::model::{Item, Outputs};
use anyhow::{bail, ensure, Context, Result};
use fisherkit_common::jsonl;
use fisherkit_model::data::read_classification;
use fisherkit_model::{Example, TextTokenizer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Row {
    input: Option<String>,
    target: Option<String>,
    input_ids: Option<Vec<u32>>,
    target_ids: Option<Vec<u32>>,
    // Other fields of task files (e.g. `task`, `id`) are ignored.
}

/// A loaded data set.
pub struct Dataset {
    pub items: Vec<Item>,
    /// The `target` text of each item (empty when the data is given as ids).
    pub target_texts: Vec<String>,
    /// FNV-1a 64 of the data file's bytes, as recorded in Fisher metadata.
    pub hash: String,
    /// The 1-based line of each item in the data file (what the analyses show).
    pub lines: Vec<usize>,
}

/// Text → token ids as the model expects them (EOS appended).
pub type Encoder<'a> = &'a dyn Fn(&str) -> Result<Vec<u32>>;

/// Build the label outputs: each label string tokenised like a target.
pub fn label_outputs(names: &[String], tokenizer: Option<Encoder>) -> Result<Outputs> {
    ensure!(
        names.len() >= 2,
        "--labels needs at least two label strings"
    );
    for (i, a) in names.iter().enumerate() {
        ensure!(!a.trim().is_empty(), "label {} is empty", i + 1);
        ensure!(!names[..i].contains(a), "label {a:?} is given twice");
    }
    let tokenizer = tokenizer.context(
        "--outputs labels needs the label strings tokenised: the model directory has no tokenizer.json",
    )?;
    let targets = names
        .iter()
        .map(|n| tokenizer(n.as_str()))
        .collect::<Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        ensure!(
            !targets[..i].contains(t),
            "labels {:?} and {:?} tokenise identically",
            names[targets[..i].iter().position(|x| x == t).unwrap_or(0)],
            names[i]
        );
    }
    Ok(Outputs::Labels {
        names: names.to_vec(),
        targets,
    })
}

/// Read at most `limit` examples of `path`.
pub fn load(
    path: &Path,
    tokenizer: Option<Encoder>,
    vocab_size: usize,
    outputs: &Outputs,
    limit: Option<usize>,
) -> Result<Dataset> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = fisherkit_common::data_hash(&bytes);
    let p = PathBuf::from(path);
    let mut items = Vec::new();
    let mut target_texts = Vec::new();
    let mut lines = Vec::new();
    for line in jsonl::iter::<Row>(path)? {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        let line = line?;
        let at = || format!("{}:{}", p.display(), line.line_no);
        let row = line.value;
        let ids = |text: &Option<String>, ids: Option<Vec<u32>>, field: &str| -> Result<Vec<u32>> {
            match (text, ids) {
                (_, Some(ids)) => Ok(ids),
                (Some(text), None) => match tokenizer {
                    Some(encode) => encode(text).with_context(at),
                    None => bail!(
                        "{}: field {field:?} is text but the model directory has no tokenizer.json (give {field}_ids instead)",
                        at()
                    ),
                },
                (None, None) => bail!("{}: missing field {field:?} (or {field}_ids)", at()),
            }
        };
        let input_ids = ids(&row.input, row.input_ids, "input")?;
        ensure!(!input_ids.is_empty(), "{}: the input is empty", at());
        let target_ids = ids(&row.target, row.target_ids, "target")?;
        if let Some(bad) = input_ids
            .iter()
            .chain(&target_ids)
            .find(|&&id| id as usize >= vocab_size)
        {
            bail!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab_size}",
                at()
            );
        }
        ensure!(
            !target_ids.is_empty() && row.target.as_deref().is_none_or(|t| !t.is_empty()),
            "{}: the target is empty (a Fisher needs at least one output position)",
            at()
        );
        let label = match outputs {
            Outputs::Labels { names, targets } => Some(
                targets
                    .iter()
                    .position(|t| *t == target_ids)
                    .with_context(|| {
                        format!(
                            "{}: target {:?} is not one of the labels {}",
                            at(),
                            row.target
                                .clone()
                                .unwrap_or_else(|| format!("{target_ids:?}")),
                            names.join(",")
                        )
                    })?,
            ),
            Outputs::Tokens => None,
        };
        target_texts.push(row.target.clone().unwrap_or_default());
        lines.push(line.line_no);
        items.push(Item {
            example: Example::new(input_ids, target_ids),
            label,
        });
    }
    ensure!(!items.is_empty(), "{}: no examples", path.display());
    if let Outputs::Labels { names, .. } = outputs {
        for (c, name) in names.iter().enumerate() {
            ensure!(
                items.iter().any(|i| i.label == Some(c)),
                "label {name:?} never occurs as a target in the {} examples read from {} (a typo in --labels?)",
                items.len(),
                path.display()
            );
        }
    }
    Ok(Dataset {
        items,
        target_texts,
        hash,
        lines,
    })
}

/// Read at most `limit` encoder inputs of `path` for a classifier with `classes` (lines
/// as `fisherkit classify` takes them; a `"label"`, when present, names the observed
/// class): the outputs are the classes, each the one-token target of its index.
pub fn load_classification(
    path: &Path,
    tokenizer: Option<&TextTokenizer>,
    classes: &[String],
    limit: Option<usize>,
) -> Result<(Outputs, Dataset)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut examples = read_classification(path, tokenizer, Some(classes), false)?;
    examples.truncate(limit.unwrap_or(usize::MAX));
    let mut lines = jsonl::record_line_numbers(&String::from_utf8_lossy(&bytes));
    lines.truncate(examples.len());
    ensure!(!examples.is_empty(), "{}: no examples", path.display());
    let targets: Vec<Vec<u32>> = (0..classes.len() as u32).map(|c| vec![c]).collect();
    let items = examples
        .into_iter()
        .map(|mut example| {
            let label = example.target_ids.first().map(|&c| c as usize);
            // Every class is scored from the same first output position.
            example.target_ids = vec![0];
            Item { example, label }
        })
        .collect::<Vec<_>>();
    let target_texts = items
        .iter()
        .map(|i| i.label.map(|c| classes[c].clone()).unwrap_or_default())
        .collect();
    Ok((
        Outputs::Labels {
            names: classes.to_vec(),
            targets,
        },
        Dataset {
            items,
            target_texts,
            hash: fisherkit_common::data_hash(&bytes),
            lines,
        },
    ))
}
