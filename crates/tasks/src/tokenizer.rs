//! SentencePiece-Unigram tokenizers in the T5 convention: `<pad>` 0, `</s>` 1, `<unk>` 2,
//! the learned pieces, then 100 sentinels `<extra_id_99>` … `<extra_id_0>` so that
//! `<extra_id_0>` is the last id; Metaspace pre-tokenisation; a post-processor that
//! appends `</s>`. Written as a `tokenizer.json` that Hugging Face `tokenizers` reads.

use fisherkit_common::{anyhow, atomic, bail, ensure, jsonl, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
pub const UNK_ID: u32 = 2;
pub const NUM_SENTINELS: usize = 100;

/// Tokenizer training options.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Total vocabulary size including the three special tokens and the sentinels.
    pub vocab_size: usize,
    pub max_piece_length: usize,
    pub show_progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 32100,
            max_piece_length: 16,
            show_progress: false,
        }
    }
}

/// NFKC normalisation (T5 ships SentencePiece's precompiled `nmt_nfkc` map, which a
/// new tokenizer cannot reproduce), whitespace split and Metaspace.
fn skeleton(model: Value, added_tokens: Value, post_processor: Value) -> Value {
    let metaspace =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "NFKC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "post_processor": post_processor,
        "decoder": metaspace,
        "model": model,
    })
}

fn added(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

/// The training texts of one file: JSONL rows contribute `text`, or `input` and
/// `target`; other files contribute one text per non-blank line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut out = Vec::new();
    if is_jsonl {
        for row in jsonl::iter::<Value>(path)? {
            let row = row?;
            let fields: Vec<&str> = ["text", "input", "target"]
                .into_iter()
                .filter_map(|f| row.value.get(f).and_then(Value::as_str))
                .collect();
            ensure!(
                !fields.is_empty(),
                "{}:{}: expected a string field \"text\" (or \"input\"/\"target\")",
                path.display(),
                row.line_no
            );
            out.extend(fields.into_iter().map(str::to_string));
        }
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line =
                line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
            if !line.trim().is_empty() {
                out.push(line);
            }
        }
    }
    ensure!(
        !out.is_empty(),
        "{}: no text found (the file is empty)",
        path.display()
    );
    Ok(out)
}

/// Train a tokenizer on `texts`.
pub fn train(texts: &[String], opts: &TrainOptions) -> Result<Tokenizer> {
    let reserved = 3 + NUM_SENTINELS;
    ensure!(
        opts.vocab_size > reserved,
        "vocabulary size {} leaves no room for pieces: 3 special tokens and {NUM_SENTINELS} sentinels take {reserved}",
        opts.vocab_size
    );
    let start_model =
        json!({"type": "Unigram", "unk_id": 0, "vocab": [[UNK, 0.0]], "byte_fallback": false});
    let mut tk = Tokenizer::from_str(&skeleton(start_model, json!([]), Value::Null).to_string())
        .map_err(|e| anyhow!("building the tokenizer: {e}"))?;
    let trainer = UnigramTrainer::builder()
        .vocab_size((opts.vocab_size - NUM_SENTINELS) as u32)
        .special_tokens(vec![
            AddedToken::from(PAD, true),
            AddedToken::from(EOS, true),
            AddedToken::from(UNK, true),
        ])
        .unk_token(Some(UNK.into()))
        .max_piece_length(opts.max_piece_length)
        .show_progress(opts.show_progress)
        .build()
        .map_err(|e| anyhow!("configuring the Unigram trainer: {e}"))?;
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tk.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow!("training the Unigram model: {e}"))?;

    let trained: Value = serde_json::from_str(&tk.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
    let mut vocab = trained["model"]["vocab"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("trained tokenizer has no vocabulary"))?;
    for (i, name) in [PAD, EOS, UNK].iter().enumerate() {
        ensure!(
            vocab.get(i).and_then(|p| p[0].as_str()) == Some(*name),
            "trained vocabulary does not start with {PAD}, {EOS}, {UNK}"
        );
    }
    // The trainer lists pieces of equal score in hash-map order, which changes from run to
    // run; ordering ties by the piece itself makes the ids a function of the corpus alone.
    // Its scores are sums taken in that order too, so equal pieces differ in the last
    // bits from run to run: rounded to 1e-9 they tie exactly.
    for piece in &mut vocab[3..] {
        if let Some(s) = piece[1].as_f64() {
            piece[1] = json!((s * 1e9).round() / 1e9);
        }
    }
    let score = |p: &Value| p[1].as_f64().unwrap_or(f64::NEG_INFINITY);
    vocab[3..].sort_by(|a, b| {
        score(b)
            .total_cmp(&score(a))
            .then_with(|| a[0].as_str().cmp(&b[0].as_str()))
    });
    let mut added_tokens = vec![added(0, PAD), added(1, EOS), added(2, UNK)];
    for k in (0..NUM_SENTINELS).rev() {
        let name = format!("<extra_id_{k}>");
        added_tokens.push(added(vocab.len(), &name));
        vocab.push(json!([name, 0.0]));
    }
    let eos_post = json!({
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
        "special_tokens": {EOS: {"id": EOS, "ids": [EOS_ID], "tokens": [EOS]}},
    });
    let model =
        json!({"type": "Unigram", "unk_id": UNK_ID, "vocab": vocab, "byte_fallback": false});
    Tokenizer::from_str(&skeleton(model, Value::Array(added_tokens), eos_post).to_string())
        .map_err(|e| anyhow!("assembling the T5 tokenizer: {e}"))
}

/// Train on files and write `tokenizer.json` atomically. Returns the vocabulary size.
pub fn train_files(files: &[PathBuf], opts: &TrainOptions, out: &Path) -> Result<usize> {
    ensure!(!files.is_empty(), "no input files given");
    let mut texts = Vec::new();
    for f in files {
        texts.extend(read_texts(f)?);
    }
    let tk = train(&texts, opts)?;
    save(&tk, out)?;
    Ok(tk.get_vocab_size(true))
}

pub fn save(tk: &Tokenizer, path: &Path) -> Result<()> {
    let text = tk
        .to_string(true)
        .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    atomic::write_bytes(path, text.as_bytes())
}

/// Load a `tokenizer.json`, with an error naming the file.
pub fn load(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        bail!("tokenizer file {} does not exist", path.display());
    }
    Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))
}

/// Token ids of `text` followed by `</s>` (the post-processor adds it).
pub fn encode(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tk
        .encode(text, true)
        .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?
        .get_ids()
        .to_vec())
}

/// Text of `ids`, stopping at the first `</s>` and skipping special tokens.
pub fn decode(tk: &Tokenizer, ids: &[u32]) -> Result<String> {
    let end = ids.iter().position(|&i| i == EOS_ID).unwrap_or(ids.len());
    tk.decode(&ids[..end], true)
        .map_err(|e| anyhow!("decoding {ids:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let words = [
            "alpha", "beta", "gamma", "delta", "reverse:", "sort:", "a", "b", "c", "d",
        ];
        (0..400)
            .map(|i| {
                (0..6)
                    .map(|j| words[(i * 7 + j * 3 + i / 5) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn training_is_deterministic() {
        // The synthetic suite's letters and digits tie in score; their ids must not depend
        // on hash-map order.
        let texts: Vec<String> = (0..300)
            .map(|i| {
                let letters = ["a b c", "d e f", "g h i", "1 2 3", "x y z"];
                format!("copy: {} {}", letters[i % 5], letters[(i / 5) % 5])
            })
            .collect();
        let opts = TrainOptions {
            vocab_size: 140,
            ..Default::default()
        };
        let first = train(&texts, &opts).unwrap().to_string(false).unwrap();
        for _ in 0..4 {
            assert_eq!(
                train(&texts, &opts).unwrap().to_string(false).unwrap(),
                first
            );
        }
    }

    #[test]
    fn training_on_the_synthetic_suite_is_deterministic() {
        // Here pieces such as "m", "u" and "x" have scores equal up to the last bits of a
        // sum taken in hash-map order; their ids changed from run to run.
        let sizes = crate::synthetic::SplitSizes {
            train: 150,
            valid: 0,
            test: 0,
        };
        let mut texts = Vec::new();
        for spec in crate::synthetic::TASKS {
            for e in crate::synthetic::generate_task(spec, sizes, 3)
                .unwrap()
                .train
            {
                texts.extend([e.input, e.target]);
            }
        }
        let opts = TrainOptions {
            vocab_size: 256,
            ..Default::default()
        };
        let first = train(&texts, &opts).unwrap().to_string(false).unwrap();
        for _ in 0..5 {
            assert_eq!(
                train(&texts, &opts).unwrap().to_string(false).unwrap(),
                first
            );
        }
    }

    #[test]
    fn t5_convention_ids_and_round_trip() {
        let tk = train(
            &corpus(),
            &TrainOptions {
                vocab_size: 140,
                ..Default::default()
            },
        )
        .unwrap();
        let n = tk.get_vocab_size(true);
        assert!(n <= 140 && n > 103, "{n}");
        assert_eq!(tk.token_to_id(PAD), Some(0));
        assert_eq!(tk.token_to_id(EOS), Some(1));
        assert_eq!(tk.token_to_id(UNK), Some(2));
        assert_eq!(tk.token_to_id("<extra_id_0>"), Some(n as u32 - 1));
        assert_eq!(tk.token_to_id("<extra_id_99>"), Some(n as u32 - 100));
        let ids = encode(&tk, "sort: gamma a b").unwrap();
        assert_eq!(*ids.last().unwrap(), EOS_ID, "post-processor appends </s>");
        assert!(!ids[..ids.len() - 1].contains(&UNK_ID));
        assert_eq!(decode(&tk, &ids).unwrap(), "sort: gamma a b");
        // Sentinels are single tokens in text.
        let ids = encode(&tk, "alpha <extra_id_0> beta").unwrap();
        assert!(ids.contains(&(n as u32 - 1)));
        // Saved file reloads identically and carries the T5 pieces.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        save(&tk, &path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(
            encode(&back, "delta c d").unwrap(),
            encode(&tk, "delta c d").unwrap()
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["model"]["type"], "Unigram");
        assert_eq!(v["model"]["unk_id"], 2);
        assert_eq!(v["pre_tokenizer"]["pretokenizers"][1]["type"], "Metaspace");
    }

    #[test]
    fn too_small_vocab_and_empty_files_are_errors() {
        assert!(train(
            &corpus(),
            &TrainOptions {
                vocab_size: 103,
                ..Default::default()
            }
        )
        .is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.txt");
        std::fs::write(&p, "\n\n").unwrap();
        assert!(format!("{:#}", read_texts(&p).unwrap_err()).contains("empty"));
        let p = dir.path().join("bad.jsonl");
        std::fs::write(&p, "{\"x\": 1}\n").unwrap();
        assert!(format!("{:#}", read_texts(&p).unwrap_err()).contains("bad.jsonl:1"));
    }
}
