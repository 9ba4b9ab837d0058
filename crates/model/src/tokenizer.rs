//! `tokenizer.json` (SentencePiece Unigram as exported by HF) via the `tokenizers` crate.

use std::path::Path;

use anyhow::{anyhow, Result};

/// The tokenizer file of a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checkpoint's tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    eos_token_id: u32,
}

impl TextTokenizer {
    pub fn load(path: &Path, eos_token_id: u32) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(Self {
            inner,
            eos_token_id,
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
        if ids.last() != Some(&self.eos_token_id) {
            ids.push(self.eos_token_id);
        }
        Ok(ids)
    }

    /// Text of `ids` without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding {ids:?}: {e}"))
    }
}
