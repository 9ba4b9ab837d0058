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
//! decode (or, for a single-stack LM, run the one stack over input and target), the
//! output head with its `d_model^-½` scale, and the log-softmax objective.
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
    /// `None` for a single-stack LM.
    encoder: Option<CpuStack>,
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
            encoder: model.encoder.as_ref().map(|e| e.bind(&binder)),
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
    /// The stack's row that predicts the first target token (a single-stack LM's last
    /// input position; 0 for a decoder).
    first_row: usize,
    /// The (scaled) final hidden states of the target positions, the input of the
    /// output projection.
    head_input: Vec<f32>,
    log_softmax: Vec<f32>,
}

impl T5Backprop {
    /// Teacher-forced decoder pass over `target`: shifted right behind the start token
    /// and cross-attending to `cross`, or (a single-stack LM, `cross` `None`) behind
    /// `input` in one sequence.
    fn decode(
        &self,
        input: &[u32],
        target: &[u32],
        cross: Option<&[KeyValues]>,
    ) -> Result<DecoderPass> {
        let (ids, first_row, mask) = match cross {
            Some(_) => (self.config.decoder_input(target), 0, None),
            None => (
                self.config.lm_sequence(input, target),
                input.len() - 1,
                Some(self.config.lm_mask(input.len())?),
            ),
        };
        self.decoder.check_length(ids.len())?;
        let rows = ids.len();
        let (embedded, x) = self.shared.forward(&ids);
        let stack = match mask {
            Some(mask) => self.decoder.forward_masked(x, rows, None, mask),
            None => self.decoder.forward(x, rows, cross),
        };
        let d = self.config.d_model;
        let m = target.len();
        let scale = self.output_scale();
        let head_input: Vec<f32> = stack.output[first_row * d..(first_row + m) * d]
            .iter()
            .map(|v| v * scale)
            .collect();
        let vocab = self.config.vocab_size;
        let mut log_softmax = self.head.forward(&head_input, m);
        log_softmax.par_chunks_mut(vocab).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            row.iter_mut().for_each(|v| *v -= log_sum);
        });
        Ok(DecoderPass {
            embedded,
            stack,
            first_row,
            head_input,
            log_softmax,
        })
    }

    /// Backward through one decoder pass for the objective `Σ w · log p_t(c)` over
    /// `picks`; cross-attention key/value gradients are added into `dcross`.
    fn decode_backward(
        &self,
        pass: &DecoderPass,
        picks: &[(usize, usize, f32)],
        cross: Option<(&[KeyValues], &mut [KeyValues])>,
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
        // The stack's output gradient: the head's rows, zero at the other positions.
        let mut doutput = vec![0.0; pass.stack.output.len()];
        let dx = &mut doutput[pass.first_row * d..(pass.first_row + m) * d];
        self.head
            .backward(&pass.head_input, &dlogits, m, grad, dx, false);
        let scale = self.output_scale();
        dx.iter_mut().for_each(|v| *v *= scale);
        let (cross, dcross) = match cross {
            Some((cross, dcross)) => (Some(cross), Some(dcross)),
            None => (None, None),
        };
        let dembedded = self
            .decoder
            .backward(&pass.stack, &doutput, dcross, cross, grad);
        self.shared.backward(&pass.embedded, &dembedded, grad);
        Ok(())
    }
}

/// The encoder's pass over one input and the cross-attention keys/values it gives every
/// decoder layer.
struct EncoderPass {
    embedded: EmbeddingState,
    stack: StackState,
    cross: Vec<KeyValues>,
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
        for target in targets {
            self.config.check_ids(target, "target")?;
        }
        let n = input.len();
        let encoded = match &self.encoder {
            Some(encoder) => {
                encoder.check_length(n)?;
                let (embedded, x) = self.shared.forward(input);
                let stack = encoder.forward(x, n, None);
                let cross = self.decoder.cross_key_values(&stack.output, n);
                Some(EncoderPass {
                    embedded,
                    stack,
                    cross,
                })
            }
            None => None,
        };
        let cross = encoded.as_ref().map(|e| e.cross.as_slice());
        let passes: Vec<DecoderPass> = targets
            .iter()
            .map(|target| self.decode(input, target, cross))
            .collect::<Result<_>>()?;

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
            let mut dcross = cross.map(CpuStack::zero_cross);
            for (pass, picks) in passes.iter().zip(picks) {
                let cross = cross.zip(dcross.as_deref_mut());
                self.decode_backward(pass, picks, cross, &mut grad)?;
            }
            if let (Some(encoder), Some(e), Some(dcross)) = (&self.encoder, &encoded, dcross) {
                // The encoder output feeds every decoder layer's cross-attention
                // keys/values.
                let dencoded = self
                    .decoder
                    .cross_backward(&e.stack.output, n, dcross, &mut grad);
                let dx = encoder.backward(&e.stack, &dencoded, None, None, &mut grad);
                self.shared.backward(&e.embedded, &dx, &mut grad);
            }
            each(index, grad.values)?;
        }
        Ok(())
    }
}
