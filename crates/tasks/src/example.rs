//! The one example format every command reads: JSON Lines of `{"input", "target"}`.

use fisherkit_common::{atomic, ensure, jsonl, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One text-to-text example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub target: String,
}

/// Read a JSONL file of examples. Missing fields, malformed JSON, an empty input or an
/// empty file are errors naming the file and line.
pub fn load_examples(path: &Path) -> Result<Vec<Example>> {
    let rows = jsonl::read_all::<Example>(path)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        ensure!(
            !row.value.input.trim().is_empty(),
            "{}:{}: field \"input\" is empty",
            path.display(),
            row.line_no
        );
        out.push(row.value);
    }
    Ok(out)
}

/// Write examples as JSONL, atomically.
pub fn write_examples(path: &Path, examples: &[Example]) -> Result<()> {
    atomic::write_file(path, |w| {
        for ex in examples {
            serde_json::to_writer(&mut *w, ex)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .with_context(|| format!("writing examples to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let exs = vec![
            Example {
                input: "a \"quoted\" b".into(),
                target: "x\ny".into(),
            },
            Example {
                input: "c".into(),
                target: String::new(),
            },
        ];
        write_examples(&path, &exs).unwrap();
        assert_eq!(load_examples(&path).unwrap(), exs);

        std::fs::write(
            &path,
            "{\"input\":\"a\",\"target\":\"b\"}\n{\"input\":\"a\"}\n",
        )
        .unwrap();
        let err = format!("{:#}", load_examples(&path).unwrap_err());
        assert!(
            err.contains("d.jsonl:2:") && err.contains("target"),
            "{err}"
        );

        std::fs::write(&path, "{\"input\":\" \",\"target\":\"b\"}\n").unwrap();
        let err = format!("{:#}", load_examples(&path).unwrap_err());
        assert!(err.contains("d.jsonl:1:") && err.contains("empty"), "{err}");
    }
}
