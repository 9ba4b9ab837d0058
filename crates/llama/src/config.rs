//! `config.json` of a Hugging Face `LlamaForCausalLM` checkpoint: the keys the model
//! reads (with `transformers`' `LlamaConfig` defaults), read from and written back into
//! the file's own JSON so that every other key survives a round trip.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use fisherkit_model::config_keys::ConfigKeys;
use fisherkit_nn::FeedForwardKind;
use serde_json::{json, Map, Value};

/// `config.json`'s `model_type`.
pub const MODEL_TYPE: &str = "llama";

/// Named shapes for `fisherkit init --preset`.
pub const PRESETS: &[&str] = &["llama-tiny", "llama-160m", "tinyllama-1.1b"];

/// The hyper-parameters the model reads, and the whole `config.json` they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The feed-forward's activation (gated: SwiGLU for `silu`).
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Dropout on attention weights (and, in fisherkit, on residual branches; 0 in every
    /// released Llama).
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub bos_token_id: u32,
    /// The first of `eos_token_id` when it is a list (Llama 3 lists several).
    pub eos_token_id: u32,
    /// `pad_token_id`, or EOS when the config has none (padding is masked either way).
    pub pad_token_id: u32,
    raw: Map<String, Value>,
}

impl LlamaConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("{}", path.display()))
    }

    /// Read the keys from a `config.json` value; missing keys take `LlamaConfig`'s
    /// defaults. A key of the wrong type, or a setting fisherkit does not implement
    /// (`rope_scaling` other than the default), is an error naming it.
    pub fn from_json(value: &Value) -> Result<Self> {
        let raw = value
            .as_object()
            .context("config.json must be a JSON object")?
            .clone();
        if let Some(model_type) = raw.get("model_type").and_then(Value::as_str) {
            ensure!(
                model_type == MODEL_TYPE,
                "model_type {model_type:?} is not llama"
            );
        }
        let keys = ConfigKeys(&raw);
        // transformers ≥ 5 nests the rotary settings in `rope_parameters`; older configs
        // have `rope_theta` and `rope_scaling` at the top.
        let rope = raw.get("rope_parameters").or(raw.get("rope_scaling"));
        if let Some(rope) = rope.filter(|r| !r.is_null()) {
            let kind = rope
                .get("rope_type")
                .or(rope.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            ensure!(
                kind == "default",
                "rope type {kind:?} (rope_parameters / rope_scaling) is not supported: only \"default\" rotary positions"
            );
        }
        let rope_theta = match raw.get("rope_parameters").and_then(|r| r.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .with_context(|| format!("\"rope_parameters.rope_theta\" is {v}, not a number"))?,
            None => keys.f64("rope_theta", 10000.0)?,
        };
        let hidden_act = keys.string("hidden_act", "silu")?;
        let token = |key: &str| -> Result<Option<u32>> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(list)) => match list.first() {
                    Some(first) => Ok(Some(
                        first
                            .as_u64()
                            .with_context(|| format!("\"{key}\" lists {first}, not a token id"))?
                            as u32,
                    )),
                    None => Ok(None),
                },
                Some(v) => Ok(Some(
                    v.as_u64()
                        .with_context(|| format!("\"{key}\" is {v}, not a token id"))?
                        as u32,
                )),
            }
        };
        let hidden_size = keys.usize("hidden_size", 4096)?;
        let num_attention_heads = keys.usize("num_attention_heads", 32)?;
        ensure!(
            num_attention_heads > 0,
            "num_attention_heads must be positive"
        );
        let eos_token_id = token("eos_token_id")?.unwrap_or(2);
        let config = Self {
            vocab_size: keys.usize("vocab_size", 32000)?,
            hidden_size,
            intermediate_size: keys.usize("intermediate_size", 11008)?,
            num_hidden_layers: keys.usize("num_hidden_layers", 32)?,
            num_attention_heads,
            num_key_value_heads: keys.usize("num_key_value_heads", num_attention_heads)?,
            head_dim: keys.usize("head_dim", hidden_size / num_attention_heads)?,
            hidden_act,
            max_position_embeddings: keys.usize("max_position_embeddings", 2048)?,
            rms_norm_eps: keys.f64("rms_norm_eps", 1e-6)?,
            rope_theta,
            attention_bias: keys.bool("attention_bias", false)?,
            mlp_bias: keys.bool("mlp_bias", false)?,
            tie_word_embeddings: keys.bool("tie_word_embeddings", false)?,
            attention_dropout: keys.f64("attention_dropout", 0.0)?,
            initializer_range: keys.f64("initializer_range", 0.02)?,
            bos_token_id: token("bos_token_id")?.unwrap_or(1),
            eos_token_id,
            pad_token_id: token("pad_token_id")?.unwrap_or(eos_token_id),
            raw,
        };
        config.validate()?;
        Ok(config)
    }

    /// Impossible shapes are errors before any weight is read.
    pub fn validate(&self) -> Result<()> {
        self.feed_forward().context("\"hidden_act\"")?;
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            ensure!(value > 0, "{key} must be positive");
        }
        ensure!(
            self.num_attention_heads
                .is_multiple_of(self.num_key_value_heads),
            "num_key_value_heads {} must divide num_attention_heads {} (grouped-query attention)",
            self.num_key_value_heads,
            self.num_attention_heads
        );
        ensure!(
            self.head_dim.is_multiple_of(2),
            "head_dim {} must be even (rotary positions rotate pairs)",
            self.head_dim
        );
        ensure!(
            self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite(),
            "rms_norm_eps must be a positive number, got {}",
            self.rms_norm_eps
        );
        ensure!(
            self.rope_theta > 1.0 && self.rope_theta.is_finite(),
            "rope_theta {} must be greater than 1",
            self.rope_theta
        );
        ensure!(
            (0.0..1.0).contains(&self.attention_dropout),
            "attention_dropout {} is not in [0, 1)",
            self.attention_dropout
        );
        for (key, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            ensure!(
                (id as usize) < self.vocab_size,
                "{key} {id} is outside the vocabulary (vocab_size {})",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// The gated feed-forward (`gate_proj`, `up_proj`, `down_proj`) with `hidden_act`.
    pub fn feed_forward(&self) -> Result<FeedForwardKind> {
        FeedForwardKind::parse(&format!("gated-{}", self.hidden_act))
    }

    /// Ids must be non-empty, inside the vocabulary, and within the positions; errors
    /// name `what`.
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
        self.check_length(ids.len())
    }

    /// A sequence must fit `max_position_embeddings`.
    pub fn check_length(&self, len: usize) -> Result<()> {
        ensure!(
            len <= self.max_position_embeddings,
            "a sequence of {len} tokens is longer than max_position_embeddings ({})",
            self.max_position_embeddings
        );
        Ok(())
    }

    /// The config as `transformers` writes it: the file's keys with the model's values.
    pub fn to_json(&self, tied: bool) -> Value {
        let mut raw = self.raw.clone();
        let mut set = |key: &str, value: Value| {
            raw.insert(key.to_string(), value);
        };
        set("model_type", json!(MODEL_TYPE));
        set("architectures", json!(["LlamaForCausalLM"]));
        set("vocab_size", json!(self.vocab_size));
        set("hidden_size", json!(self.hidden_size));
        set("intermediate_size", json!(self.intermediate_size));
        set("num_hidden_layers", json!(self.num_hidden_layers));
        set("num_attention_heads", json!(self.num_attention_heads));
        set("num_key_value_heads", json!(self.num_key_value_heads));
        set("head_dim", json!(self.head_dim));
        set("hidden_act", json!(self.hidden_act));
        set(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        set("rms_norm_eps", json!(self.rms_norm_eps));
        set("attention_bias", json!(self.attention_bias));
        set("mlp_bias", json!(self.mlp_bias));
        set("tie_word_embeddings", json!(tied));
        set("attention_dropout", json!(self.attention_dropout));
        set("initializer_range", json!(self.initializer_range));
        set("bos_token_id", json!(self.bos_token_id));
        if !self.raw.get("eos_token_id").is_some_and(Value::is_array) {
            set("eos_token_id", json!(self.eos_token_id));
        }
        if self.raw.contains_key("rope_parameters") {
            set(
                "rope_parameters",
                json!({"rope_type": "default", "rope_theta": self.rope_theta}),
            );
        } else {
            set("rope_theta", json!(self.rope_theta));
        }
        set("is_encoder_decoder", json!(false));
        Value::Object(raw)
    }

    /// A named preset's `config.json` value (`fisherkit init --preset`).
    pub fn preset(name: &str) -> Result<Value> {
        // (vocab, hidden, intermediate, layers, heads, kv heads, tied)
        let (vocab, hidden, ff, layers, heads, kv_heads, tied) = match name {
            // The fixture's shape (testdata/fixtures/llama-tiny).
            "llama-tiny" => (96, 64, 160, 2, 4, 4, true),
            // A small research shape (≈ 160 M parameters with a 32k vocabulary).
            "llama-160m" => (32000, 768, 3072, 12, 12, 12, false),
            // TinyLlama-1.1B's shape: grouped-query attention, 4 key/value heads.
            "tinyllama-1.1b" => (32000, 2048, 5632, 22, 32, 4, false),
            other => bail!("unknown preset {other:?}; known: {}", PRESETS.join(", ")),
        };
        Ok(json!({
            "model_type": MODEL_TYPE,
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": ff,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": hidden / heads,
            "hidden_act": "silu",
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": tied,
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        }))
    }
}
