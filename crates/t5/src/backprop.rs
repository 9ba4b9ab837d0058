//! Per-example gradients of T5 by the model parts' hand-written backward passes (CPU,
//! f32).
//!
//! Fishers square the gradient of ONE example at a time, so the autodiff graph would be
//! built, walked and freed once per example and class, and every parameter's gradient
//! then copied out of its tensor into the flat vector the Fisher code reads. Here each
//! part's CPU forward keeps exactly the activations its backward needs, and every weight
//! gradient is written straight into its slot of the flat vector (slots bound by
//! parameter identity from the model's one parameter list, see `fisherkit_nn::cpu`).
//! This file only wires the parts as [`crate::model`] does: encode, then the shared
//! token decoder (`fisherkit_nn::lm`: embed, decode with cross-attention, the output head
//! with its `d_model^-½` scale, the log-softmax objective) — or, for a single-stack LM,
//! the token decoder alone over input and target. Tests compare every gradient with
//! burn's autodiff of the same model.

use anyhow::{ensure, Result};
use fisherkit_model::{ChooseObjectives, EachGradient, Example, ExampleBackprop};
use fisherkit_nn::cpu::Binder;
use fisherkit_nn::lm::{objective_gradients, CpuDecoder, TokenPass};
use fisherkit_nn::stack::CpuStack;

use crate::config::T5Config;
use crate::model::T5;

/// The hand-written gradient of a T5 model whose parameters are f32 tensors on the CPU
/// backend.
pub struct T5Backprop {
    config: T5Config,
    /// `None` for a single-stack LM.
    encoder: Option<CpuStack>,
    /// The embedding, the decoder stack and the output head.
    decoder: CpuDecoder,
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
        Some(Self {
            config: model.config().clone(),
            encoder: model.encoder.as_ref().map(|e| e.bind(&binder)),
            decoder: model.output_head().bind_decoder(&model.decoder, &binder),
            binder,
        })
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
        for target in targets {
            self.config.check_ids(target, "target")?;
        }
        let Some(encoder) = &self.encoder else {
            let config = &self.config;
            let mask = |len| config.lm_mask(len).expect("a single-stack architecture");
            return self
                .decoder
                .lm_gradients(&self.binder, input, targets, mask, objectives, each);
        };
        encoder.check_length(input.len())?;
        let n = input.len();
        let (embedded, x) = self.decoder.embedding.forward(input);
        let encoded = encoder.forward(x, n, None);
        let cross = self.decoder.stack.cross_key_values(&encoded.output, n);
        let passes: Vec<TokenPass> = targets
            .iter()
            .map(|target| {
                let ids = self.config.decoder_input(target);
                self.decoder
                    .forward(&ids, 0, target.len(), None, Some(&cross))
            })
            .collect::<Result<_>>()?;
        objective_gradients(&self.binder, &passes, objectives, each, |picks, grad| {
            let mut dcross = CpuStack::zero_cross(&cross);
            for (pass, picks) in passes.iter().zip(picks) {
                self.decoder
                    .backward(pass, picks, Some((&cross, &mut dcross)), grad)?;
            }
            // The encoder output feeds every decoder layer's cross-attention keys/values.
            let dencoded = self
                .decoder
                .stack
                .cross_backward(&encoded.output, n, dcross, grad);
            let dx = encoder.backward(&encoded, &dencoded, None, None, grad);
            self.decoder.embedding.backward(&embedded, &dx, grad);
            Ok(())
        })
    }
}
