//! `LlamaForCausalLM` as in Hugging Face `modeling_llama.py`, assembled from the model
//! parts of `fisherkit_nn`: pre-norm blocks with RMSNorm, grouped-query attention with
//! rotary positions (`d_head^-½` scaling, optional biases), a gated feed-forward (SwiGLU
//! for `silu`), a final RMSNorm, a tied or untied head. Decoding, teacher forcing and the
//! per-example backward pass are the shared single-stack ones of `fisherkit_nn::lm`.

use anyhow::{ensure, Result};
use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::generate::{step_ids, IncrementalDecoder};
use fisherkit_model::{Model, SpecialTokens};
use fisherkit_nn::attention::{AttentionShape, Mask};
use fisherkit_nn::lm::{lm_target_hidden, padded_ids, DecodeCache, OutputHead};
use fisherkit_nn::position::Rotary;
use fisherkit_nn::{
    param_list, Attention, AttentionNames, Block, BlockNames, Dropout, Embedding, FeedForward,
    FeedForwardNames, Inner, Linear, Norm, NormKind, PositionKind, Positions, Residual,
    ResidualKind, Stack, StackNames, Sublayer, SublayerNames,
};

use crate::config::LlamaConfig;

/// HF Llama's parameter names.
const ATTENTION_NAMES: AttentionNames = AttentionNames {
    q: "q_proj.",
    k: "k_proj.",
    v: "v_proj.",
    o: "o_proj.",
    relative_bias: "",
};
const FEED_FORWARD_NAMES: FeedForwardNames = FeedForwardNames {
    dense: "",
    gate_act: "gate_proj.",
    gate_linear: "up_proj.",
    output: "down_proj.",
};
const BLOCK_NAMES: BlockNames = BlockNames { sublayers: None };
const STACK_NAMES: StackNames = StackNames {
    blocks: "layers.",
    final_norm: "norm.",
};

/// LlamaForCausalLM.
#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Embedding,
    /// The decoder layers and the final norm (`model.layers.N.`, `model.norm.`).
    pub body: Stack,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub(crate) config: LlamaConfig,
    #[module(skip)]
    pub(crate) training: bool,
}

param_list!(root Llama {
    child "model.embed_tokens." => embed_tokens,
    child "model." => body,
    optional_child "lm_head." => lm_head,
});

impl Llama {
    /// The architecture with all-zero weights (ones for norms), filled from a checkpoint
    /// or an initialiser afterwards.
    pub fn skeleton(config: &LlamaConfig, tied: bool, device: &Device) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let norm = || Norm::new(NormKind::Rms, d, config.rms_norm_eps, device);
        let shape = AttentionShape {
            d_model: d,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            d_kv: config.head_dim,
            scale: (config.head_dim as f64).powf(-0.5),
            bias: config.attention_bias,
            rotary: Some(Rotary {
                theta: config.rope_theta,
            }),
        };
        let feed_forward = config.feed_forward()?;
        let blocks = (0..config.num_hidden_layers)
            .map(|_| {
                let attention = Sublayer::new(
                    Inner::SelfAttention,
                    Some(Attention::new(shape, None, ATTENTION_NAMES, device)),
                    None,
                    Some(norm()),
                    Residual::new(ResidualKind::Plain, device),
                    SublayerNames {
                        inner: "self_attn.",
                        norm: "input_layernorm.",
                    },
                );
                let mlp = Sublayer::new(
                    Inner::FeedForward,
                    None,
                    Some(FeedForward::new(
                        feed_forward,
                        d,
                        config.intermediate_size,
                        config.mlp_bias,
                        FEED_FORWARD_NAMES,
                        device,
                    )),
                    Some(norm()),
                    Residual::new(ResidualKind::Plain, device),
                    SublayerNames {
                        inner: "mlp.",
                        norm: "post_attention_layernorm.",
                    },
                );
                Block::new(vec![attention, mlp], BLOCK_NAMES)
            })
            .collect();
        let body = Stack::new(
            blocks,
            config.num_hidden_layers,
            Some(norm()),
            Positions::new(
                PositionKind::Rotary,
                config.max_position_embeddings,
                d,
                device,
            ),
            true,
            STACK_NAMES,
        );
        Ok(Self {
            embed_tokens: Embedding::new(config.vocab_size, d, d, device),
            body,
            lm_head: (!tied).then(|| Linear::new(d, config.vocab_size, false, device)),
            config: config.clone(),
            training: false,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.table.val().device()
    }

    pub(crate) fn dropout(&self) -> Dropout {
        Dropout {
            rate: if self.training {
                self.config.attention_dropout
            } else {
                0.0
            },
        }
    }

    pub(crate) fn output_head(&self) -> OutputHead<'_> {
        OutputHead {
            embedding: &self.embed_tokens,
            lm_head: self.lm_head.as_ref(),
            scale: 1.0,
        }
    }

    /// Teacher-forced logits `[batch, max_target_len, vocab]`: each input followed by its
    /// target is one causal sequence; the position before each target token predicts it.
    pub fn teacher_forced_logits(
        &self,
        inputs: &[Vec<u32>],
        targets: &[Vec<u32>],
    ) -> Result<Tensor<3>> {
        for (input, target) in inputs.iter().zip(targets) {
            self.config.check_ids(input, "input")?;
            self.config.check_ids(target, "target")?;
            self.config.check_length(input.len() + target.len() - 1)?;
        }
        let masks = vec![Mask::Causal; inputs.len()];
        let hidden = lm_target_hidden(
            &self.embed_tokens,
            &self.body,
            inputs,
            targets,
            &masks,
            self.config.pad_token_id,
            self.dropout(),
        )?;
        Ok(self.output_head().forward(hidden))
    }
}

impl IncrementalDecoder for Llama {
    type Cache = DecodeCache;

    /// The prompts (all of one length: `generate` groups them) read at once.
    fn begin(&self, inputs: &[Vec<u32>]) -> Result<(DecodeCache, Tensor<2>)> {
        ensure!(!inputs.is_empty(), "no prompts to continue");
        for input in inputs {
            self.config.check_ids(input, "prompt")?;
        }
        let ids = padded_ids(inputs, self.config.pad_token_id, &self.device());
        let mut cache = DecodeCache::new(&self.body, None, 0, &self.device());
        let logits =
            self.output_head()
                .after_prompt(&self.body, &mut cache, ids, self.dropout())?;
        Ok((cache, logits))
    }

    fn step(&self, cache: &mut DecodeCache, tokens: &[u32]) -> Result<Tensor<2>> {
        self.config.check_length(cache.position() + 1)?;
        let ids = step_ids(tokens, &self.device());
        self.output_head()
            .after_prompt(&self.body, cache, ids, self.dropout())
    }

    fn select_rows(&self, cache: &mut DecodeCache, rows: &[usize]) {
        cache.select_rows(rows);
    }

    fn special_tokens(&self) -> SpecialTokens {
        Model::special_tokens(self)
    }

    fn one_length_batches(&self) -> bool {
        true
    }
}
