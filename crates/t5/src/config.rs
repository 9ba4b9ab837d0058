//! `config.json` of a Hugging Face T5 checkpoint, field for field, with HF defaults for
//! the keys old configs omit, and the named presets `fisherkit init` knows.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The T5 hyper-parameters as Hugging Face stores them. Unknown keys (`id2label`,
/// `task_specific_params`, ...) are kept in `extra` and written back unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    #[serde(default = "defaults::d_kv")]
    pub d_kv: usize,
    #[serde(default = "defaults::d_ff")]
    pub d_ff: usize,
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    /// `None` in old configs: the decoder then has `num_layers` blocks.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "defaults::dropout_rate")]
    pub dropout_rate: f64,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::initializer_factor")]
    pub initializer_factor: f64,
    #[serde(default = "defaults::feed_forward_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "defaults::yes")]
    pub is_encoder_decoder: bool,
    #[serde(default = "defaults::yes")]
    pub use_cache: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: u32,
    /// v1.0 ties `lm_head` to `shared` (true); v1.1/Flan configs say false.
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    /// transformers ≥ 5 writes this explicitly; older configs derive it from
    /// `tie_word_embeddings` (multiply the decoder output by d_model^-0.5 when tied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub classifier_dropout: f64,
    #[serde(default = "defaults::model_type")]
    pub model_type: String,
    // The transformer-modification switches (fisherkit keys; absent = T5 as published).
    // README "Model switches" lists them.
    /// `rms` (T5), `layer`, `rezero`, `rezero_layer`, `rezero_rms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_type: Option<String>,
    /// `relative` (T5), `absolute`, `sinusoidal`, `rotary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
    /// Reach of absolute and sinusoidal positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// Base of rotary frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Inner width of factorised embeddings (`None` = `d_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<usize>,
    /// `none`, `encoder`, `decoder`, `all`: one block per stack, applied every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_layers: Option<String>,
    /// Grouped-query attention: key/value heads shared by groups of query heads (HF's
    /// key; `None` = `num_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// `encoder-decoder` (T5), `decoder-only` (a causal language model) or `prefix-lm`
    /// (fully visible over the input, causal over the target): the T5 paper's
    /// architecture comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    // Mixture-of-experts feed-forwards (Switch Transformer / GShard), with Hugging Face's
    // keys (SwitchTransformers, Mixtral); absent `num_experts` = dense feed-forwards.
    /// Experts per sparse feed-forward (at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts: Option<usize>,
    /// Experts each token is routed to: 1 (Switch) or 2 (GShard); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<usize>,
    /// The most tokens of one sequence an expert takes (default 64, as HF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_capacity: Option<usize>,
    /// Weight α of the load-balancing loss (default 0.01, the Switch paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_aux_loss_coef: Option<f64>,
    /// Weight β of the router z-loss (default 0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_z_loss_coef: Option<f64>,
    /// Which encoder feed-forwards are sparse: every one at 1 (default), else layers i
    /// with i mod step = 1 (HF's rule: every other layer from the second at 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_sparse_step: Option<usize>,
    /// The same for the decoder (and a single-stack LM's one stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_sparse_step: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        32128
    }
    pub fn d_model() -> usize {
        512
    }
    pub fn d_kv() -> usize {
        64
    }
    pub fn d_ff() -> usize {
        2048
    }
    pub fn num_layers() -> usize {
        6
    }
    pub fn num_heads() -> usize {
        8
    }
    pub fn num_buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
    }
    pub fn dropout_rate() -> f64 {
        0.1
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-6
    }
    pub fn initializer_factor() -> f64 {
        1.0
    }
    pub fn feed_forward_proj() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eos_token_id() -> u32 {
        1
    }
    pub fn model_type() -> String {
        "t5".into()
    }
}

pub use fisherkit_nn::{Activation, FeedForwardKind, NormKind, PositionKind, ResidualKind};

/// `norm_type`: which normalisation each sublayer (and each stack's end) has, and how
/// its residual branch is joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormType {
    /// `None`: no normalisation.
    pub norm: Option<NormKind>,
    pub residual: ResidualKind,
}

pub const NORM_TYPES: &[&str] = &[
    "rms",
    "layer",
    "rezero",
    "rezero_layer",
    "rezero_rms",
    "fixup",
];

impl NormType {
    pub fn parse(name: &str) -> Result<Self> {
        let (norm, residual) = match name {
            "rms" => (Some(NormKind::Rms), ResidualKind::Plain),
            "layer" => (Some(NormKind::Layer), ResidualKind::Plain),
            "rezero" => (None, ResidualKind::ReZero),
            "rezero_layer" => (Some(NormKind::Layer), ResidualKind::ReZero),
            "rezero_rms" => (Some(NormKind::Rms), ResidualKind::ReZero),
            "fixup" => (None, ResidualKind::Fixup),
            other => bail!(
                "unknown norm_type {other:?}; valid values: {}",
                NORM_TYPES.join(", ")
            ),
        };
        Ok(Self { norm, residual })
    }
}

/// `architecture`: how inputs and targets meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// The encoder reads the input, the decoder writes the target attending to it.
    EncoderDecoder,
    /// One causal stack over the input followed by the target; the loss is on the target.
    DecoderOnly,
    /// One stack over the input followed by the target: fully visible over the input
    /// (the prefix), causal over the target.
    PrefixLm,
}

pub const ARCHITECTURES: &[&str] = &["encoder-decoder", "decoder-only", "prefix-lm"];

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "encoder-decoder" => Self::EncoderDecoder,
            "decoder-only" => Self::DecoderOnly,
            "prefix-lm" => Self::PrefixLm,
            other => bail!(
                "unknown architecture {other:?}; valid values: {}",
                ARCHITECTURES.join(", ")
            ),
        })
    }

    /// The `architectures` entry of `config.json` (T5's HF class, fisherkit's names
    /// for the single-stack models, which transformers has no class for).
    pub fn class_name(self) -> &'static str {
        match self {
            Self::EncoderDecoder => "T5ForConditionalGeneration",
            Self::DecoderOnly => "FisherkitT5DecoderOnly",
            Self::PrefixLm => "FisherkitT5PrefixLM",
        }
    }
}

/// `share_layers`: which stacks apply one block at every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareLayers {
    pub encoder: bool,
    pub decoder: bool,
}

pub const SHARE_LAYERS: &[&str] = &["none", "encoder", "decoder", "all"];

impl ShareLayers {
    pub fn parse(name: &str) -> Result<Self> {
        let (encoder, decoder) = match name {
            "none" => (false, false),
            "encoder" => (true, false),
            "decoder" => (false, true),
            "all" => (true, true),
            other => bail!(
                "unknown share_layers {other:?}; valid values: {}",
                SHARE_LAYERS.join(", ")
            ),
        };
        Ok(Self { encoder, decoder })
    }
}

/// Tokens of one sequence an expert takes when `expert_capacity` is absent (HF's default).
pub const DEFAULT_EXPERT_CAPACITY: usize = 64;
/// The load-balancing loss weight when `router_aux_loss_coef` is absent: the Switch
/// paper's α (HF's SwitchTransformers defaults to 0.001).
pub const DEFAULT_ROUTER_AUX_LOSS_COEF: f64 = 0.01;

/// Reach of absolute/sinusoidal positions when `max_position_embeddings` is absent.
pub const DEFAULT_MAX_POSITIONS: usize = 512;
/// Rotary frequency base when `rope_theta` is absent.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

impl T5Config {
    /// Read and validate `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid T5 config.json", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid T5 config", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        FeedForwardKind::parse(&self.feed_forward_proj)?;
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            bail!(
                "layer_norm_epsilon must be a positive number, got {}",
                self.layer_norm_epsilon
            );
        }
        self.norm_type()?;
        self.share_layers()?;
        self.architecture()?;
        let positions = self.position_kind()?;
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ] {
            if value == 0 {
                bail!("{name} must be positive");
            }
        }
        if let Some(width) = self.embedding_dim {
            if width == 0 {
                bail!("embedding_dim must be positive");
            }
            if width != self.d_model && self.tie_word_embeddings {
                bail!(
                    "embedding_dim {width} differs from d_model {}: a factorised embedding cannot be tied to the output head; set \"tie_word_embeddings\": false",
                    self.d_model
                );
            }
        }
        let kv_heads = self.kv_heads();
        if kv_heads == 0 || !self.num_heads.is_multiple_of(kv_heads) {
            bail!(
                "num_key_value_heads {kv_heads} must divide num_heads {} (grouped-query attention)",
                self.num_heads
            );
        }
        if positions == PositionKind::Rotary && !self.d_kv.is_multiple_of(2) {
            bail!("rotary positions need an even d_kv (got {})", self.d_kv);
        }
        if self.max_positions() == 0 {
            bail!("max_position_embeddings must be positive");
        }
        if self.rope_theta().is_nan() || self.rope_theta() <= 1.0 {
            bail!("rope_theta {} must be greater than 1", self.rope_theta());
        }
        self.validate_experts()?;
        if !(0.0..1.0).contains(&self.dropout_rate) {
            bail!("dropout_rate {} is not in [0, 1)", self.dropout_rate);
        }
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                bail!(
                    "{name} {id} is outside the vocabulary of {}",
                    self.vocab_size
                );
            }
        }
        Ok(())
    }

    fn validate_experts(&self) -> Result<()> {
        let Some(routing) = self.routing() else {
            for (key, set) in [
                ("num_experts_per_tok", self.num_experts_per_tok.is_some()),
                ("expert_capacity", self.expert_capacity.is_some()),
                ("encoder_sparse_step", self.encoder_sparse_step.is_some()),
                ("decoder_sparse_step", self.decoder_sparse_step.is_some()),
            ] {
                if set {
                    bail!("{key} is set but num_experts is not (a dense model has no experts)");
                }
            }
            return Ok(());
        };
        if routing.experts < 2 {
            bail!(
                "num_experts {} must be at least 2 (remove the key for a dense feed-forward)",
                routing.experts
            );
        }
        if !(1..=2).contains(&routing.top_k) || routing.top_k > routing.experts {
            bail!(
                "num_experts_per_tok {} must be 1 (Switch) or 2 (GShard) and at most num_experts",
                routing.top_k
            );
        }
        if routing.capacity == 0 {
            bail!("expert_capacity must be positive");
        }
        for (key, value) in [
            ("router_aux_loss_coef", routing.aux_loss_coef),
            ("router_z_loss_coef", routing.z_loss_coef),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                bail!("{key} {value} must be a non-negative number");
            }
        }
        for (key, step) in [
            ("encoder_sparse_step", self.encoder_sparse_step),
            ("decoder_sparse_step", self.decoder_sparse_step),
        ] {
            if step == Some(0) {
                bail!("{key} must be positive");
            }
        }
        Ok(())
    }

    pub fn feed_forward(&self) -> FeedForwardKind {
        FeedForwardKind::parse(&self.feed_forward_proj).expect("validated on construction")
    }

    pub fn norm_type(&self) -> Result<NormType> {
        NormType::parse(self.norm_type.as_deref().unwrap_or("rms"))
    }

    pub fn position_kind(&self) -> Result<PositionKind> {
        PositionKind::parse(
            self.position_embedding_type
                .as_deref()
                .unwrap_or("relative"),
        )
    }

    pub fn share_layers(&self) -> Result<ShareLayers> {
        ShareLayers::parse(self.share_layers.as_deref().unwrap_or("none"))
    }

    pub fn architecture(&self) -> Result<Architecture> {
        Architecture::parse(self.architecture.as_deref().unwrap_or("encoder-decoder"))
    }

    /// A decoder-only or prefix LM: one stack, no encoder.
    pub fn is_single_stack(&self) -> bool {
        self.architecture().expect("validated on construction") != Architecture::EncoderDecoder
    }

    /// The routing of the mixture-of-experts feed-forwards, `None` when they are dense.
    pub fn routing(&self) -> Option<fisherkit_nn::Routing> {
        Some(fisherkit_nn::Routing {
            experts: self.num_experts?,
            top_k: self.num_experts_per_tok.unwrap_or(1),
            capacity: self.expert_capacity.unwrap_or(DEFAULT_EXPERT_CAPACITY),
            aux_loss_coef: self
                .router_aux_loss_coef
                .unwrap_or(DEFAULT_ROUTER_AUX_LOSS_COEF),
            z_loss_coef: self.router_z_loss_coef.unwrap_or(0.0),
        })
    }

    /// Whether feed-forward `layer` of the encoder (else of the decoder or single stack)
    /// is a mixture of experts (HF SwitchTransformers' `sparse_step` rule).
    pub fn is_sparse_layer(&self, encoder: bool, layer: usize) -> bool {
        let step = if encoder {
            self.encoder_sparse_step
        } else {
            self.decoder_sparse_step
        }
        .unwrap_or(1);
        self.num_experts.is_some() && (step == 1 || layer % step == 1)
    }

    /// Sparse feed-forward layers of the encoder and of the decoder (or single stack).
    pub fn sparse_layers(&self) -> (usize, usize) {
        let count = |encoder: bool, depth: usize| {
            (0..depth)
                .filter(|&i| self.is_sparse_layer(encoder, i))
                .count()
        };
        let encoder = if self.is_single_stack() {
            0
        } else {
            count(true, self.num_layers)
        };
        (encoder, count(false, self.decoder_layers()))
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_heads)
    }

    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .unwrap_or(DEFAULT_MAX_POSITIONS)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The embedding table's width.
    pub fn embedding_width(&self) -> usize {
        self.embedding_dim.unwrap_or(self.d_model)
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// An input or target id sequence must be non-empty and inside the vocabulary.
    pub(crate) fn check_ids(&self, ids: &[u32], what: &str) -> Result<()> {
        anyhow::ensure!(
            !ids.is_empty(),
            "empty {what}: at least one token is needed"
        );
        let vocab = self.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("{what} token id {bad} is outside the vocabulary (vocab_size {vocab})");
        }
        Ok(())
    }

    /// The teacher-forced decoder input of a target: shifted right behind
    /// `decoder_start_token_id`.
    pub(crate) fn decoder_input(&self, target: &[u32]) -> Vec<u32> {
        std::iter::once(self.decoder_start_token_id)
            .chain(target[..target.len().saturating_sub(1)].iter().copied())
            .collect()
    }

    /// What a single-stack LM's positions see when its input has `input_len` tokens.
    pub fn lm_mask(&self, input_len: usize) -> Result<fisherkit_nn::attention::Mask> {
        use fisherkit_nn::attention::Mask;
        Ok(match self.architecture()? {
            Architecture::DecoderOnly => Mask::Causal,
            Architecture::PrefixLm => Mask::Prefix(input_len),
            Architecture::EncoderDecoder => bail!("an encoder-decoder has no single-stack mask"),
        })
    }

    /// Whether the decoder output is multiplied by d_model^-0.5 before `lm_head`.
    pub fn scales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    /// The config as Hugging Face writes it: every field present, plus
    /// `architectures`, `dense_act_fn` and `is_gated_act` for readers that expect them.
    pub fn to_hf_json(&self) -> Value {
        let mut config = self.clone();
        config.num_decoder_layers = Some(self.decoder_layers());
        config.scale_decoder_outputs = Some(self.scales_decoder_output());
        let mut value = serde_json::to_value(&config).expect("config serialises");
        let object = value.as_object_mut().expect("config is an object");
        let kind = self.feed_forward();
        let act = self
            .feed_forward_proj
            .rsplit('-')
            .next()
            .unwrap_or("relu")
            .to_string();
        let dense_act_fn = if kind.gated && act == "gelu" {
            "gelu_new".into()
        } else {
            act
        };
        let architecture = self.architecture().expect("validated on construction");
        if architecture == Architecture::EncoderDecoder {
            object
                .entry("architectures")
                .or_insert_with(|| Value::from(vec![architecture.class_name()]));
        } else {
            object.insert(
                "architectures".into(),
                vec![architecture.class_name()].into(),
            );
            object.insert("is_encoder_decoder".into(), false.into());
        }
        object.insert("dense_act_fn".into(), dense_act_fn.into());
        object.insert("is_gated_act".into(), kind.gated.into());
        value
    }

    /// The keys `config.json` may set (every field, including the switches).
    pub fn known_keys() -> Vec<String> {
        // Optional keys are serialised only when set, so set them all.
        let all = Self {
            num_decoder_layers: Some(0),
            scale_decoder_outputs: Some(false),
            norm_type: Some(String::new()),
            position_embedding_type: Some(String::new()),
            max_position_embeddings: Some(0),
            rope_theta: Some(0.0),
            embedding_dim: Some(0),
            share_layers: Some(String::new()),
            num_key_value_heads: Some(0),
            architecture: Some(String::new()),
            num_experts: Some(0),
            num_experts_per_tok: Some(0),
            expert_capacity: Some(0),
            router_aux_loss_coef: Some(0.0),
            router_z_loss_coef: Some(0.0),
            encoder_sparse_step: Some(0),
            decoder_sparse_step: Some(0),
            ..Self::default()
        };
        let value = serde_json::to_value(&all).expect("config serialises");
        let mut keys: Vec<String> = value
            .as_object()
            .expect("config is an object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// This config with `KEY=VALUE` settings applied (`fisherkit init --set`): a value
    /// is read as JSON when it parses (numbers, booleans, `null`), else as a string. An
    /// unknown key, a value of the wrong type or an invalid combination is an error
    /// naming the key.
    pub fn with_settings(&self, settings: &[(String, String)]) -> Result<Self> {
        let known = Self::known_keys();
        let mut value = serde_json::to_value(self).expect("config serialises");
        let object = value.as_object_mut().expect("config is an object");
        for (key, text) in settings {
            if !known.contains(key) {
                bail!(
                    "unknown config key {key:?}; valid keys: {}",
                    known.join(", ")
                );
            }
            let parsed = serde_json::from_str(text).unwrap_or_else(|_| Value::from(text.as_str()));
            object.insert(key.clone(), parsed);
        }
        let config: Self = serde_json::from_value(value).with_context(|| {
            let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
            format!("--set {}: a value has the wrong type", keys.join(", "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every value of every transformer-modification switch, as named `init --set`
    /// settings on this config (widths that must fit its shape are derived from it):
    /// what the README's switch table lists and what every per-switch test runs.
    pub fn switch_settings(&self) -> Vec<(String, Vec<(String, String)>)> {
        let setting = |key: &str, value: String| (key.to_string(), value);
        let mut all = Vec::new();
        let mut push = |settings: Vec<(String, String)>| {
            let name = settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            all.push((name, settings));
        };
        for activation in fisherkit_nn::activation::ACTIVATION_NAMES {
            if *activation != "linear" {
                push(vec![setting("feed_forward_proj", activation.to_string())]);
            }
            push(vec![setting(
                "feed_forward_proj",
                format!("gated-{activation}"),
            )]);
        }
        for norm in NORM_TYPES {
            push(vec![setting("norm_type", norm.to_string())]);
        }
        for position in fisherkit_nn::position::POSITION_KINDS {
            let mut settings = vec![setting("position_embedding_type", position.to_string())];
            // Rotary pairs dimensions, so each head needs an even width.
            if *position == "rotary" && !self.d_kv.is_multiple_of(2) {
                settings.push(setting("d_kv", (self.d_kv + 1).to_string()));
            }
            push(settings);
        }
        push(vec![
            setting("embedding_dim", (self.d_model / 2).max(1).to_string()),
            setting("tie_word_embeddings", "false".into()),
        ]);
        for tied in ["true", "false"] {
            push(vec![setting("tie_word_embeddings", tied.into())]);
        }
        for share in SHARE_LAYERS {
            push(vec![setting("share_layers", share.to_string())]);
        }
        let kv_heads = if self.num_heads.is_multiple_of(2) && self.num_heads > 2 {
            self.num_heads / 2
        } else {
            1
        };
        push(vec![setting("num_key_value_heads", kv_heads.to_string())]);
        all
    }

    /// A named preset (`fisherkit init --preset`).
    pub fn preset(name: &str) -> Result<Self> {
        // (d_model, d_kv, d_ff, layers, heads, gated v1.1 style)
        let (d_model, d_kv, d_ff, layers, heads, v11, vocab) = match name {
            // The project's quick-benchmark shape (as in scripts/peers/hf_t5_peer.py "tiny").
            "tiny" => (256, 32, 1024, 4, 8, true, 8000),
            "t5-small" => (512, 64, 2048, 6, 8, false, 32128),
            "t5-base" => (768, 64, 3072, 12, 12, false, 32128),
            "t5-large" => (1024, 64, 4096, 24, 16, false, 32128),
            "t5-3b" => (1024, 128, 16384, 24, 32, false, 32128),
            "t5-11b" => (1024, 128, 65536, 24, 128, false, 32128),
            "t5-v1_1-small" | "flan-t5-small" => (512, 64, 1024, 8, 6, true, 32128),
            "t5-v1_1-base" | "flan-t5-base" => (768, 64, 2048, 12, 12, true, 32128),
            "t5-v1_1-large" | "flan-t5-large" => (1024, 64, 2816, 24, 16, true, 32128),
            "t5-v1_1-xl" | "flan-t5-xl" => (2048, 64, 5120, 24, 32, true, 32128),
            other => bail!("unknown preset {other:?}; known: {}", PRESETS.join(", ")),
        };
        let config = Self {
            vocab_size: vocab,
            d_model,
            d_kv,
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            feed_forward_proj: if v11 { "gated-gelu" } else { "relu" }.into(),
            tie_word_embeddings: !v11,
            // Derived from `tie_word_embeddings`, so `--set tie_word_embeddings=...` moves both.
            scale_decoder_outputs: None,
            ..Self::default()
        };
        Ok(config)
    }
}

/// Names accepted by [`T5Config::preset`].
pub const PRESETS: &[&str] = &[
    "tiny",
    "t5-small",
    "t5-base",
    "t5-large",
    "t5-3b",
    "t5-11b",
    "t5-v1_1-small",
    "t5-v1_1-base",
    "t5-v1_1-large",
    "t5-v1_1-xl",
    "flan-t5-small",
    "flan-t5-base",
    "flan-t5-large",
    "flan-t5-xl",
];

impl Default for T5Config {
    /// The Hugging Face defaults (those of t5-small).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_hf_defaults() {
        let config: T5Config = serde_json::from_str(r#"{"d_model": 64, "num_layers": 3}"#).unwrap();
        assert_eq!(config.decoder_layers(), 3);
        assert_eq!(config.vocab_size, 32128);
        assert_eq!(config.relative_attention_max_distance, 128);
        assert!(config.scales_decoder_output());
        let v11: T5Config = serde_json::from_str(r#"{"tie_word_embeddings": false}"#).unwrap();
        assert!(!v11.scales_decoder_output());
    }

    #[test]
    fn unknown_feed_forward_proj_is_an_error() {
        assert!(FeedForwardKind::parse("gated-gelu").unwrap().gated);
        let err = FeedForwardKind::parse("gated-wobble")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wobble"), "{err}");
        assert!(FeedForwardKind::parse("half-relu").is_err());
    }

    #[test]
    fn hf_json_round_trips_with_extra_keys() {
        let text = r#"{"d_model": 64, "id2label": {"0": "A"}, "num_decoder_layers": null}"#;
        let config: T5Config = serde_json::from_str(text).unwrap();
        let json = config.to_hf_json();
        assert_eq!(json["id2label"]["0"], "A");
        assert_eq!(json["num_decoder_layers"], 6);
        let back: T5Config = serde_json::from_value(json).unwrap();
        assert_eq!(back.decoder_layers(), 6);
        assert_eq!(back.d_model, 64);
    }
}
