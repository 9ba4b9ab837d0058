//! GLUE-style formatters: raw rows (the field names of the Hugging Face `glue`,
//! `wmt` and summarisation data sets) turned into T5's text-to-text prefixes.

use crate::Example;
use fisherkit_common::{anyhow, bail, jsonl, Context, Result};
use serde_json::Value;
use std::path::Path;

/// A built-in task format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Cola,
    Sst2,
    Mnli,
    Qnli,
    Rte,
    Mrpc,
    Qqp,
    Stsb,
    Wnli,
    /// `translate English to German: …` from `{"en", "de"}` rows.
    TranslateEnDe,
    TranslateEnFr,
    TranslateEnRo,
    /// `summarize: …` from `{"document"|"article", "summary"|"highlights"}` rows.
    Summarize,
}

/// Every task name accepted by `--task`.
pub const TASK_NAMES: &[&str] = &[
    "cola",
    "sst2",
    "mnli",
    "qnli",
    "rte",
    "mrpc",
    "qqp",
    "stsb",
    "wnli",
    "en-de",
    "en-fr",
    "en-ro",
    "summarize",
];

impl std::str::FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "cola" => Task::Cola,
            "sst2" | "sst-2" => Task::Sst2,
            "mnli" => Task::Mnli,
            "qnli" => Task::Qnli,
            "rte" => Task::Rte,
            "mrpc" => Task::Mrpc,
            "qqp" => Task::Qqp,
            "stsb" | "sts-b" => Task::Stsb,
            "wnli" => Task::Wnli,
            "en-de" | "wmt-en-de" => Task::TranslateEnDe,
            "en-fr" | "wmt-en-fr" => Task::TranslateEnFr,
            "en-ro" | "wmt-en-ro" => Task::TranslateEnRo,
            "summarize" | "cnn-dm" | "xsum" => Task::Summarize,
            other => bail!(
                "unknown task {other:?}; expected one of {}",
                TASK_NAMES.join(", ")
            ),
        })
    }
}

impl Task {
    /// Label strings in the order of the integer labels of the raw data (HF `glue`).
    /// `None` for tasks whose target is free text or a number.
    pub fn labels(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Task::Cola => &["unacceptable", "acceptable"],
            Task::Sst2 => &["negative", "positive"],
            Task::Mnli => &["entailment", "neutral", "contradiction"],
            Task::Qnli | Task::Rte => &["entailment", "not_entailment"],
            Task::Mrpc => &["not_equivalent", "equivalent"],
            Task::Qqp => &["not_duplicate", "duplicate"],
            Task::Wnli => &["not_entailment", "entailment"],
            _ => return None,
        })
    }

    /// The metrics the T5 paper reports for the task.
    pub fn default_metrics(self) -> &'static [&'static str] {
        match self {
            Task::Cola => &["accuracy", "mcc"],
            Task::Mrpc | Task::Qqp => &["accuracy", "f1"],
            Task::Mnli => &["accuracy", "macro-f1"],
            Task::Stsb => &["pearson", "spearman"],
            Task::TranslateEnDe | Task::TranslateEnFr | Task::TranslateEnRo => &["bleu"],
            Task::Summarize => &["rouge"],
            _ => &["accuracy"],
        }
    }

    /// Input fields (raw field name, prefix word in the text) and the task prefix.
    fn layout(self) -> (&'static str, &'static [(&'static str, &'static str)]) {
        match self {
            Task::Cola => ("cola", &[("sentence", "sentence")]),
            Task::Sst2 => ("sst2", &[("sentence", "sentence")]),
            Task::Mnli => (
                "mnli",
                &[("hypothesis", "hypothesis"), ("premise", "premise")],
            ),
            Task::Qnli => (
                "qnli",
                &[("question", "question"), ("sentence", "sentence")],
            ),
            Task::Rte => (
                "rte",
                &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            ),
            Task::Mrpc => (
                "mrpc",
                &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            ),
            Task::Qqp => (
                "qqp",
                &[("question1", "question1"), ("question2", "question2")],
            ),
            Task::Stsb => (
                "stsb",
                &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            ),
            Task::Wnli => (
                "wnli",
                &[("sentence1", "sentence1"), ("sentence2", "sentence2")],
            ),
            Task::TranslateEnDe => ("translate English to German:", &[("en", "")]),
            Task::TranslateEnFr => ("translate English to French:", &[("en", "")]),
            Task::TranslateEnRo => ("translate English to Romanian:", &[("en", "")]),
            Task::Summarize => ("summarize:", &[("document|article", "")]),
        }
    }

    fn target_field(self) -> &'static str {
        match self {
            Task::TranslateEnDe => "de",
            Task::TranslateEnFr => "fr",
            Task::TranslateEnRo => "ro",
            Task::Summarize => "summary|highlights",
            _ => "label",
        }
    }

    /// Format one raw row. An unlabeled row (label -1, as in GLUE test splits) gets an
    /// empty target so it can still be predicted.
    pub fn format(self, row: &Value) -> Result<Example> {
        let (prefix, fields) = self.layout();
        let mut input = prefix.to_string();
        for (field, word) in fields {
            let text = string_field(row, field)?;
            if !word.is_empty() {
                input.push(' ');
                input.push_str(word);
                input.push(':');
            }
            input.push(' ');
            input.push_str(text.trim());
        }
        let target = self.format_target(row)?;
        Ok(Example { input, target })
    }

    fn format_target(self, row: &Value) -> Result<String> {
        let field = self.target_field();
        if field != "label" {
            return Ok(string_field(row, field)?.trim().to_string());
        }
        let label = row
            .get("label")
            .ok_or_else(|| anyhow!("missing field \"label\""))?;
        if self == Task::Stsb {
            let score = label
                .as_f64()
                .ok_or_else(|| anyhow!("field \"label\" must be a number, got {label}"))?;
            if score < 0.0 {
                return Ok(String::new());
            }
            return Ok(stsb_target(score));
        }
        let labels = self.labels().expect("classification task");
        match label {
            Value::Number(n) => {
                let i = n
                    .as_i64()
                    .ok_or_else(|| anyhow!("field \"label\" must be an integer, got {n}"))?;
                if i == -1 {
                    return Ok(String::new());
                }
                labels
                    .get(i as usize)
                    .map(|s| s.to_string())
                    .ok_or_else(|| {
                        anyhow!(
                            "label {i} out of range: this task has {} classes ({})",
                            labels.len(),
                            labels.join(", ")
                        )
                    })
            }
            Value::String(s) if labels.contains(&s.as_str()) => Ok(s.clone()),
            other => bail!(
                "field \"label\" must be a class index or one of {}, got {other}",
                labels.join(", ")
            ),
        }
    }
}

/// STS-B target: the score rounded to the nearest 0.2 (half to even, as `tf.round`),
/// printed with one decimal.
pub fn stsb_target(score: f64) -> String {
    format!("{:.1}", (score * 5.0).round_ties_even() / 5.0)
}

/// A string field; `a|b` accepts either name.
fn string_field<'a>(row: &'a Value, field: &str) -> Result<&'a str> {
    for name in field.split('|') {
        if let Some(v) = row.get(name) {
            return v
                .as_str()
                .ok_or_else(|| anyhow!("field {name:?} must be a string, got {v}"));
        }
    }
    bail!("missing field {:?}", field.replace('|', "\" or \""))
}

/// Format a raw JSONL file. Returns the examples and the number of unlabeled rows.
pub fn format_file(task: Task, path: &Path) -> Result<(Vec<Example>, usize)> {
    let rows = jsonl::read_all::<Value>(path)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut unlabeled = 0;
    for row in rows {
        let ex = task
            .format(&row.value)
            .with_context(|| format!("{}:{}", path.display(), row.line_no))?;
        unlabeled += usize::from(ex.target.is_empty());
        out.push(ex);
    }
    Ok((out, unlabeled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_match_the_paper() {
        let rte = Task::Rte
            .format(&json!({"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0}))
            .unwrap();
        assert_eq!(
            rte.input,
            "rte sentence1: A cat sat. sentence2: An animal sat."
        );
        assert_eq!(rte.target, "entailment");
        let mnli = Task::Mnli
            .format(&json!({"premise": "P", "hypothesis": "H", "label": 2}))
            .unwrap();
        assert_eq!(mnli.input, "mnli hypothesis: H premise: P");
        assert_eq!(mnli.target, "contradiction");
        let cola = Task::Cola
            .format(&json!({"sentence": "x", "label": 1}))
            .unwrap();
        assert_eq!(
            (cola.input.as_str(), cola.target.as_str()),
            ("cola sentence: x", "acceptable")
        );
        let tr = Task::TranslateEnDe
            .format(&json!({"en": "Hello", "de": "Hallo"}))
            .unwrap();
        assert_eq!(
            (tr.input.as_str(), tr.target.as_str()),
            ("translate English to German: Hello", "Hallo")
        );
        let sum = Task::Summarize
            .format(&json!({"article": "Long text", "highlights": "Short"}))
            .unwrap();
        assert_eq!(sum.input, "summarize: Long text");
        // String labels and unlabeled rows.
        let s = Task::Sst2
            .format(&json!({"sentence": "x", "label": "positive"}))
            .unwrap();
        assert_eq!(s.target, "positive");
        assert_eq!(
            Task::Qnli
                .format(&json!({"question": "q", "sentence": "s", "label": -1}))
                .unwrap()
                .target,
            ""
        );
    }

    #[test]
    fn stsb_rounds_to_nearest_fifth_with_one_decimal() {
        for (score, want) in [
            (3.4, "3.4"),
            (3.39, "3.4"),
            (3.29, "3.2"),
            (3.31, "3.4"),
            (0.0, "0.0"),
            (5.0, "5.0"),
            (4.95, "5.0"),
            (2.05, "2.0"),
            (1.0, "1.0"),
        ] {
            assert_eq!(stsb_target(score), want, "score {score}");
        }
        let ex = Task::Stsb
            .format(&json!({"sentence1": "a", "sentence2": "b", "label": 3.8}))
            .unwrap();
        assert_eq!(ex.target, "3.8");
    }

    #[test]
    fn bad_rows_are_clear_errors() {
        let err = Task::Rte
            .format(&json!({"sentence1": "a", "label": 0}))
            .unwrap_err();
        assert!(err.to_string().contains("sentence2"), "{err}");
        let err = Task::Rte
            .format(&json!({"sentence1": "a", "sentence2": "b", "label": 7}))
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!("nope".parse::<Task>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.jsonl");
        std::fs::write(
            &path,
            "{\"sentence\":\"a\",\"label\":1}\n{\"sentence\":2,\"label\":1}\n",
        )
        .unwrap();
        let err = format!("{:#}", format_file(Task::Sst2, &path).unwrap_err());
        assert!(err.contains("raw.jsonl:2"), "{err}");
    }
}
