//! Text classification corpora stored one folder per class (`DIR/<class>/<file>.txt`,
//! as BBC News, 20 Newsgroups and many others ship): read them and write a fixed,
//! seeded, stratified train/valid/test split of `{"text", "label"}` JSONL — the input
//! `fisherkit train`, `eval`, `classify` and `fisher` take for classifiers.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// One document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Document {
    pub text: String,
    pub label: String,
    /// `<class>/<file>` inside the corpus directory.
    pub file: String,
}

/// Split fractions; the rest is training data.
#[derive(Clone, Copy, Debug)]
pub struct Fractions {
    pub valid: f64,
    pub test: f64,
}

/// Every `*.txt` file of every sub-directory of `dir` (classes and files in name order),
/// whitespace-normalised and cut to `max_chars` characters (at a character boundary).
/// Files that are not UTF-8 are read lossily (some corpora carry stray Latin-1 bytes).
pub fn read_corpus(dir: &Path, max_chars: Option<usize>) -> Result<Vec<Document>> {
    let mut classes = sorted_entries(dir)?;
    classes.retain(|p| p.is_dir());
    ensure!(
        classes.len() >= 2,
        "{}: a class corpus needs at least two class folders, found {}",
        dir.display(),
        classes.len()
    );
    let mut documents = Vec::new();
    for class in classes {
        let label = name_of(&class);
        let mut files = sorted_entries(&class)?;
        files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
        ensure!(!files.is_empty(), "{}: no .txt files", class.display());
        for file in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some(max) = max_chars {
                if let Some((cut, _)) = text.char_indices().nth(max) {
                    text.truncate(cut);
                }
            }
            documents.push(Document {
                text,
                label: label.clone(),
                file: format!("{label}/{}", name_of(&file)),
            });
        }
    }
    Ok(documents)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A stratified split: each class's documents shuffled with `seed` and cut by the
/// fractions (each class keeps its share in every split). Returns (train, valid, test).
pub fn split(
    documents: &[Document],
    fractions: Fractions,
    seed: u64,
) -> Result<[Vec<Document>; 3]> {
    ensure!(
        fractions.valid >= 0.0 && fractions.test >= 0.0 && fractions.valid + fractions.test < 1.0,
        "the valid and test fractions must be non-negative and leave training data (got {} and {})",
        fractions.valid,
        fractions.test
    );
    let mut labels: Vec<&str> = documents.iter().map(|d| d.label.as_str()).collect();
    labels.sort();
    labels.dedup();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: [Vec<Document>; 3] = Default::default();
    for label in labels {
        let mut class: Vec<&Document> = documents.iter().filter(|d| d.label == label).collect();
        class.shuffle(&mut rng);
        let n = class.len();
        let valid = (n as f64 * fractions.valid).round() as usize;
        let test = (n as f64 * fractions.test).round() as usize;
        for (i, document) in class.into_iter().enumerate() {
            let part = if i < test {
                2
            } else if i < test + valid {
                1
            } else {
                0
            };
            out[part].push(document.clone());
        }
    }
    // Classes interleaved in a seeded order, so a prefix of a split is a fair sample.
    for part in &mut out {
        part.shuffle(&mut rng);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(dir: &Path) {
        for (class, n) in [("sport", 10), ("tech", 20)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for i in 0..n {
                std::fs::write(
                    dir.join(class).join(format!("{i:03}.txt")),
                    format!("  {class} story\n\n number {i} ünïcode\t"),
                )
                .unwrap();
            }
        }
        std::fs::write(dir.join("README"), "not a class").unwrap();
    }

    #[test]
    fn reads_and_splits_stratified_and_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        corpus(dir.path());
        let docs = read_corpus(dir.path(), Some(18)).unwrap();
        assert_eq!(docs.len(), 30);
        assert_eq!(docs[0].text, "sport story number");
        assert_eq!(docs[0].file, "sport/000.txt");
        let fractions = Fractions {
            valid: 0.1,
            test: 0.2,
        };
        let [train, valid, test] = split(&docs, fractions, 7).unwrap();
        let count =
            |part: &[Document], label: &str| part.iter().filter(|d| d.label == label).count();
        assert_eq!((count(&test, "sport"), count(&test, "tech")), (2, 4));
        assert_eq!((count(&valid, "sport"), count(&valid, "tech")), (1, 2));
        assert_eq!(train.len(), 21);
        // Every document lands in exactly one split.
        let mut all: Vec<&str> = [&train, &valid, &test]
            .iter()
            .flat_map(|p| p.iter().map(|d| d.file.as_str()))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 30);
        assert_eq!(split(&docs, fractions, 7).unwrap()[2], test);
        assert_ne!(split(&docs, fractions, 8).unwrap()[2], test);
        assert!(split(
            &docs,
            Fractions {
                valid: 0.5,
                test: 0.5
            },
            7
        )
        .is_err());
    }

    #[test]
    fn a_single_class_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("only")).unwrap();
        std::fs::write(dir.path().join("only/a.txt"), "x").unwrap();
        let err = format!("{:#}", read_corpus(dir.path(), None).unwrap_err());
        assert!(err.contains("at least two class folders"), "{err}");
    }
}
