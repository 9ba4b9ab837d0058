//! JSON Lines input with errors that name the file and the 1-based line number.

use crate::{Context, Result};
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One parsed line and where it came from.
#[derive(Debug, Clone)]
pub struct Line<T> {
    pub line_no: usize,
    pub value: T,
}

/// Stream the non-blank lines of a JSONL file, parsing each as `T`.
pub fn iter<T: DeserializeOwned>(path: &Path) -> Result<impl Iterator<Item = Result<Line<T>>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let path: PathBuf = path.to_path_buf();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| {
            let line_no = i + 1;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(crate::anyhow!(
                        "{}:{line_no}: cannot read line: {e}",
                        path.display()
                    )))
                }
            };
            if is_blank(&line) {
                return None;
            }
            Some(
                serde_json::from_str(&line)
                    .map(|value| Line { line_no, value })
                    .map_err(|e| crate::anyhow!("{}:{line_no}: {e}", path.display())),
            )
        }))
}

/// Blank lines are skipped by every reader: they are not examples.
fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// The 1-based numbers of the lines [`iter`] yields (the non-blank ones), in order: the
/// source line of the i-th record of `text`.
pub fn record_line_numbers(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !is_blank(l))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Read a whole JSONL file; an empty file is an error.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<Vec<Line<T>>> {
    let rows = iter(path)?.collect::<Result<Vec<_>>>()?;
    crate::ensure!(
        !rows.is_empty(),
        "{}: no JSON lines found (the file is empty)",
        path.display()
    );
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Row {
        #[allow(dead_code)]
        input: String,
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"input\":\"a\"}\n\n{\"target\":\"b\"}\n").unwrap();
        let err = read_all::<Row>(&path).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:3:"), "{err}");
        assert!(err.contains("input"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_all::<Row>(&path)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
