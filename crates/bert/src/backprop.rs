//! Per-example gradients of a BERT/RoBERTa classifier by the model parts' hand-written
//! backward passes (CPU, f32), wired as [`crate::model`] wires the burn forward: the
//! three embeddings summed and layer-normed, post-norm layers, the head on the first
//! token, the log-softmax over the classes. Tests compare every gradient with burn's
//! autodiff of the same model.

use anyhow::{ensure, Context, Result};
use fisherkit_model::{ChooseObjectives, EachGradient, Example, ExampleBackprop};
use fisherkit_nn::attention::{AttentionState, CpuAttention, Mask};
use fisherkit_nn::cpu::{add_into, Binder, Gradient};
use fisherkit_nn::embedding::CpuEmbedding;
use fisherkit_nn::feed_forward::{CpuFeedForward, FeedForwardState};
use fisherkit_nn::linear::CpuLinear;
use fisherkit_nn::norm::{CpuNorm, NormState};

use crate::config::BertConfig;
use crate::model::Bert;

struct CpuLayer {
    attention: CpuAttention,
    attention_norm: CpuNorm,
    feed_forward: CpuFeedForward,
    output_norm: CpuNorm,
}

/// What one layer's backward needs.
struct LayerState {
    input: Vec<f32>,
    attention: AttentionState,
    attention_norm: NormState,
    feed_forward: FeedForwardState,
    output_norm: NormState,
}

/// The hand-written gradient of a classifier whose parameters are f32 tensors on the CPU
/// backend.
pub struct BertBackprop {
    config: BertConfig,
    word: CpuEmbedding,
    positions: CpuEmbedding,
    token_types: CpuEmbedding,
    embedding_norm: CpuNorm,
    layers: Vec<CpuLayer>,
    /// BERT's pooler or RoBERTa's `classifier.dense`: dense + tanh on the first token.
    features: CpuLinear,
    classifier: CpuLinear,
    binder: Binder,
}

impl BertBackprop {
    /// `None` for a bare encoder, in training mode (this pass has no dropout), or when the
    /// parameters are not f32 tensors of the CPU backend.
    pub fn new(model: &Bert) -> Option<Self> {
        if model.training {
            return None;
        }
        let classifier = model.classifier.as_ref()?;
        let features = model
            .head_dense
            .as_ref()
            .or(model.encoder.pooler.as_ref())?;
        let binder = Binder::new(model)?;
        let encoder = &model.encoder;
        Some(Self {
            word: encoder.word.bind(&binder),
            positions: encoder.positions.bind(&binder),
            token_types: encoder.token_types.bind(&binder),
            embedding_norm: encoder.embedding_norm.bind(&binder),
            layers: encoder
                .layers
                .iter()
                .map(|l| CpuLayer {
                    attention: l.attention.bind(&binder),
                    attention_norm: l.attention_norm.bind(&binder),
                    feed_forward: l.feed_forward.bind(&binder),
                    output_norm: l.output_norm.bind(&binder),
                })
                .collect(),
            features: features.bind(&binder, true),
            classifier: classifier.bind(&binder, true),
            binder,
            config: model.config().clone(),
        })
    }
}

impl ExampleBackprop for BertBackprop {
    fn gradients(
        &self,
        example: &Example,
        targets: &[Vec<u32>],
        objectives: &mut ChooseObjectives<'_>,
        each: &mut EachGradient<'_>,
    ) -> Result<()> {
        self.config.check_input(example, 0)?;
        let classes = self.classifier.d_out();
        for target in targets {
            ensure!(
                target.len() == 1 && (target[0] as usize) < classes,
                "a classifier's target is one class index below {classes}, got {target:?}"
            );
        }
        let (n, d) = (example.input_ids.len(), self.config.hidden_size);
        let types = if example.token_type_ids.is_empty() {
            vec![0; n]
        } else {
            example.token_type_ids.clone()
        };
        let position_ids: Vec<u32> = self
            .config
            .position_ids(&example.input_ids, n)
            .into_iter()
            .map(|p| p as u32)
            .collect();
        let (word_state, mut x) = self.word.forward(&example.input_ids);
        let (position_state, p) = self.positions.forward(&position_ids);
        let (type_state, t) = self.token_types.forward(&types);
        add_into(&mut x, &p);
        add_into(&mut x, &t);
        let embedded = self.embedding_norm.forward(&x);
        let mut hidden = embedded.output.clone();
        let mut states = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (attention, mut sum) = layer.attention.forward(&hidden, n, None, Mask::All, None);
            add_into(&mut sum, &hidden);
            let attention_norm = layer.attention_norm.forward(&sum);
            let (feed_forward, mut sum) = layer.feed_forward.forward(&attention_norm.output, n);
            add_into(&mut sum, &attention_norm.output);
            let output_norm = layer.output_norm.forward(&sum);
            let next = output_norm.output.clone();
            states.push(LayerState {
                input: std::mem::replace(&mut hidden, next),
                attention,
                attention_norm,
                feed_forward,
                output_norm,
            });
        }
        let first = &hidden[..d];
        let features: Vec<f32> = self
            .features
            .forward(first, 1)
            .iter()
            .map(|v| v.tanh())
            .collect();
        let mut log_softmax = self.classifier.forward(&features, 1);
        let max = log_softmax
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let log_sum = log_softmax
            .iter()
            .map(|v| (v - max).exp())
            .sum::<f32>()
            .ln()
            + max;
        log_softmax.iter_mut().for_each(|v| *v -= log_sum);

        // Every target of a classifier is scored from the same one distribution.
        let rows: Vec<&[f32]> = targets.iter().map(|_| log_softmax.as_slice()).collect();
        let objectives = objectives(&rows).context("choosing the classes to differentiate")?;
        for (index, picks) in objectives.iter().enumerate() {
            ensure!(
                picks.len() == targets.len(),
                "{} pick lists for {} targets",
                picks.len(),
                targets.len()
            );
            // d objective / d logits = w − (Σ w) p.
            let mut dlogits = vec![0.0f32; classes];
            let mut total = 0.0;
            for &(t, c, w) in picks.iter().flatten() {
                ensure!(t == 0 && c < classes, "class ({t}, {c}) out of range");
                dlogits[c] += w;
                total += w;
            }
            dlogits
                .iter_mut()
                .zip(&log_softmax)
                .for_each(|(g, l)| *g -= total * l.exp());
            let mut grad = self.binder.gradient();
            let mut dfeatures = vec![0.0; d];
            self.classifier
                .backward(&features, &dlogits, 1, &mut grad, &mut dfeatures, false);
            dfeatures
                .iter_mut()
                .zip(&features)
                .for_each(|(g, f)| *g *= 1.0 - f * f);
            let mut dhidden = vec![0.0; n * d];
            self.features
                .backward(first, &dfeatures, 1, &mut grad, &mut dhidden[..d], false);
            for (layer, state) in self.layers.iter().zip(&states).rev() {
                dhidden = layer_backward(layer, state, &dhidden, n, &mut grad);
            }
            let dembedded = self.embedding_norm.backward(&embedded, &dhidden, &mut grad);
            self.word.backward(&word_state, &dembedded, &mut grad);
            self.positions
                .backward(&position_state, &dembedded, &mut grad);
            self.token_types
                .backward(&type_state, &dembedded, &mut grad);
            each(index, grad.values)?;
        }
        Ok(())
    }
}

/// Backward through one post-norm layer given the gradient of its output.
fn layer_backward(
    layer: &CpuLayer,
    state: &LayerState,
    doutput: &[f32],
    n: usize,
    grad: &mut Gradient,
) -> Vec<f32> {
    let dsum = layer
        .output_norm
        .backward(&state.output_norm, doutput, grad);
    let mut dmiddle = layer.feed_forward.backward(
        &state.attention_norm.output,
        &state.feed_forward,
        &dsum,
        n,
        grad,
    );
    add_into(&mut dmiddle, &dsum);
    let dsum = layer
        .attention_norm
        .backward(&state.attention_norm, &dmiddle, grad);
    let (mut dinput, _) =
        layer
            .attention
            .backward(&state.input, &state.attention, &dsum, None, grad);
    add_into(&mut dinput, &dsum);
    dinput
}
