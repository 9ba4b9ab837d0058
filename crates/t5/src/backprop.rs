//! Per-example gradients of T5 by the model parts' hand-written backward passes (CPU,
//! f32).
//!
//! Fishers square the gradient of ONE example at a time, so the autodiff graph would be
//! built, walked and freed once per example and class, and every parameter's gradient
//! then copied out of its tensor into the flat vector the Fisher code reads. Here each
//! part's CPU forward keeps exactly the activations its backward needs, and every weight
//! gradient is written straight into its slot of the flat vector (slots bound by
//! parameter identity from the model's one parameter list, see `fisherkit_nn::cpu`).
//! This file only wires the parts as [`crate::model`] does: embed, encode, cross-attend,
//! decode, the output head with its `d_model^-½` scale, and the log-softmax objective.
//! Tests compare every gradient with burn's autodiff of the same model.

use anyhow::{ensure, Context, Result};
use fisherkit_model::{ChooseObjectives, EachGradient, Example, ExampleBackprop};
use fisherkit_nn::attention::KeyValues;
use fisherkit_nn::cpu::{Binder, Gradient};
use fisherkit_nn::embedding::{CpuEmbedding, EmbeddingState};
use fisherkit_nn::linear::CpuLinear;
use fisherkit_nn::stack::{CpuStack, StackState};
use rayon::prelude::*;

use crate::config::T5Config;
use crate::model::T5;

/// The hand-written gradient of a T5 model whose parameters are f32 tensors on the CPU
/// backend.
pub struct T5Backprop {
    config: T5Config,
    shared: CpuEmbedding,
    encoder: CpuStack,
    decoder: CpuStack,
    head: CpuLinear,
    binder: Binder,
}

impl T5Backprop {
    /// `None` when the parameters are not f32 tensors of the CPU backend (GPU devices and
    /// reduced precision keep burn's autodiff) or the model is in training mode (this
    /// pass has no dropout).
    pub fn new(model: &T5) -> Option<Self> {
        if model.training {
            return None;
        }
        let binder = Binder::new(model)?;
        let head = match &model.lm_head {
            Some(head) => head.bind(&binder, false),
            None => CpuLinear::from_weight(binder.weight(&model.shared.table), false),
        };
        Some(Self {
            config: model.config().clone(),
            shared: model.shared.bind(&binder),
            encoder: model.encoder.bind(&binder),
            decoder: model.decoder.bind(&binder),
            head,
            binder,
        })
    }

    /// The `d_model^-½` applied to the decoder output before a tied head, else 1.
    fn output_scale(&self) -> f32 {
        if self.config.scales_decoder_output() {
            (self.config.d_model as f32).powf(-0.5)
        } else {
            1.0
        }
    }
}

/// One target sequence's decoder pass.
struct DecoderPass {
    embedded: EmbeddingState,
    stack: StackState,
    /// The (scaled) final hidden states, the input of the output projection.
    head_input: Vec<f32>,
    log_softmax: Vec<f32>,
}

impl T5Backprop {
    /// Teacher-forced decoder pass over `target` (shifted right behind the start token).
    fn decode(&self, target: &[u32], cross: &[KeyValues]) -> DecoderPass {
        let decoder_ids = self.config.decoder_input(target);
        let m = decoder_ids.len();
        let (embedded, x) = self.shared.forward(&decoder_ids);
        let stack = self.decoder.forward(x, m, Some(cross));
        let scale = self.output_scale();
        let head_input: Vec<f32> = stack.output.iter().map(|v| v * scale).collect();
        let vocab = self.config.vocab_size;
        let mut log_softmax = self.head.forward(&head_input, m);
        log_softmax.par_chunks_mut(vocab).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            row.iter_mut().for_each(|v| *v -= log_sum);
        });
        DecoderPass {
            embedded,
            stack,
            head_input,
            log_softmax,
        }
    }

    /// Backward through one decoder pass for the objective `Σ w · log p_t(c)` over
    /// `picks`; cross-attention key/value gradients are added into `dcross`.
    fn decode_backward(
        &self,
        pass: &DecoderPass,
        picks: &[(usize, usize, f32)],
        cross: &[KeyValues],
        dcross: &mut [KeyValues],
        grad: &mut Gradient,
    ) -> Result<()> {
        let (d, vocab) = (self.config.d_model, self.config.vocab_size);
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
        let mut dx = vec![0.0; m * d];
        self.head
            .backward(&pass.head_input, &dlogits, m, grad, &mut dx, false);
        let scale = self.output_scale();
        dx.iter_mut().for_each(|v| *v *= scale);
        let dembedded = self
            .decoder
            .backward(&pass.stack, &dx, Some(dcross), Some(cross), grad);
        self.shared.backward(&pass.embedded, &dembedded, grad);
        Ok(())
    }
}

impl ExampleBackprop for T5Backprop {
    fn gradients(
        &self,
        example: &Example,
        targets: &[Vec<u32>],
        objectives: &mut ChooseObjectives<'_>,
        each: &mut EachGradient<'_>,
    ) -> Result<()> {
        let input = &example.input_ids;
        ensure!(
            example.token_type_ids.iter().all(|&t| t == 0),
            "T5 has no token types"
        );
        self.config.check_ids(input, "input")?;
        self.encoder.check_length(input.len())?;
        for target in targets {
            self.config.check_ids(target, "target")?;
            // The decoder input is the target shifted right: the same length.
            self.decoder.check_length(target.len())?;
        }
        let n = input.len();
        let (embedded, x) = self.shared.forward(input);
        let encoder = self.encoder.forward(x, n, None);
        let encoded = &encoder.output;
        let cross = self.decoder.cross_key_values(encoded, n);
        let passes: Vec<DecoderPass> = targets
            .iter()
            .map(|target| self.decode(target, &cross))
            .collect();

        let rows: Vec<&[f32]> = passes.iter().map(|p| p.log_softmax.as_slice()).collect();
        let objectives = objectives(&rows).context("choosing the classes to differentiate")?;
        for (index, picks) in objectives.iter().enumerate() {
            ensure!(
                picks.len() == targets.len(),
                "{} pick lists for {} targets",
                picks.len(),
                targets.len()
            );
            let mut grad = self.binder.gradient();
            let mut dcross = CpuStack::zero_cross(&cross);
            for (pass, picks) in passes.iter().zip(picks) {
                self.decode_backward(pass, picks, &cross, &mut dcross, &mut grad)?;
            }
            // The encoder output feeds every decoder layer's cross-attention keys/values.
            let dencoded = self.decoder.cross_backward(encoded, n, dcross, &mut grad);
            let dx = self
                .encoder
                .backward(&encoder, &dencoded, None, None, &mut grad);
            self.shared.backward(&embedded, &dx, &mut grad);
            each(index, grad.values)?;
        }
        Ok(())
    }
}
