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

use anyhow::{ensure, Context as _, Result};
use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use fisherkit_model::generate::{step_ids, IncrementalDecoder};
use fisherkit_model::{Model, SpecialTokens};
use fisherkit_nn::attention::{AttentionShape, Mask};
use fisherkit_nn::lm::{lm_target_hidden, CrossMemory, DecodeCache, OutputHead};
use fisherkit_nn::position::{Buckets, Rotary};
use fisherkit_nn::stack::Context;
use fisherkit_nn::{
    param_list, Attention, AttentionNames, Block, BlockNames, Dropout, Embedding, FeedForward,
    FeedForwardNames, Inner, Linear, MixtureOfExperts, Norm, PositionKind, Positions, RelativeBias,
    Residual, Stack, StackNames, Sublayer, SublayerNames,
};

use crate::config::{Architecture, T5Config};

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
const BLOCK_NAMES: BlockNames = BlockNames {
    sublayers: Some("layer."),
};
const STACK_NAMES: StackNames = StackNames {
    blocks: "block.",
    final_norm: "final_layer_norm.",
};
const fn sublayer_names(inner: &'static str) -> SublayerNames {
    SublayerNames {
        inner,
        norm: "layer_norm.",
    }
}

/// Which stack [`stack`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Encoder,
    /// The decoder of an encoder–decoder: causal, cross-attending to the encoder.
    Decoder,
    /// The one stack of a decoder-only or prefix LM (named and sized as a decoder).
    SingleStack(Architecture),
}

/// The blocks of one stack (encoder: self-attention and feed-forward; decoder: self-,
/// cross-attention and feed-forward; a single-stack LM: self-attention and
/// feed-forward, causal), as the config's switches shape them.
fn stack(config: &T5Config, role: Role, device: &Device) -> Result<Stack> {
    let norm_type = config.norm_type()?;
    let positions = config.position_kind()?;
    let share = config.share_layers()?;
    let (depth, shared) = match role {
        Role::Encoder => (config.num_layers, share.encoder),
        Role::Decoder | Role::SingleStack(_) => (config.decoder_layers(), share.decoder),
    };
    let causal = role != Role::Encoder;
    let cross_attention = role == Role::Decoder;
    // Relative positions tell left from right where a query sees later keys: in the
    // encoder, and over a prefix LM's prefix.
    let bidirectional = matches!(
        role,
        Role::Encoder | Role::SingleStack(Architecture::PrefixLm)
    );
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
                    bidirectional,
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
            if cross_attention {
                let cross = Attention::new(attention_shape(false), None, ATTENTION_NAMES, device);
                layers.push(sublayer(
                    Inner::CrossAttention,
                    "EncDecAttention.",
                    Some(cross),
                ));
            }
            // HF SwitchTransformers names a sparse feed-forward `mlp.`.
            layers.push(match config.routing() {
                Some(routing) if config.is_sparse_layer(role == Role::Encoder, i) => {
                    let experts = MixtureOfExperts::new(
                        routing,
                        config.feed_forward(),
                        d,
                        config.d_ff,
                        FEED_FORWARD_NAMES,
                        device,
                    );
                    let residual = Residual::new(norm_type.residual, device);
                    Sublayer::experts(experts, norm(), residual, sublayer_names("mlp."))
                }
                _ => sublayer(Inner::FeedForward, "DenseReluDense.", None),
            });
            Block::new(layers, BLOCK_NAMES)
        })
        .collect();
    Ok(Stack::new(
        blocks,
        depth,
        norm(),
        Positions::new(positions, config.max_positions(), d, device),
        causal,
        STACK_NAMES,
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

/// T5ForConditionalGeneration, or (config `architecture`) a decoder-only or prefix LM
/// built from the same parts: one stack named `decoder.` without cross-attention.
#[derive(Module, Debug)]
pub struct T5 {
    pub shared: Embedding,
    /// `None` for a single-stack LM.
    pub encoder: Option<Stack>,
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
    optional_child "encoder." => encoder,
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
        let architecture = config.architecture()?;
        let (encoder, decoder) = match architecture {
            Architecture::EncoderDecoder => (
                Some(stack(config, Role::Encoder, device)?),
                stack(config, Role::Decoder, device)?,
            ),
            single => (None, stack(config, Role::SingleStack(single), device)?),
        };
        Ok(Self {
            shared: Embedding::new(vocab, width, d, device),
            encoder,
            decoder,
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

    /// The encoder; an error for a single-stack LM.
    fn encoder(&self) -> Result<&Stack> {
        self.encoder.as_ref().with_context(|| {
            format!(
                "a {} model has no encoder",
                self.config.architecture.as_deref().unwrap_or_default()
            )
        })
    }

    /// Run the encoder over a batch of unpadded input id sequences.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<Encoded> {
        let encoder = self.encoder()?;
        let padded = self.pad(inputs, "input")?;
        let len = padded.ids.dims()[1];
        encoder.positions.check_length(len)?;
        let mut self_bias = padded.additive_mask.clone();
        if let Some(relative) = encoder.relative_bias(0, len, len) {
            self_bias = self_bias + relative;
        }
        let ctx = Context {
            first: 0,
            self_bias,
            cross: None,
            dropout: self.dropout(),
        };
        let mut cache = vec![None; encoder.depth()];
        let hidden = encoder.forward(self.shared.forward(padded.ids), &mut cache, &ctx);
        Ok(Encoded {
            hidden,
            additive_mask: padded.additive_mask,
        })
    }

    /// A fresh decoding state over `encoded`: cross-attention keys/values are computed
    /// here, once.
    pub fn start_decoding(&self, encoded: &Encoded) -> DecodeCache {
        let memory = CrossMemory {
            key_values: self.decoder.cross_key_values(&encoded.hidden),
            mask: encoded.additive_mask.clone(),
        };
        DecodeCache::new(&self.decoder, Some(memory), 0, &self.device())
    }

    /// The output head (with T5's `d_model^-½` before a tied head).
    pub(crate) fn output_head(&self) -> OutputHead<'_> {
        OutputHead {
            embedding: &self.shared,
            lm_head: self.lm_head.as_ref(),
            scale: if self.config.scales_decoder_output() {
                (self.config.d_model as f64).powf(-0.5)
            } else {
                1.0
            },
        }
    }

    /// Decode `decoder_ids` `[batch, len]` continuing from `cache` (teacher forcing when
    /// the cache is fresh and all positions are given; one step at a time when decoding).
    /// Returns the logits `[batch, len, vocab]`.
    pub fn decode(
        &self,
        cache: &mut DecodeCache,
        decoder_ids: Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        let hidden =
            self.decoder
                .decode(self.shared.forward(decoder_ids), cache, self.dropout())?;
        Ok(self.output_head().forward(hidden))
    }

    /// Final hidden states `[batch, len, d_model]` of a single-stack LM over padded
    /// `sequences`, each seeing as its [`Mask`] says (every position, the padding's too:
    /// what the mask tests read).
    pub fn sequence_hidden(&self, sequences: &[Vec<u32>], masks: &[Mask]) -> Result<Tensor<3>> {
        ensure!(
            self.encoder.is_none(),
            "sequence_hidden is for single-stack LMs"
        );
        let padded = self.pad(sequences, "sequence")?;
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        self.decoder.sequences(
            self.shared.forward(padded.ids),
            &lengths,
            masks,
            self.dropout(),
        )
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
        if self.encoder.is_none() {
            let masks = inputs
                .iter()
                .map(|input| {
                    self.config.check_ids(input, "input")?;
                    self.config.lm_mask(input.len())
                })
                .collect::<Result<Vec<_>>>()?;
            let hidden = lm_target_hidden(
                &self.shared,
                &self.decoder,
                inputs,
                targets,
                &masks,
                self.config.pad_token_id,
                self.dropout(),
            )?;
            return Ok(self.output_head().forward(hidden));
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

impl IncrementalDecoder for T5 {
    type Cache = DecodeCache;

    /// An encoder–decoder encodes the inputs and feeds `decoder_start_token_id`; a
    /// single-stack LM reads the inputs (all of one length) as the prompt, which a prefix
    /// LM sees fully.
    fn begin(&self, inputs: &[Vec<u32>]) -> Result<(DecodeCache, Tensor<2>)> {
        if self.encoder.is_some() {
            let encoded = self.encode(inputs)?;
            let mut cache = self.start_decoding(&encoded);
            let start = vec![self.config.decoder_start_token_id; inputs.len()];
            let logits = self.step(&mut cache, &start)?;
            return Ok((cache, logits));
        }
        let prompt = inputs.first().map_or(0, Vec::len);
        let prefix = match self.config.lm_mask(prompt)? {
            Mask::Prefix(prefix) => prefix,
            _ => 0,
        };
        let padded = self.pad(inputs, "input")?;
        let mut cache = DecodeCache::new(&self.decoder, None, prefix, &self.device());
        let logits = self.output_head().after_prompt(
            &self.decoder,
            &mut cache,
            padded.ids,
            self.dropout(),
        )?;
        Ok((cache, logits))
    }

    fn step(&self, cache: &mut DecodeCache, tokens: &[u32]) -> Result<Tensor<2>> {
        let ids = step_ids(tokens, &self.device());
        self.output_head()
            .after_prompt(&self.decoder, cache, ids, self.dropout())
    }

    fn select_rows(&self, cache: &mut DecodeCache, rows: &[usize]) {
        cache.select_rows(rows);
    }

    fn special_tokens(&self) -> SpecialTokens {
        Model::special_tokens(self)
    }

    fn one_length_batches(&self) -> bool {
        self.encoder.is_none()
    }
}
