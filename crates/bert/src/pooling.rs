//! Sentence embeddings as sentence-transformers computes them: `modules.json` lists the
//! pipeline (Transformer → Pooling → optional Normalize), `1_Pooling/config.json` the
//! pooling modes, `sentence_bert_config.json` the `max_seq_length` that overrides the
//! tokenizer's own truncation.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How token vectors become one sentence vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pooling {
    pub cls: bool,
    pub max: bool,
    pub mean: bool,
    pub mean_sqrt_len: bool,
    /// L2-normalise the pooled vector (a `Normalize` module).
    pub normalize: bool,
}

impl Default for Pooling {
    /// Without sentence-transformers files: mean pooling, not normalised.
    fn default() -> Self {
        Self {
            cls: false,
            max: false,
            mean: true,
            mean_sqrt_len: false,
            normalize: false,
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{}: not valid JSON", path.display()))
}

/// sentence-transformers' `max_seq_length`, when the directory has
/// `sentence_bert_config.json`.
pub fn max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("sentence_bert_config.json");
    match read_json(&path)? {
        None => Ok(None),
        Some(config) => match config.get("max_seq_length") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .with_context(|| format!("{}: \"max_seq_length\" is {v}", path.display())),
        },
    }
}

impl Pooling {
    /// The pipeline of a model directory: from `modules.json` when present, else
    /// [`Pooling::default`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let Some(modules) = read_json(&modules_path)? else {
            return Ok(Self::default());
        };
        let modules = modules
            .as_array()
            .with_context(|| format!("{}: expected a list of modules", modules_path.display()))?;
        let kind = |m: &Value| {
            m.get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let mut pooling = None;
        let mut normalize = false;
        for module in modules {
            let kind = kind(module);
            match kind.rsplit('.').next().unwrap_or("") {
                "Transformer" => {}
                "Pooling" => {
                    let sub = module.get("path").and_then(Value::as_str).unwrap_or("");
                    pooling = Some(Self::read_pooling(&dir.join(sub).join("config.json"))?);
                }
                "Normalize" => normalize = true,
                _ => bail!(
                    "{}: module {kind:?} is not supported (Transformer, Pooling, Normalize are)",
                    modules_path.display()
                ),
            }
        }
        let mut pooling =
            pooling.with_context(|| format!("{}: no Pooling module", modules_path.display()))?;
        pooling.normalize = normalize;
        Ok(pooling)
    }

    fn read_pooling(path: &Path) -> Result<Self> {
        let config = read_json(path)?.with_context(|| {
            format!("{}: missing (the Pooling module's config)", path.display())
        })?;
        let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
        for unsupported in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
            if flag(unsupported) {
                bail!("{}: {unsupported} is not supported", path.display());
            }
        }
        let pooling = Self {
            cls: flag("pooling_mode_cls_token"),
            max: flag("pooling_mode_max_tokens"),
            mean: flag("pooling_mode_mean_tokens"),
            mean_sqrt_len: flag("pooling_mode_mean_sqrt_len_tokens"),
            normalize: false,
        };
        if !(pooling.cls || pooling.max || pooling.mean || pooling.mean_sqrt_len) {
            bail!("{}: no pooling mode is switched on", path.display());
        }
        Ok(pooling)
    }

    /// Pool one sequence's token vectors `hidden` `[tokens, d]` (padding excluded):
    /// the modes' vectors concatenated in sentence-transformers' order (CLS, max, mean,
    /// mean·√len), then normalised when asked. Sums are taken in f64.
    pub fn pool(&self, hidden: &[f32], d: usize) -> Vec<f32> {
        let tokens = hidden.len() / d;
        let mut out = Vec::new();
        if self.cls {
            out.extend_from_slice(&hidden[..d]);
        }
        if self.max {
            out.extend((0..d).map(|j| {
                (0..tokens)
                    .map(|t| hidden[t * d + j])
                    .fold(f32::NEG_INFINITY, f32::max)
            }));
        }
        if self.mean || self.mean_sqrt_len {
            let sums: Vec<f64> = (0..d)
                .map(|j| (0..tokens).map(|t| hidden[t * d + j] as f64).sum())
                .collect();
            if self.mean {
                out.extend(sums.iter().map(|s| (s / tokens as f64) as f32));
            }
            if self.mean_sqrt_len {
                out.extend(sums.iter().map(|s| (s / (tokens as f64).sqrt()) as f32));
            }
        }
        if self.normalize {
            let norm = out.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            // sentence-transformers divides by max(‖v‖, 1e-12).
            let scale = 1.0 / norm.max(1e-12);
            out.iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
        }
        out
    }
}
