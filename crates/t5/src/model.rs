//! The T5 encoder–decoder (v1.0 and v1.1/Flan) as in Hugging Face `modeling_t5.py`,
//! on burn: pre-norm blocks with T5LayerNorm, unscaled attention with a relative
//! position bias shared per stack, ReLU or gated feed-forward, tied or untied output.
//!
//! Parameters are `[out, in]` matrices exactly as in the PyTorch checkpoint, so loading
//! and saving never transpose. Every parameter is listed once under its HF name by
//! [`T5::named_params`], in checkpoint order.

use anyhow::{ensure, Result};
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu, softmax};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use fisherkit_model::{burn, ParamMut, ParamRef};

use crate::config::{Activation, T5Config};

/// Added to attention scores where a key must not be attended to. exp() of it
/// underflows to exactly 0, as HF's `finfo.min` does.
pub(crate) const MASKED: f32 = -1e9;

/// Generates `params` / `params_mut`, which push `(hf_name, param)` in checkpoint order,
/// from one list so that the shared and mutable views can never disagree.
///
/// Entries: `param "name" => field`, `optional "name" => field` (an `Option<Param>`),
/// `child "prefix." => field` (a struct with its own list), `children "prefix." =>
/// field` (a `Vec` of such structs, numbered).
macro_rules! param_list {
    ($ty:ty { $($entry:tt)* }) => {
        impl $ty {
            pub(crate) fn params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, ParamRef<'a>)>) {
                param_list!(@walk self, prefix, out, params, ParamRef, [&], $($entry)*);
            }
            pub(crate) fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
                param_list!(@walk self, prefix, out, params_mut, ParamMut, [&mut], $($entry)*);
            }
        }
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], param $name:literal => $field:ident, $($rest:tt)*) => {
        $o.push((format!("{}{}", $p, $name), $K::from($($b)* $s.$field)));
        param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], optional $name:literal => $field:ident, $($rest:tt)*) => {
        if let Some(param) = $($b)* $s.$field {
            $o.push((format!("{}{}", $p, $name), $K::from(param)));
        }
        param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], child $name:literal => $field:ident, $($rest:tt)*) => {
        $s.$field.$f(&format!("{}{}", $p, $name), $o);
        param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], children $name:literal => $field:ident, $($rest:tt)*) => {
        for (i, child) in ($($b)* $s.$field).into_iter().enumerate() {
            child.$f(&format!("{}{}{}.", $p, $name, i), $o);
        }
        param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*],) => {};
}

/// Dropout that is active only when the model is in training mode (independent of
/// whether the device records gradients).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dropout {
    rate: f64,
}

impl Dropout {
    fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        if self.rate <= 0.0 {
            return x;
        }
        let keep = 1.0 - self.rate;
        let mask = x.random_like(Distribution::Bernoulli(keep));
        x * mask / keep
    }
}

fn zeros<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::zeros(shape, device))
}

/// `x @ w^T` for a PyTorch-layout `[out, in]` weight, over the last dimension.
fn linear(x: Tensor<3>, weight: &Param<Tensor<2>>) -> Tensor<3> {
    let [batch, len, d_in] = x.dims();
    let weight = weight.val();
    let d_out = weight.dims()[0];
    fisherkit_model::linear(x.reshape([batch * len, d_in]), weight).reshape([batch, len, d_out])
}

/// T5LayerNorm: `w * x / sqrt(mean(x^2) + eps)`, no mean subtraction, no bias.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

param_list!(LayerNorm { param "weight" => weight, });

impl LayerNorm {
    fn new(d_model: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d_model], device)),
            eps,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let variance = (x.clone() * x.clone()).mean_dim(2);
        let weight = self.weight.val().unsqueeze::<3>();
        x * (variance + self.eps).sqrt().recip() * weight
    }
}

/// Multi-head attention without the `1/sqrt(d_kv)` scaling. Block 0 of each stack owns
/// the relative position bias table `[num_buckets, num_heads]`.
#[derive(Module, Debug)]
pub struct Attention {
    pub q: Param<Tensor<2>>,
    pub k: Param<Tensor<2>>,
    pub v: Param<Tensor<2>>,
    pub o: Param<Tensor<2>>,
    pub relative_attention_bias: Option<Param<Tensor<2>>>,
    #[module(skip)]
    num_heads: usize,
}

param_list!(Attention {
    param "q.weight" => q,
    param "k.weight" => k,
    param "v.weight" => v,
    param "o.weight" => o,
    optional "relative_attention_bias.weight" => relative_attention_bias,
});

/// Keys and values split into heads: `[batch, heads, len, d_kv]` each.
#[derive(Clone, Debug)]
pub struct KeyValue {
    pub keys: Tensor<4>,
    pub values: Tensor<4>,
}

impl KeyValue {
    /// Append one decoding step's keys/values along the length dimension.
    fn append(&mut self, step: KeyValue) {
        self.keys = Tensor::cat(vec![self.keys.clone(), step.keys], 2);
        self.values = Tensor::cat(vec![self.values.clone(), step.values], 2);
    }

    /// Keep/duplicate rows (beam reordering).
    pub(crate) fn select_rows(&self, rows: &Tensor<1, Int>) -> KeyValue {
        KeyValue {
            keys: self.keys.clone().select(0, rows.clone()),
            values: self.values.clone().select(0, rows.clone()),
        }
    }
}

impl Attention {
    fn new(config: &T5Config, with_bias: bool, device: &Device) -> Self {
        let (d, inner) = (config.d_model, config.inner_dim());
        Self {
            q: zeros([inner, d], device),
            k: zeros([inner, d], device),
            v: zeros([inner, d], device),
            o: zeros([d, inner], device),
            relative_attention_bias: with_bias.then(|| {
                zeros(
                    [config.relative_attention_num_buckets, config.num_heads],
                    device,
                )
            }),
            num_heads: config.num_heads,
        }
    }

    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, len, inner] = x.dims();
        x.reshape([batch, len, self.num_heads, inner / self.num_heads])
            .swap_dims(1, 2)
    }

    /// Project `x` (the normed input or the encoder output) to keys and values.
    pub(crate) fn key_value(&self, x: Tensor<3>) -> KeyValue {
        KeyValue {
            keys: self.split_heads(linear(x.clone(), &self.k)),
            values: self.split_heads(linear(x, &self.v)),
        }
    }

    /// `softmax(q k^T + bias) v`, then the output projection. `bias` broadcasts to
    /// `[batch, heads, len_q, len_k]` and already contains the masks.
    fn attend(&self, x: Tensor<3>, kv: &KeyValue, bias: Tensor<4>, dropout: Dropout) -> Tensor<3> {
        let [batch, len, _] = x.dims();
        let q = self.split_heads(linear(x, &self.q));
        let scores = q.matmul(kv.keys.clone().swap_dims(2, 3)) + bias;
        let weights = dropout.apply(softmax(scores, 3));
        let context = weights.matmul(kv.values.clone()).swap_dims(1, 2);
        let inner = self.num_heads * kv.values.dims()[3];
        linear(context.reshape([batch, len, inner]), &self.o)
    }
}

/// `wo(act(wi x))` or, gated, `wo(act(wi_0 x) * wi_1 x)`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub wi: Option<Param<Tensor<2>>>,
    pub wi_0: Option<Param<Tensor<2>>>,
    pub wi_1: Option<Param<Tensor<2>>>,
    pub wo: Param<Tensor<2>>,
    #[module(skip)]
    activation: Activation,
}

param_list!(FeedForward {
    optional "wi.weight" => wi,
    optional "wi_0.weight" => wi_0,
    optional "wi_1.weight" => wi_1,
    param "wo.weight" => wo,
});

impl FeedForward {
    fn new(config: &T5Config, device: &Device) -> Self {
        let kind = config.feed_forward();
        let (d, ff) = (config.d_model, config.d_ff);
        Self {
            wi: (!kind.gated).then(|| zeros([ff, d], device)),
            wi_0: kind.gated.then(|| zeros([ff, d], device)),
            wi_1: kind.gated.then(|| zeros([ff, d], device)),
            wo: zeros([d, ff], device),
            activation: kind.activation,
        }
    }

    fn activate(&self, x: Tensor<3>) -> Tensor<3> {
        match self.activation {
            Activation::Relu => relu(x),
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
            Activation::Silu => silu(x),
        }
    }

    fn forward(&self, x: Tensor<3>, dropout: Dropout) -> Tensor<3> {
        let hidden = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.activate(linear(x, wi)),
            (None, Some(wi_0), Some(wi_1)) => {
                self.activate(linear(x.clone(), wi_0)) * linear(x, wi_1)
            }
            _ => unreachable!("FeedForward::new sets wi or both wi_0 and wi_1"),
        };
        linear(dropout.apply(hidden), &self.wo)
    }
}

#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub self_attention: Attention,
    pub self_attention_norm: LayerNorm,
    pub feed_forward: FeedForward,
    pub feed_forward_norm: LayerNorm,
}

param_list!(EncoderBlock {
    child "layer.0.SelfAttention." => self_attention,
    child "layer.0.layer_norm." => self_attention_norm,
    child "layer.1.DenseReluDense." => feed_forward,
    child "layer.1.layer_norm." => feed_forward_norm,
});

impl EncoderBlock {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>, dropout: Dropout) -> Tensor<3> {
        let normed = self.self_attention_norm.forward(x.clone());
        let kv = self.self_attention.key_value(normed.clone());
        let x = x + dropout.apply(self.self_attention.attend(normed, &kv, bias, dropout));
        let normed = self.feed_forward_norm.forward(x.clone());
        x.clone() + dropout.apply(self.feed_forward.forward(normed, dropout))
    }
}

#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub self_attention: Attention,
    pub self_attention_norm: LayerNorm,
    pub cross_attention: Attention,
    pub cross_attention_norm: LayerNorm,
    pub feed_forward: FeedForward,
    pub feed_forward_norm: LayerNorm,
}

param_list!(DecoderBlock {
    child "layer.0.SelfAttention." => self_attention,
    child "layer.0.layer_norm." => self_attention_norm,
    child "layer.1.EncDecAttention." => cross_attention,
    child "layer.1.layer_norm." => cross_attention_norm,
    child "layer.2.DenseReluDense." => feed_forward,
    child "layer.2.layer_norm." => feed_forward_norm,
});

impl DecoderBlock {
    /// One block over `x` (all positions, or one step). `self_kv` holds the keys/values of
    /// earlier positions when decoding incrementally and is extended with those of `x`.
    fn forward(
        &self,
        x: Tensor<3>,
        self_kv: &mut Option<KeyValue>,
        self_bias: Tensor<4>,
        cross_kv: &KeyValue,
        cross_bias: Tensor<4>,
        dropout: Dropout,
    ) -> Tensor<3> {
        let normed = self.self_attention_norm.forward(x.clone());
        let step_kv = self.self_attention.key_value(normed.clone());
        match self_kv {
            Some(cache) => cache.append(step_kv),
            None => *self_kv = Some(step_kv),
        }
        let kv = self_kv.as_ref().expect("set above");
        let x = x + dropout.apply(self.self_attention.attend(normed, kv, self_bias, dropout));
        let normed = self.cross_attention_norm.forward(x.clone());
        let x = x + dropout.apply(
            self.cross_attention
                .attend(normed, cross_kv, cross_bias, dropout),
        );
        let normed = self.feed_forward_norm.forward(x.clone());
        x.clone() + dropout.apply(self.feed_forward.forward(normed, dropout))
    }
}

/// HF `_relative_position_bucket`. `relative_position = key_pos - query_pos`.
/// The logarithmic part is computed in f32 like the reference, so boundary cases round
/// the same way.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (num_buckets, offset, n) = if bidirectional {
        let half = num_buckets / 2;
        let offset = if relative_position > 0 { half } else { 0 };
        (half, offset, relative_position.unsigned_abs() as usize)
    } else {
        (num_buckets, 0, (-relative_position).max(0) as usize)
    };
    let max_exact = num_buckets / 2;
    let bucket = if n < max_exact {
        n
    } else {
        let log_ratio = (n as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (num_buckets - max_exact) as f32;
        (max_exact + log_ratio as usize).min(num_buckets - 1)
    };
    offset + bucket
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
    pub shared: Param<Tensor<2>>,
    pub encoder: Vec<EncoderBlock>,
    pub encoder_final_norm: LayerNorm,
    pub decoder: Vec<DecoderBlock>,
    pub decoder_final_norm: LayerNorm,
    /// `None` when tied to `shared`.
    pub lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub(crate) config: T5Config,
    #[module(skip)]
    pub(crate) training: bool,
}

param_list!(T5 {
    param "shared.weight" => shared,
    children "encoder.block." => encoder,
    child "encoder.final_layer_norm." => encoder_final_norm,
    children "decoder.block." => decoder,
    child "decoder.final_layer_norm." => decoder_final_norm,
    optional "lm_head.weight" => lm_head,
});

impl T5 {
    /// The architecture with all-zero weights (ones for norms): the skeleton that
    /// [`crate::checkpoint`] fills from a checkpoint and [`crate::init`] from random draws.
    pub fn skeleton(config: &T5Config, untied_lm_head: bool, device: &Device) -> Result<Self> {
        config.validate()?;
        let eps = config.layer_norm_epsilon;
        let norm = || LayerNorm::new(config.d_model, eps, device);
        let feed_forward = || FeedForward::new(config, device);
        let encoder = (0..config.num_layers)
            .map(|i| EncoderBlock {
                self_attention: Attention::new(config, i == 0, device),
                self_attention_norm: norm(),
                feed_forward: feed_forward(),
                feed_forward_norm: norm(),
            })
            .collect();
        let decoder = (0..config.decoder_layers())
            .map(|i| DecoderBlock {
                self_attention: Attention::new(config, i == 0, device),
                self_attention_norm: norm(),
                cross_attention: Attention::new(config, false, device),
                cross_attention_norm: norm(),
                feed_forward: feed_forward(),
                feed_forward_norm: norm(),
            })
            .collect();
        Ok(Self {
            shared: zeros([config.vocab_size, config.d_model], device),
            encoder,
            encoder_final_norm: norm(),
            decoder,
            decoder_final_norm: norm(),
            lm_head: untied_lm_head.then(|| zeros([config.vocab_size, config.d_model], device)),
            config: config.clone(),
            training: false,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.shared.val().device()
    }

    /// The float dtype the parameters (and so every computation) use.
    pub fn dtype(&self) -> DType {
        self.shared.val().dtype()
    }

    fn dropout(&self) -> Dropout {
        Dropout {
            rate: if self.training {
                self.config.dropout_rate
            } else {
                0.0
            },
        }
    }

    /// Every parameter under its HF name, in checkpoint order.
    pub fn named_params(&self) -> Vec<(String, ParamRef<'_>)> {
        let mut out = Vec::new();
        self.params("", &mut out);
        out
    }

    pub fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        let mut out = Vec::new();
        self.params_mut("", &mut out);
        out
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

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = ids.dims();
        self.shared
            .val()
            .select(0, ids.reshape([batch * len]))
            .reshape([batch, len, self.config.d_model])
    }

    /// Position bias `[1, heads, queries, keys]` from a stack's table for queries at
    /// `first_query..first_query+queries` and keys at `0..keys`, plus (decoder) the causal
    /// mask.
    fn position_bias(
        &self,
        table: &Param<Tensor<2>>,
        first_query: usize,
        queries: usize,
        keys: usize,
        bidirectional: bool,
    ) -> Tensor<4> {
        let config = &self.config;
        let mut buckets = Vec::with_capacity(queries * keys);
        let mut causal = Vec::with_capacity(queries * keys);
        for q in first_query..first_query + queries {
            for k in 0..keys {
                let bucket = relative_position_bucket(
                    k as i64 - q as i64,
                    bidirectional,
                    config.relative_attention_num_buckets,
                    config.relative_attention_max_distance,
                );
                buckets.push(bucket as i64);
                causal.push(if !bidirectional && k > q {
                    MASKED
                } else {
                    0.0f32
                });
            }
        }
        let device = self.device();
        let index =
            Tensor::<1, Int>::from_data(TensorData::new(buckets, [queries * keys]), &device);
        let heads = config.num_heads;
        let bias = table
            .val()
            .select(0, index)
            .reshape([queries, keys, heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>();
        if bidirectional {
            bias
        } else {
            let causal = Tensor::<4>::from_data(
                TensorData::new(causal, [1, 1, queries, keys]),
                (&device, self.dtype()),
            );
            bias + causal
        }
    }

    fn encoder_table(&self) -> &Param<Tensor<2>> {
        self.encoder[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("encoder block 0 owns the position bias")
    }

    fn decoder_table(&self) -> &Param<Tensor<2>> {
        self.decoder[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("decoder block 0 owns the position bias")
    }

    /// Run the encoder over a batch of unpadded input id sequences.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<Encoded> {
        let padded = self.pad(inputs, "input")?;
        let dropout = self.dropout();
        let len = padded.ids.dims()[1];
        let bias = self.position_bias(self.encoder_table(), 0, len, len, true)
            + padded.additive_mask.clone();
        let mut x = dropout.apply(self.embed(padded.ids));
        for block in &self.encoder {
            x = block.forward(x, bias.clone(), dropout);
        }
        let hidden = dropout.apply(self.encoder_final_norm.forward(x));
        Ok(Encoded {
            hidden,
            additive_mask: padded.additive_mask,
        })
    }

    /// A fresh decoding state over `encoded`: cross-attention keys/values are computed
    /// here, once.
    pub fn start_decoding(&self, encoded: &Encoded) -> DecoderCache {
        DecoderCache {
            self_kv: vec![None; self.decoder.len()],
            cross_kv: self
                .decoder
                .iter()
                .map(|block| block.cross_attention.key_value(encoded.hidden.clone()))
                .collect(),
            cross_mask: encoded.additive_mask.clone(),
            position: 0,
        }
    }

    /// Decode `decoder_ids` `[batch, len]` continuing from `cache` (teacher forcing when
    /// the cache is fresh and all positions are given; one step at a time when decoding).
    /// Returns the logits `[batch, len, vocab]`.
    pub fn decode(&self, cache: &mut DecoderCache, decoder_ids: Tensor<2, Int>) -> Tensor<3> {
        let dropout = self.dropout();
        let len = decoder_ids.dims()[1];
        let first = cache.position;
        let self_bias = self.position_bias(self.decoder_table(), first, len, first + len, false);
        let mut x = dropout.apply(self.embed(decoder_ids));
        for (i, block) in self.decoder.iter().enumerate() {
            x = block.forward(
                x,
                &mut cache.self_kv[i],
                self_bias.clone(),
                &cache.cross_kv[i],
                cache.cross_mask.clone(),
                dropout,
            );
        }
        cache.position += len;
        let mut hidden = dropout.apply(self.decoder_final_norm.forward(x));
        if self.config.scales_decoder_output() {
            hidden = hidden * (self.config.d_model as f64).powf(-0.5);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.shared);
        linear(hidden, head)
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
        Ok(self.decode(&mut cache, decoder_ids))
    }
}
