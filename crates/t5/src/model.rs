//! The T5 encoder–decoder (v1.0 and v1.1/Flan) as in Hugging Face `modeling_t5.py`,
//! assembled from the model parts of `fisherkit_nn`: pre-norm sublayers with T5LayerNorm,
//! unscaled attention with a relative position bias shared per stack, ReLU or gated
//! feed-forward, tied or untied output — and the transformer-modification switches of
//! its config (activations, normalisations, positions, factorised embeddings, shared
//! layers, grouped-query attention).
//!
//! Parameters are `[out, in]` matrices exactly as in the PyTorch checkpoint, so loading
//! and saving never transpose. Every parameter is listed once under its HF name by
//! [`T5::named_params`], in checkpoint order.

use anyhow::{ensure, Result};
use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use fisherkit_nn::attention::{causal_mask, AttentionShape};
use fisherkit_nn::position::{Buckets, Rotary};
use fisherkit_nn::stack::{Context, SublayerNames};
use fisherkit_nn::{
    param_list, Attention, AttentionNames, Block, Dropout, Embedding, FeedForward,
    FeedForwardNames, Inner, KeyValue, Linear, Norm, PositionKind, Positions, RelativeBias,
    Residual, Stack, Sublayer,
};

use crate::config::T5Config;

pub use fisherkit_nn::attention::MASKED;
pub use fisherkit_nn::position::relative_position_bucket;

/// HF T5's parameter names inside a block.
const ATTENTION_NAMES: AttentionNames = AttentionNames {
    q: "q.",
    k: "k.",
    v: "v.",
    o: "o.",
    relative_bias: "relative_attention_bias.",
};
const FEED_FORWARD_NAMES: FeedForwardNames = FeedForwardNames {
    dense: "wi.",
    gate_act: "wi_0.",
    gate_linear: "wi_1.",
    output: "wo.",
};
const fn sublayer_names(inner: &'static str) -> SublayerNames {
    SublayerNames {
        inner,
        norm: "layer_norm.",
    }
}

/// The blocks of one stack (encoder: self-attention and feed-forward; decoder: self-,
/// cross-attention and feed-forward), as the config's switches shape them.
fn stack(config: &T5Config, decoder: bool, device: &Device) -> Result<Stack> {
    let norm_type = config.norm_type()?;
    let positions = config.position_kind()?;
    let share = config.share_layers()?;
    let depth = if decoder {
        config.decoder_layers()
    } else {
        config.num_layers
    };
    let shared = if decoder {
        share.decoder
    } else {
        share.encoder
    };
    let distinct = if shared { 1 } else { depth };
    let d = config.d_model;
    let norm = || {
        norm_type
            .norm
            .map(|kind| Norm::new(kind, d, config.layer_norm_epsilon, device))
    };
    let attention_shape = |rotary: bool| AttentionShape {
        d_model: d,
        heads: config.num_heads,
        kv_heads: config.kv_heads(),
        d_kv: config.d_kv,
        scale: 1.0,
        bias: false,
        rotary: rotary.then_some(Rotary {
            theta: config.rope_theta(),
        }),
    };
    let sublayer = |inner: Inner, name: &'static str, attention: Option<Attention>| {
        let feed_forward = (inner == Inner::FeedForward).then(|| {
            FeedForward::new(
                config.feed_forward(),
                d,
                config.d_ff,
                false,
                FEED_FORWARD_NAMES,
                device,
            )
        });
        Sublayer::new(
            inner,
            attention,
            feed_forward,
            norm(),
            Residual::new(norm_type.residual, device),
            sublayer_names(name),
        )
    };
    let blocks = (0..distinct)
        .map(|i| {
            let relative = (i == 0 && positions == PositionKind::Relative).then(|| {
                let buckets = Buckets {
                    num_buckets: config.relative_attention_num_buckets,
                    max_distance: config.relative_attention_max_distance,
                    bidirectional: !decoder,
                };
                RelativeBias::new(buckets, config.num_heads, device)
            });
            let rotary = positions == PositionKind::Rotary;
            let self_attention =
                Attention::new(attention_shape(rotary), relative, ATTENTION_NAMES, device);
            let mut layers = vec![sublayer(
                Inner::SelfAttention,
                "SelfAttention.",
                Some(self_attention),
            )];
            if decoder {
                let cross = Attention::new(attention_shape(false), None, ATTENTION_NAMES, device);
                layers.push(sublayer(
                    Inner::CrossAttention,
                    "EncDecAttention.",
                    Some(cross),
                ));
            }
            layers.push(sublayer(Inner::FeedForward, "DenseReluDense.", None));
            Block { layers }
        })
        .collect();
    Ok(Stack::new(
        blocks,
        depth,
        norm(),
        Positions::new(positions, config.max_positions(), d, device),
        decoder,
    ))
}

/// Inputs of one batch, padded: ids `[batch, len]` and 1/0 attention mask.
pub(crate) struct Padded {
    pub ids: Tensor<2, Int>,
    /// Additive mask `[batch, 1, 1, len]`: 0 for tokens, [`MASKED`] for padding.
    pub additive_mask: Tensor<4>,
}

/// The encoder output for a batch and the additive padding mask that cross-attention
/// must apply over it.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// `[batch, input_len, d_model]`, final layer norm applied.
    pub hidden: Tensor<3>,
    /// `[batch, 1, 1, input_len]`.
    pub additive_mask: Tensor<4>,
}

/// Incremental decoding state: self-attention keys/values of the positions decoded so
/// far and cross-attention keys/values computed once from the encoder output.
#[derive(Clone, Debug)]
pub struct DecoderCache {
    self_kv: Vec<Option<KeyValue>>,
    cross_kv: Vec<KeyValue>,
    cross_mask: Tensor<4>,
    /// Number of positions already decoded.
    position: usize,
}

impl DecoderCache {
    /// Keep/duplicate batch rows (beam search reordering).
    pub fn select_rows(&mut self, rows: &[usize]) {
        let device = self.cross_mask.device();
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = kv.select_rows(&index);
        }
        for kv in &mut self.cross_kv {
            *kv = kv.select_rows(&index);
        }
        self.cross_mask = self.cross_mask.clone().select(0, index);
    }
}

/// T5ForConditionalGeneration.
#[derive(Module, Debug)]
pub struct T5 {
    pub shared: Embedding,
    pub encoder: Stack,
    pub decoder: Stack,
    /// `None` when tied to `shared`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub(crate) config: T5Config,
    #[module(skip)]
    pub(crate) training: bool,
}

param_list!(root T5 {
    child "shared." => shared,
    child "encoder." => encoder,
    child "decoder." => decoder,
    optional_child "lm_head." => lm_head,
});

impl T5 {
    /// The architecture with all-zero weights (ones for norms): the skeleton that
    /// [`crate::checkpoint`] fills from a checkpoint and [`crate::checkpoint::init`] from
    /// random draws.
    pub fn skeleton(config: &T5Config, untied_lm_head: bool, device: &Device) -> Result<Self> {
        config.validate()?;
        let (d, vocab, width) = (config.d_model, config.vocab_size, config.embedding_width());
        ensure!(
            untied_lm_head || width == d,
            "a factorised embedding (embedding_dim {width} != d_model {d}) cannot be tied to the output head"
        );
        Ok(Self {
            shared: Embedding::new(vocab, width, d, device),
            encoder: stack(config, false, device)?,
            decoder: stack(config, true, device)?,
            lm_head: untied_lm_head.then(|| Linear::new(d, vocab, false, device)),
            config: config.clone(),
            training: false,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.shared.table.val().device()
    }

    /// The float dtype the parameters (and so every computation) use.
    pub fn dtype(&self) -> DType {
        self.shared.table.val().dtype()
    }

    pub(crate) fn dropout(&self) -> Dropout {
        Dropout {
            rate: if self.training {
                self.config.dropout_rate
            } else {
                0.0
            },
        }
    }

    /// Pad sequences to the longest with `pad_token_id` and build the padding mask.
    pub(crate) fn pad(&self, sequences: &[Vec<u32>], what: &str) -> Result<Padded> {
        ensure!(!sequences.is_empty(), "empty batch");
        for seq in sequences {
            self.config.check_ids(seq, what)?;
        }
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let batch = sequences.len();
        let mut ids = Vec::with_capacity(batch * len);
        let mut mask = Vec::with_capacity(batch * len);
        for seq in sequences {
            for t in 0..len {
                ids.push(seq.get(t).copied().unwrap_or(self.config.pad_token_id) as i64);
                mask.push(if t < seq.len() { 0.0f32 } else { MASKED });
            }
        }
        let device = self.device();
        Ok(Padded {
            ids: Tensor::from_data(TensorData::new(ids, [batch, len]), &device),
            additive_mask: Tensor::from_data(
                TensorData::new(mask, [batch, 1, 1, len]),
                (&device, self.dtype()),
            ),
        })
    }

    /// Run the encoder over a batch of unpadded input id sequences.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<Encoded> {
        let padded = self.pad(inputs, "input")?;
        let len = padded.ids.dims()[1];
        self.encoder.positions.check_length(len)?;
        let mut self_bias = padded.additive_mask.clone();
        if let Some(relative) = self.encoder.relative_bias(0, len, len) {
            self_bias = self_bias + relative;
        }
        let ctx = Context {
            first: 0,
            self_bias,
            cross: None,
            dropout: self.dropout(),
        };
        let mut cache = vec![None; self.encoder.depth()];
        let hidden = self
            .encoder
            .forward(self.shared.forward(padded.ids), &mut cache, &ctx);
        Ok(Encoded {
            hidden,
            additive_mask: padded.additive_mask,
        })
    }

    /// A fresh decoding state over `encoded`: cross-attention keys/values are computed
    /// here, once.
    pub fn start_decoding(&self, encoded: &Encoded) -> DecoderCache {
        DecoderCache {
            self_kv: vec![None; self.decoder.depth()],
            cross_kv: self.decoder.cross_key_values(&encoded.hidden),
            cross_mask: encoded.additive_mask.clone(),
            position: 0,
        }
    }

    /// Decode `decoder_ids` `[batch, len]` continuing from `cache` (teacher forcing when
    /// the cache is fresh and all positions are given; one step at a time when decoding).
    /// Returns the logits `[batch, len, vocab]`.
    pub fn decode(
        &self,
        cache: &mut DecoderCache,
        decoder_ids: Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        let len = decoder_ids.dims()[1];
        let first = cache.position;
        self.decoder.positions.check_length(first + len)?;
        let device = self.device();
        let mut self_bias = causal_mask(first, len, first + len, 0, &device, self.dtype());
        if let Some(relative) = self.decoder.relative_bias(first, len, first + len) {
            self_bias = self_bias + relative;
        }
        let ctx = Context {
            first,
            self_bias,
            cross: Some((&cache.cross_kv, cache.cross_mask.clone())),
            dropout: self.dropout(),
        };
        let mut hidden =
            self.decoder
                .forward(self.shared.forward(decoder_ids), &mut cache.self_kv, &ctx);
        cache.position += len;
        if self.config.scales_decoder_output() {
            hidden = hidden * (self.config.d_model as f64).powf(-0.5);
        }
        Ok(match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.shared.tied_head(hidden),
        })
    }

    /// Teacher-forced logits `[batch, max_target_len, vocab]`: the decoder input is each
    /// target shifted right with `decoder_start_token_id`.
    pub fn teacher_forced_logits(
        &self,
        inputs: &[Vec<u32>],
        targets: &[Vec<u32>],
    ) -> Result<Tensor<3>> {
        ensure!(
            inputs.len() == targets.len(),
            "{} inputs but {} targets",
            inputs.len(),
            targets.len()
        );
        for target in targets {
            self.config.check_ids(target, "target")?;
        }
        let encoded = self.encode(inputs)?;
        let shifted: Vec<Vec<u32>> = targets
            .iter()
            .map(|t| self.config.decoder_input(t))
            .collect();
        let decoder_ids = self.pad(&shifted, "target")?.ids;
        let mut cache = self.start_decoding(&encoded);
        self.decode(&mut cache, decoder_ids)
    }
}
