//! `config.json` of a Hugging Face BERT or RoBERTa checkpoint: the keys the model reads
//! (with `transformers`' defaults), read from and written back into the file's own JSON
//! so that every other key (`id2label`, `_name_or_path`, ...) survives a round trip.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use fisherkit_model::config_keys::ConfigKeys;
use fisherkit_model::Example;
use fisherkit_nn::FeedForwardKind;
use serde_json::{json, Map, Value};

/// BERT and RoBERTa differ in names, position ids, pad id and the classification head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
}

impl Family {
    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
        }
    }

    /// The prefix of the encoder's parameters inside a task model
    /// (`BertForSequenceClassification`: `bert.`).
    pub fn body_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
        }
    }

    /// `architectures` entries: the bare encoder, then the sequence classifier.
    pub fn architectures(self) -> [&'static str; 2] {
        match self {
            Family::Bert => ["BertModel", "BertForSequenceClassification"],
            Family::Roberta => ["RobertaModel", "RobertaForSequenceClassification"],
        }
    }
}

/// The hyper-parameters the model reads, and the whole `config.json` they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub initializer_range: f64,
    /// Class names of a classification head, by class index (`id2label`); the head's
    /// size when the model has one.
    pub labels: Vec<String>,
    /// The file's JSON, written back with the keys above updated.
    raw: Map<String, Value>,
}

/// The `model_type`s this crate reads.
pub const MODEL_TYPES: [&str; 2] = ["bert", "roberta"];

/// Named shapes for `fisherkit init --preset`.
pub const PRESETS: &[&str] = &["bert-tiny", "bert-base", "roberta-base", "minilm-l6"];

impl BertConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("{}", path.display()))
    }

    /// Read the keys from a `config.json` value; missing keys take `transformers`'
    /// defaults (BERT-base; RoBERTa's pad id 1). A key of the wrong type is an error
    /// naming it.
    pub fn from_json(value: &Value) -> Result<Self> {
        let raw = value
            .as_object()
            .context("config.json must be a JSON object")?
            .clone();
        let family = match raw.get("model_type").and_then(Value::as_str) {
            Some("bert") => Family::Bert,
            Some("roberta") => Family::Roberta,
            Some(other) => bail!("model_type {other:?} is not bert or roberta"),
            None => {
                let names = raw
                    .get("architectures")
                    .map(Value::to_string)
                    .unwrap_or_default();
                if names.contains("Roberta") {
                    Family::Roberta
                } else {
                    Family::Bert
                }
            }
        };
        let keys = ConfigKeys(&raw);
        let hidden_act = keys.string("hidden_act", "gelu")?;
        if let Some(kind) = raw.get("position_embedding_type").and_then(Value::as_str) {
            ensure!(
                kind == "absolute",
                "\"position_embedding_type\": {kind:?} is not supported (only \"absolute\")"
            );
        }
        let default_pad = match family {
            Family::Bert => 0,
            Family::Roberta => 1,
        };
        let config = Self {
            family,
            vocab_size: keys.usize("vocab_size", 30522)?,
            hidden_size: keys.usize("hidden_size", 768)?,
            num_hidden_layers: keys.usize("num_hidden_layers", 12)?,
            num_attention_heads: keys.usize("num_attention_heads", 12)?,
            intermediate_size: keys.usize("intermediate_size", 3072)?,
            hidden_act,
            hidden_dropout_prob: keys.f64("hidden_dropout_prob", 0.1)?,
            attention_probs_dropout_prob: keys.f64("attention_probs_dropout_prob", 0.1)?,
            max_position_embeddings: keys.usize("max_position_embeddings", 512)?,
            type_vocab_size: keys.usize("type_vocab_size", 2)?,
            layer_norm_eps: keys.f64("layer_norm_eps", 1e-12)?,
            pad_token_id: keys.usize("pad_token_id", default_pad)? as u32,
            initializer_range: keys.f64("initializer_range", 0.02)?,
            labels: labels(&raw)?,
            raw,
        };
        config.validate()?;
        Ok(config)
    }

    /// Impossible shapes are errors before any weight is read.
    pub fn validate(&self) -> Result<()> {
        FeedForwardKind::parse(&self.hidden_act).context("\"hidden_act\"")?;
        ensure!(
            self.hidden_size > 0 && self.num_attention_heads > 0,
            "hidden_size and num_attention_heads must be positive"
        );
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(self.vocab_size > 0, "vocab_size must be positive");
        ensure!(
            self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite(),
            "layer_norm_eps must be a positive number, got {}",
            self.layer_norm_eps
        );
        ensure!(self.type_vocab_size > 0, "type_vocab_size must be positive");
        ensure!(
            (self.pad_token_id as usize) < self.vocab_size,
            "pad_token_id {} is outside the vocabulary (vocab_size {})",
            self.pad_token_id,
            self.vocab_size
        );
        ensure!(
            self.max_position_embeddings > self.position_offset(),
            "max_position_embeddings {} leaves no positions",
            self.max_position_embeddings
        );
        for (key, rate) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            ensure!(
                (0.0..1.0).contains(&rate),
                "\"{key}\" must be in [0, 1), got {rate}"
            );
        }
        Ok(())
    }

    pub fn feed_forward(&self) -> FeedForwardKind {
        FeedForwardKind::parse(&self.hidden_act).expect("validated")
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The position id of the first token: RoBERTa numbers positions after the padding
    /// id (`pad_token_id + 1`), BERT from 0.
    pub fn position_offset(&self) -> usize {
        match self.family {
            Family::Bert => 0,
            Family::Roberta => self.pad_token_id as usize + 1,
        }
    }

    /// The longest input the position table reaches.
    pub fn max_len(&self) -> usize {
        self.max_position_embeddings - self.position_offset()
    }

    /// Ids must be non-empty and inside the vocabulary; errors name `what`.
    pub fn check_ids(&self, ids: &[u32], what: &str) -> Result<()> {
        ensure!(
            !ids.is_empty(),
            "empty {what}: at least one token is needed"
        );
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!(
                "{what} token id {bad} is outside the vocabulary (vocab_size {})",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// Checks one example's ids, token types and length.
    pub fn check_input(&self, example: &Example, index: usize) -> Result<()> {
        let ids = &example.input_ids;
        self.check_ids(ids, &format!("input {index}"))?;
        ensure!(
            ids.len() <= self.max_len(),
            "input {index}: {} tokens, but max_position_embeddings {} allows {} (truncate the input)",
            ids.len(),
            self.max_position_embeddings,
            self.max_len()
        );
        let types = &example.token_type_ids;
        if !types.is_empty() {
            ensure!(
                types.len() == ids.len(),
                "input {index}: {} token_type_ids for {} input_ids",
                types.len(),
                ids.len()
            );
            if let Some(bad) = types.iter().find(|&&t| t as usize >= self.type_vocab_size) {
                bail!(
                    "input {index}: token type {bad}, but the model has type_vocab_size {} (a sentence pair needs a model with token types)",
                    self.type_vocab_size
                );
            }
        }
        Ok(())
    }

    /// The position id of each token of one padded row: BERT counts from 0; RoBERTa
    /// numbers non-padding tokens from `pad_token_id + 1` and gives padding the pad id.
    pub fn position_ids(&self, ids: &[u32], len: usize) -> Vec<i64> {
        match self.family {
            Family::Bert => (0..len as i64).collect(),
            Family::Roberta => {
                let pad = self.pad_token_id;
                let mut count = 0;
                (0..len)
                    .map(|t| match ids.get(t) {
                        Some(&id) if id != pad => {
                            count += 1;
                            (pad as usize + count) as i64
                        }
                        _ => pad as i64,
                    })
                    .collect()
            }
        }
    }

    /// The class count, with `labels` named `LABEL_i` as `transformers` names them.
    pub fn set_num_labels(&mut self, n: usize) {
        self.labels = default_labels(n);
    }

    /// The classes of a head: at least two distinct, non-empty names.
    pub fn set_labels(&mut self, labels: &[String]) -> Result<()> {
        ensure!(
            labels.len() >= 2,
            "a classification head needs at least 2 classes, got {}",
            labels.len()
        );
        for (i, label) in labels.iter().enumerate() {
            ensure!(!label.trim().is_empty(), "class {i} has an empty name");
            ensure!(
                !labels[..i].contains(label),
                "class {label:?} is named twice"
            );
        }
        self.labels = labels.to_vec();
        Ok(())
    }

    /// The `config.json` to write: the file's own keys, with the architecture and the
    /// label maps of a model with (`head`) or without a classification head.
    pub fn to_json(&self, head: bool) -> Value {
        let mut raw = self.raw.clone();
        let [bare, classifier] = self.family.architectures();
        raw.insert("model_type".into(), json!(self.family.model_type()));
        raw.insert(
            "architectures".into(),
            json!([if head { classifier } else { bare }]),
        );
        for (key, value) in [
            ("vocab_size", json!(self.vocab_size)),
            ("hidden_size", json!(self.hidden_size)),
            ("num_hidden_layers", json!(self.num_hidden_layers)),
            ("num_attention_heads", json!(self.num_attention_heads)),
            ("intermediate_size", json!(self.intermediate_size)),
            ("hidden_act", json!(self.hidden_act)),
            ("hidden_dropout_prob", json!(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                json!(self.attention_probs_dropout_prob),
            ),
            (
                "max_position_embeddings",
                json!(self.max_position_embeddings),
            ),
            ("type_vocab_size", json!(self.type_vocab_size)),
            ("layer_norm_eps", json!(self.layer_norm_eps)),
            ("pad_token_id", json!(self.pad_token_id)),
            ("initializer_range", json!(self.initializer_range)),
        ] {
            raw.insert(key.into(), value);
        }
        if head {
            let id2label: Map<String, Value> = self
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), json!(l)))
                .collect();
            let label2id: Map<String, Value> = self
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), json!(i)))
                .collect();
            raw.insert("id2label".into(), Value::Object(id2label));
            raw.insert("label2id".into(), Value::Object(label2id));
        } else {
            raw.remove("id2label");
            raw.remove("label2id");
        }
        raw.remove("num_labels");
        Value::Object(raw)
    }

    /// The `config.json` value of a preset.
    pub fn preset(name: &str) -> Result<Value> {
        let (model_type, vocab, hidden, layers, heads, ff, positions, pad) = match name {
            "bert-tiny" => ("bert", 1000, 64, 2, 4, 128, 128, 0),
            "bert-base" => ("bert", 30522, 768, 12, 12, 3072, 512, 0),
            "roberta-base" => ("roberta", 50265, 768, 12, 12, 3072, 514, 1),
            "minilm-l6" => ("bert", 30522, 384, 6, 12, 1536, 512, 0),
            other => bail!("unknown preset {other:?}; known: {}", PRESETS.join(", ")),
        };
        let types = if model_type == "roberta" { 1 } else { 2 };
        Ok(json!({
            "model_type": model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": ff,
            "max_position_embeddings": positions,
            "type_vocab_size": types,
            "pad_token_id": pad,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
        }))
    }
}

/// `LABEL_0` … `LABEL_{n-1}`, as `transformers` names classes it was given no names for.
pub fn default_labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

/// `id2label` (`{"0": "neg", ...}`) as a list by class index, or `num_labels` classes
/// named `LABEL_i`; none when the config has neither.
fn labels(raw: &Map<String, Value>) -> Result<Vec<String>> {
    if let Some(map) = raw.get("id2label").and_then(Value::as_object) {
        let mut labels = vec![None; map.len()];
        for (index, label) in map {
            let i: usize = index
                .parse()
                .ok()
                .filter(|&i| i < map.len())
                .with_context(|| {
                    format!(
                        "\"id2label\": key {index:?} is not a class index below {}",
                        map.len()
                    )
                })?;
            labels[i] = Some(
                label
                    .as_str()
                    .with_context(|| format!("\"id2label\"[{index:?}] is {label}, not a string"))?
                    .to_string(),
            );
        }
        let labels: Vec<String> = labels
            .into_iter()
            .map(|l| l.expect("one per index"))
            .collect();
        if let Some(n) = raw.get("num_labels").and_then(Value::as_u64) {
            ensure!(
                n as usize == labels.len(),
                "\"num_labels\" {n} differs from the {} entries of \"id2label\"",
                labels.len()
            );
        }
        return Ok(labels);
    }
    Ok(match raw.get("num_labels").and_then(Value::as_u64) {
        Some(n) => default_labels(n as usize),
        None => Vec::new(),
    })
}
