//! `tokenizer.json` via the `tokenizers` crate: SentencePiece Unigram (T5), WordPiece
//! (BERT) or byte-level BPE (RoBERTa), with the file's own post-processor adding special
//! tokens.

use std::path::Path;

use anyhow::{anyhow, Result};

/// The tokenizer file of a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checkpoint's tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Appended when the post-processor does not end a sequence with it (T5).
    eos_token_id: Option<u32>,
}

impl TextTokenizer {
    pub fn load(path: &Path, eos_token_id: u32) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(Self {
            inner,
            eos_token_id: Some(eos_token_id),
        })
    }

    /// An encoder's tokenizer (BERT, RoBERTa): the post-processor's special tokens only,
    /// no padding, inputs truncated to `max_len` tokens (longest first for pairs) —
    /// `max_len` overrides the file's own truncation, as sentence-transformers'
    /// `max_seq_length` does.
    pub fn load_encoder(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{}: truncation to {max_len}: {e}", path.display()))?;
        Ok(Self {
            inner,
            eos_token_id: None,
        })
    }

    /// The tokenizer of a checkpoint directory, if it has one.
    pub fn from_dir(dir: &Path, eos_token_id: u32) -> Result<Option<Self>> {
        let path = dir.join(TOKENIZER_FILE);
        path.exists()
            .then(|| Self::load(&path, eos_token_id))
            .transpose()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` ending with EOS (T5-style post-processors append it; added here
    /// when a tokenizer.json lacks one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(eos) = self.eos_token_id {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Ids and token types (segment 0 for `text`, 1 for `pair`) of one input or a
    /// sentence pair, special tokens placed by the post-processor.
    pub fn encode_segments(&self, text: &str, pair: Option<&str>) -> Result<(Vec<u32>, Vec<u32>)> {
        let input = match pair {
            Some(pair) => tokenizers::EncodeInput::Dual(text.into(), pair.into()),
            None => tokenizers::EncodeInput::Single(text.into()),
        };
        let encoding = self
            .inner
            .encode(input, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok((
            encoding.get_ids().to_vec(),
            encoding.get_type_ids().to_vec(),
        ))
    }

    /// Text of `ids` without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding {ids:?}: {e}"))
    }
}
