//! Token decoders built from the parts: an [`Embedding`], a causal [`Stack`] and an output
//! head. Written once for every architecture that decodes — the decoder of an
//! encoder–decoder, and the single-stack language models (decoder-only, prefix LM,
//! Llama-family), where the input and the target form one sequence:
//!
//! - burn: incremental decoding with a key/value cache ([`DecodeCache`],
//!   [`Stack::decode`]), teacher-forced single-stack sequences ([`lm_target_hidden`]),
//!   the output head ([`OutputHead`]);
//! - CPU: [`CpuDecoder`], one sequence's pass and its backward pass for per-example
//!   gradients, and the single-stack [`ExampleBackprop`](fisherkit_model::ExampleBackprop)
//!   loop ([`CpuDecoder::lm_gradients`]).

use anyhow::{ensure, Context as _, Result};
use fisherkit_model::burn::tensor::{Device, Int, Tensor, TensorData};
use fisherkit_model::{ChooseObjectives, EachGradient, WeightedClasses};
use rayon::prelude::*;

use crate::attention::{causal_mask, lm_mask, KeyValue, KeyValues, Mask};
use crate::cpu::{Binder, Gradient};
use crate::embedding::{CpuEmbedding, EmbeddingState};
use crate::linear::CpuLinear;
use crate::stack::{Context, CpuStack, StackState};
use crate::{Dropout, Embedding, Linear, Stack};

/// A single-stack LM's teacher-forced sequence: the input, then the target without its
/// last token (position `input.len() − 1 + t` predicts `target[t]`).
pub fn lm_sequence(input: &[u32], target: &[u32]) -> Vec<u32> {
    let mut sequence = input.to_vec();
    sequence.extend_from_slice(&target[..target.len().saturating_sub(1)]);
    sequence
}

/// Cross-attention keys/values of every decoder layer, computed once from the encoder
/// output, and the encoder's padding mask `[batch, 1, 1, input_len]`.
#[derive(Clone, Debug)]
pub struct CrossMemory {
    pub key_values: Vec<KeyValue>,
    pub mask: Tensor<4>,
}

/// Incremental decoding state of a causal stack: self-attention keys/values of the
/// positions decoded so far and (encoder–decoder) the cross-attention memory.
#[derive(Clone, Debug)]
pub struct DecodeCache {
    self_kv: Vec<Option<KeyValue>>,
    cross: Option<CrossMemory>,
    /// Number of positions already decoded.
    position: usize,
    /// Positions every query sees (a prefix LM's prompt); 0: causal.
    prefix: usize,
    device: Device,
}

impl DecodeCache {
    pub fn new(stack: &Stack, cross: Option<CrossMemory>, prefix: usize, device: &Device) -> Self {
        Self {
            self_kv: vec![None; stack.depth()],
            cross,
            position: 0,
            prefix,
            device: device.clone(),
        }
    }

    /// Keep/duplicate batch rows (beam search reordering).
    pub fn select_rows(&mut self, rows: &[usize]) {
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &self.device);
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = kv.select_rows(&index);
        }
        if let Some(cross) = &mut self.cross {
            for kv in &mut cross.key_values {
                *kv = kv.select_rows(&index);
            }
            cross.mask = cross.mask.clone().select(0, index);
        }
    }

    /// Number of positions already decoded.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl Stack {
    /// The final hidden states `[batch, len, d]` of embedded tokens at positions
    /// `cache.position()..`, continuing from `cache` (causal; fully visible over the
    /// cache's prefix; cross-attending to its memory).
    pub fn decode(
        &self,
        embedded: Tensor<3>,
        cache: &mut DecodeCache,
        dropout: Dropout,
    ) -> Result<Tensor<3>> {
        let [_, len, _] = embedded.dims();
        let first = cache.position;
        self.positions.check_length(first + len)?;
        let dtype = embedded.dtype();
        let mut self_bias =
            causal_mask(first, len, first + len, cache.prefix, &cache.device, dtype);
        if let Some(relative) = self.relative_bias(first, len, first + len) {
            self_bias = self_bias + relative;
        }
        let ctx = Context {
            first,
            self_bias,
            cross: cache
                .cross
                .as_ref()
                .map(|c| (c.key_values.as_slice(), c.mask.clone())),
            dropout,
        };
        let hidden = self.forward(embedded, &mut cache.self_kv, &ctx);
        cache.position += len;
        Ok(hidden)
    }

    /// Final hidden states `[batch, len, d]` of a padded batch of embedded sequences:
    /// sequence `b` has `lengths[b]` tokens and sees as `masks[b]` says.
    pub fn sequences(
        &self,
        embedded: Tensor<3>,
        lengths: &[usize],
        masks: &[Mask],
        dropout: Dropout,
    ) -> Result<Tensor<3>> {
        let [_, len, _] = embedded.dims();
        self.positions.check_length(len)?;
        let device = embedded.device();
        let mut self_bias = lm_mask(lengths, masks, len, &device, embedded.dtype());
        if let Some(relative) = self.relative_bias(0, len, len) {
            self_bias = self_bias + relative;
        }
        let ctx = Context {
            first: 0,
            self_bias,
            cross: None,
            dropout,
        };
        let mut cache = vec![None; self.depth()];
        Ok(self.forward(embedded, &mut cache, &ctx))
    }
}

/// Padded ids `[batch, len]` of `sequences` (shorter ones filled with `pad`).
pub fn padded_ids(sequences: &[Vec<u32>], pad: u32, device: &Device) -> Tensor<2, Int> {
    let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(sequences.len() * len);
    for sequence in sequences {
        ids.extend((0..len).map(|t| sequence.get(t).copied().unwrap_or(pad) as i64));
    }
    Tensor::from_data(TensorData::new(ids, [sequences.len(), len]), device)
}

/// Teacher-forced final hidden states `[batch, max_target_len, d]` at the positions that
/// predict each target token of a single-stack LM (input followed by target, see
/// [`lm_sequence`]); `masks[b]` says what sequence `b` sees. Padded target positions
/// hold a finite, meaningless row.
pub fn lm_target_hidden(
    embedding: &Embedding,
    stack: &Stack,
    inputs: &[Vec<u32>],
    targets: &[Vec<u32>],
    masks: &[Mask],
    pad: u32,
    dropout: Dropout,
) -> Result<Tensor<3>> {
    ensure!(!inputs.is_empty(), "empty batch");
    ensure!(
        inputs.len() == targets.len(),
        "{} inputs but {} targets",
        inputs.len(),
        targets.len()
    );
    let sequences: Vec<Vec<u32>> = inputs
        .iter()
        .zip(targets)
        .map(|(input, target)| lm_sequence(input, target))
        .collect();
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let device = embedding.table.val().device();
    let ids = padded_ids(&sequences, pad, &device);
    let hidden = stack.sequences(embedding.forward(ids), &lengths, masks, dropout)?;
    let [batch, len, d] = hidden.dims();
    let width = targets.iter().map(Vec::len).max().unwrap_or(0);
    // Row of each target position in the flattened [batch · len, d] states (padded
    // target positions read row 0).
    let mut rows = Vec::with_capacity(batch * width);
    for (b, (input, target)) in inputs.iter().zip(targets).enumerate() {
        for t in 0..width {
            let row = if t < target.len() {
                b * len + input.len() - 1 + t
            } else {
                0
            };
            rows.push(row as i64);
        }
    }
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [batch * width]), &device);
    Ok(hidden
        .reshape([batch * len, d])
        .select(0, rows)
        .reshape([batch, width, d]))
}

/// The output head over final hidden states: its own matrix or the tied embedding
/// table, after a scale (T5 multiplies by `d_model^-½` before a tied head).
#[derive(Clone, Copy)]
pub struct OutputHead<'a> {
    pub embedding: &'a Embedding,
    pub lm_head: Option<&'a Linear>,
    pub scale: f64,
}

impl OutputHead<'_> {
    pub fn forward(&self, mut hidden: Tensor<3>) -> Tensor<3> {
        if self.scale != 1.0 {
            hidden = hidden * self.scale;
        }
        match self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.embedding.tied_head(hidden),
        }
    }

    /// Feed `ids` `[batch, len]` (a prompt, or one new token per row) through `stack`
    /// continuing from `cache`; the logits `[batch, vocab]` of the token after them (the
    /// head on the last position only).
    pub fn after_prompt(
        &self,
        stack: &Stack,
        cache: &mut DecodeCache,
        ids: Tensor<2, Int>,
        dropout: Dropout,
    ) -> Result<Tensor<2>> {
        let [rows, len] = ids.dims();
        ensure!(len > 0, "an empty prompt");
        let hidden = stack.decode(self.embedding.forward(ids), cache, dropout)?;
        let logits = self.forward(hidden.narrow(1, len - 1, 1));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([rows, vocab]))
    }

    /// The CPU mirror: the embedding, the stack and this head, bound.
    pub fn bind_decoder(&self, stack: &Stack, binder: &Binder) -> CpuDecoder {
        let head = match self.lm_head {
            Some(head) => head.bind(binder, false),
            None => CpuLinear::from_weight(binder.weight(&self.embedding.table), false),
        };
        CpuDecoder {
            embedding: self.embedding.bind(binder),
            stack: stack.bind(binder),
            head,
            output_scale: self.scale as f32,
        }
    }
}

/// The CPU mirror of embedding → causal stack → (scale) → output head.
pub struct CpuDecoder {
    pub embedding: CpuEmbedding,
    pub stack: CpuStack,
    head: CpuLinear,
    output_scale: f32,
}

/// One sequence's pass through a [`CpuDecoder`].
pub struct TokenPass {
    embedded: EmbeddingState,
    stack: StackState,
    /// The row predicting the first target token (a single-stack LM's last input
    /// position; 0 for an encoder–decoder's decoder).
    first_row: usize,
    /// The (scaled) final hidden states of the target positions, the head's input.
    head_input: Vec<f32>,
    /// `[targets, vocab]`.
    pub log_softmax: Vec<f32>,
}

impl CpuDecoder {
    /// The pass over `ids`, the head on `targets` rows from `first_row`; self-attention
    /// sees as `mask` says (the stack's own mask when `None`), cross-attention reads
    /// `cross`.
    pub fn forward(
        &self,
        ids: &[u32],
        first_row: usize,
        targets: usize,
        mask: Option<Mask>,
        cross: Option<&[KeyValues]>,
    ) -> Result<TokenPass> {
        self.stack.check_length(ids.len())?;
        let rows = ids.len();
        let (embedded, x) = self.embedding.forward(ids);
        let stack = match mask {
            Some(mask) => self.stack.forward_masked(x, rows, cross, mask),
            None => self.stack.forward(x, rows, cross),
        };
        let d = self.head.d_in();
        let scale = self.output_scale;
        let head_input: Vec<f32> = stack.output[first_row * d..(first_row + targets) * d]
            .iter()
            .map(|v| v * scale)
            .collect();
        let vocab = self.head.d_out();
        let mut log_softmax = self.head.forward(&head_input, targets);
        log_softmax.par_chunks_mut(vocab).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            row.iter_mut().for_each(|v| *v -= log_sum);
        });
        Ok(TokenPass {
            embedded,
            stack,
            first_row,
            head_input,
            log_softmax,
        })
    }

    /// Backward through one pass for the objective `Σ w · log p_t(c)` over `picks`;
    /// cross-attention key/value gradients are added into the second of `cross`.
    pub fn backward(
        &self,
        pass: &TokenPass,
        picks: &[(usize, usize, f32)],
        cross: Option<(&[KeyValues], &mut [KeyValues])>,
        grad: &mut Gradient,
    ) -> Result<()> {
        let (d, vocab) = (self.head.d_in(), self.head.d_out());
        let m = pass.head_input.len() / d;
        // d objective / d logits = w − (Σ_c w_c) p, row by row.
        let mut dlogits = vec![0.0f32; m * vocab];
        let mut row_weight = vec![0.0f32; m];
        for &(t, c, w) in picks {
            ensure!(t < m && c < vocab, "class ({t}, {c}) out of range");
            dlogits[t * vocab + c] += w;
            row_weight[t] += w;
        }
        dlogits
            .par_chunks_mut(vocab)
            .zip(pass.log_softmax.par_chunks(vocab))
            .zip(&row_weight)
            .for_each(|((dl, lsm), &total)| {
                if total != 0.0 {
                    dl.iter_mut()
                        .zip(lsm)
                        .for_each(|(g, l)| *g -= total * l.exp());
                }
            });
        // The stack's output gradient: the head's rows, zero at the other positions.
        let mut doutput = vec![0.0; pass.stack.output.len()];
        let dx = &mut doutput[pass.first_row * d..(pass.first_row + m) * d];
        self.head
            .backward(&pass.head_input, &dlogits, m, grad, dx, false);
        dx.iter_mut().for_each(|v| *v *= self.output_scale);
        let (cross, dcross) = match cross {
            Some((cross, dcross)) => (Some(cross), Some(dcross)),
            None => (None, None),
        };
        let dembedded = self
            .stack
            .backward(&pass.stack, &doutput, dcross, cross, grad);
        self.embedding.backward(&pass.embedded, &dembedded, grad);
        Ok(())
    }

    /// Per-example gradients of a single-stack LM (the body of its
    /// [`ExampleBackprop::gradients`](fisherkit_model::ExampleBackprop::gradients)): one
    /// pass per target over the input followed by it, seeing as `mask` says for the
    /// input's length.
    pub fn lm_gradients(
        &self,
        binder: &Binder,
        input: &[u32],
        targets: &[Vec<u32>],
        mask: impl Fn(usize) -> Mask,
        objectives: &mut ChooseObjectives<'_>,
        each: &mut EachGradient<'_>,
    ) -> Result<()> {
        ensure!(
            !input.is_empty(),
            "empty input: at least one token is needed"
        );
        let passes: Vec<TokenPass> = targets
            .iter()
            .map(|target| {
                let ids = lm_sequence(input, target);
                self.forward(
                    &ids,
                    input.len() - 1,
                    target.len(),
                    Some(mask(input.len())),
                    None,
                )
            })
            .collect::<Result<_>>()?;
        objective_gradients(binder, &passes, objectives, each, |picks, grad| {
            for (pass, picks) in passes.iter().zip(picks) {
                self.backward(pass, picks, None, grad)?;
            }
            Ok(())
        })
    }
}

/// The objective loop of a per-example backward pass: hands the passes' log-softmax
/// rows to `objectives`, then, per objective in order, runs `backward` (given the
/// objective's terms per target) into a fresh gradient and hands it to `each`.
pub fn objective_gradients(
    binder: &Binder,
    passes: &[TokenPass],
    objectives: &mut ChooseObjectives<'_>,
    each: &mut EachGradient<'_>,
    mut backward: impl FnMut(&[WeightedClasses], &mut Gradient) -> Result<()>,
) -> Result<()> {
    let rows: Vec<&[f32]> = passes.iter().map(|p| p.log_softmax.as_slice()).collect();
    let objectives = objectives(&rows).context("choosing the classes to differentiate")?;
    for (index, picks) in objectives.iter().enumerate() {
        ensure!(
            picks.len() == passes.len(),
            "{} pick lists for {} targets",
            picks.len(),
            passes.len()
        );
        let mut grad = binder.gradient();
        backward(picks, &mut grad)?;
        each(index, grad.values)?;
    }
    Ok(())
}
