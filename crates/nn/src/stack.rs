//! Sublayers, blocks and stacks: how parts are wired into a transformer.
//!
//! A [`Sublayer`] is `x + α · f(norm(x))` with `f` a self-attention, a cross-attention or
//! a feed-forward (pre-norm, as T5); a [`Block`] is a list of sublayers; a [`Stack`] adds
//! position embeddings at the bottom, runs its blocks — `layers` of them, or one block
//! (or a few) applied repeatedly when layers are shared — and a final norm. The CPU
//! mirror runs the same wiring for one unpadded sequence and walks it backwards, adding
//! every parameter's gradient into its slot (a shared block's weights receive the sum
//! over the layers that use them).

use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::Tensor;

use crate::attention::{Attention, AttentionState, CpuAttention, KeyValue, KeyValues, Mask};
use crate::cpu::{Binder, Gradient};
use crate::feed_forward::{CpuFeedForward, FeedForward, FeedForwardState};
use crate::moe::{CpuMixtureOfExperts, MixtureOfExperts, MixtureState};
use crate::norm::{CpuNorm, Norm, NormState};
use crate::position::{CpuPositions, Positions};
use crate::residual::{CpuResidual, Residual};
use crate::Dropout;

/// What a sublayer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    SelfAttention,
    CrossAttention,
    FeedForward,
    /// A mixture-of-experts feed-forward.
    Experts,
}

/// Checkpoint names (prefixes) inside a sublayer, e.g. T5: `SelfAttention.`,
/// `layer_norm.`.
#[derive(Clone, Copy, Debug)]
pub struct SublayerNames {
    pub inner: &'static str,
    pub norm: &'static str,
}

#[derive(Module, Debug)]
pub struct Sublayer {
    pub attention: Option<Attention>,
    pub feed_forward: Option<FeedForward>,
    pub experts: Option<MixtureOfExperts>,
    /// `None`: no normalisation (ReZero, Fixup).
    pub norm: Option<Norm>,
    pub residual: Residual,
    #[module(skip)]
    pub inner: Inner,
    #[module(skip)]
    names: SublayerNames,
}

crate::param_list!(Sublayer {
    optional_child [names.inner] => attention,
    optional_child [names.inner] => feed_forward,
    optional_child [names.inner] => experts,
    optional_child [names.norm] => norm,
    child "" => residual,
});

/// The per-call inputs of a stack's attention sublayers (burn forward).
pub struct Context<'a> {
    /// Positions of the first query (non-zero when decoding step by step).
    pub first: usize,
    /// Added to self-attention scores: positions and masks, `[batch|1, heads|1, q, k]`.
    pub self_bias: Tensor<4>,
    /// Cross-attention keys/values per applied layer and their padding mask.
    pub cross: Option<(&'a [KeyValue], Tensor<4>)>,
    pub dropout: Dropout,
}

impl Sublayer {
    pub fn new(
        inner: Inner,
        attention: Option<Attention>,
        feed_forward: Option<FeedForward>,
        norm: Option<Norm>,
        residual: Residual,
        names: SublayerNames,
    ) -> Self {
        Self {
            attention,
            feed_forward,
            experts: None,
            norm,
            residual,
            inner,
            names,
        }
    }

    /// A mixture-of-experts feed-forward sublayer.
    pub fn experts(
        experts: MixtureOfExperts,
        norm: Option<Norm>,
        residual: Residual,
        names: SublayerNames,
    ) -> Self {
        Self {
            experts: Some(experts),
            ..Self::new(Inner::Experts, None, None, norm, residual, names)
        }
    }

    fn normed(&self, x: &Tensor<3>) -> Tensor<3> {
        match &self.norm {
            Some(norm) => norm.forward(x.clone()),
            None => self.residual.branch_input(x),
        }
    }

    fn attention(&self) -> &Attention {
        self.attention.as_ref().expect("attention sublayer")
    }

    /// `self_kv`: this layer's cache of earlier keys/values (decoding), extended here.
    fn forward(
        &self,
        x: Tensor<3>,
        layer: usize,
        self_kv: &mut Option<KeyValue>,
        ctx: &Context,
    ) -> Tensor<3> {
        let normed = self.normed(&x);
        let branch = match self.inner {
            Inner::SelfAttention => {
                let attention = self.attention();
                let step = attention.key_value(normed.clone(), ctx.first);
                match self_kv {
                    Some(cache) => cache.append(step),
                    None => *self_kv = Some(step),
                }
                let kv = self_kv.as_ref().expect("set above");
                attention.attend(normed, kv, ctx.self_bias.clone(), ctx.first, ctx.dropout)
            }
            Inner::CrossAttention => {
                let (kvs, mask) = ctx.cross.as_ref().expect("cross-attention needs a memory");
                self.attention()
                    .attend(normed, &kvs[layer], mask.clone(), ctx.first, ctx.dropout)
            }
            Inner::FeedForward => self
                .feed_forward
                .as_ref()
                .expect("feed-forward sublayer")
                .forward(normed, ctx.dropout),
            Inner::Experts => self
                .experts
                .as_ref()
                .expect("mixture-of-experts sublayer")
                .forward(normed, ctx.dropout),
        };
        self.residual.forward(x, ctx.dropout.apply(branch))
    }

    fn bind(&self, binder: &Binder) -> CpuSublayer {
        CpuSublayer {
            attention: self.attention.as_ref().map(|a| a.bind(binder)),
            feed_forward: self.feed_forward.as_ref().map(|f| f.bind(binder)),
            experts: self.experts.as_ref().map(|e| e.bind(binder)),
            norm: self.norm.as_ref().map(|n| n.bind(binder)),
            residual: self.residual.bind(binder),
            inner: self.inner,
        }
    }
}

/// Checkpoint names of a block's sublayers: T5 numbers them (`layer.0.`, `layer.1.`, ...);
/// Llama names each directly under the block (`self_attn.`, `mlp.`).
#[derive(Clone, Copy, Debug)]
pub struct BlockNames {
    pub sublayers: Option<&'static str>,
}

#[derive(Module, Debug)]
pub struct Block {
    pub layers: Vec<Sublayer>,
    #[module(skip)]
    names: BlockNames,
}

crate::param_list!(Block { sequence [names.sublayers] => layers, });

impl Block {
    pub fn new(layers: Vec<Sublayer>, names: BlockNames) -> Self {
        Self { layers, names }
    }
}

/// Checkpoint names inside a stack, e.g. T5: `block.` (numbered), `final_layer_norm.`;
/// Llama: `layers.`, `norm.`.
#[derive(Clone, Copy, Debug)]
pub struct StackNames {
    pub blocks: &'static str,
    pub final_norm: &'static str,
}

#[derive(Module, Debug)]
pub struct Stack {
    /// The distinct blocks; applied cyclically `depth` times (all distinct when
    /// `blocks.len() == depth`, one shared block when 1).
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    pub positions: Positions,
    #[module(skip)]
    depth: usize,
    /// Self-attention sees only earlier positions (a decoder).
    #[module(skip)]
    causal: bool,
    #[module(skip)]
    names: StackNames,
}

crate::param_list!(Stack {
    children [names.blocks] => blocks,
    optional_child [names.final_norm] => final_norm,
    child "" => positions,
});

impl Stack {
    pub fn new(
        blocks: Vec<Block>,
        depth: usize,
        final_norm: Option<Norm>,
        positions: Positions,
        causal: bool,
        names: StackNames,
    ) -> Self {
        assert!(!blocks.is_empty() && depth.is_multiple_of(blocks.len()));
        Self {
            blocks,
            final_norm,
            positions,
            depth,
            causal,
            names,
        }
    }

    /// Number of layers applied.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The block applied as layer `i`.
    pub fn layer(&self, i: usize) -> &Block {
        &self.blocks[i % self.blocks.len()]
    }

    /// The relative position bias `[1, heads, queries, keys]` (queries at `first..`), if
    /// the stack has one (on its first self-attention).
    pub fn relative_bias(&self, first: usize, queries: usize, keys: usize) -> Option<Tensor<4>> {
        let bias = self.blocks[0].layers[0]
            .attention
            .as_ref()?
            .relative_bias
            .as_ref()?;
        Some(bias.bias(first, queries, keys))
    }

    /// Cross-attention keys/values of every applied layer over `memory` (computed once
    /// per input).
    pub fn cross_key_values(&self, memory: &Tensor<3>) -> Vec<KeyValue> {
        (0..self.depth)
            .filter_map(|i| {
                let sublayer = self
                    .layer(i)
                    .layers
                    .iter()
                    .find(|s| s.inner == Inner::CrossAttention)?;
                Some(sublayer.attention().key_value(memory.clone(), 0))
            })
            .collect()
    }

    /// The stack over embedded tokens `x` `[batch, len, d]` at positions `first..`.
    /// `cache` holds one self-attention key/value cache per applied layer.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cache: &mut [Option<KeyValue>],
        ctx: &Context,
    ) -> Tensor<3> {
        let mut x = ctx.dropout.apply(self.positions.forward(x, ctx.first));
        for (i, layer_cache) in cache.iter_mut().enumerate().take(self.depth) {
            for sublayer in &self.layer(i).layers {
                x = sublayer.forward(x, i, layer_cache, ctx);
            }
        }
        match &self.final_norm {
            Some(norm) => ctx.dropout.apply(norm.forward(x)),
            None => ctx.dropout.apply(x),
        }
    }

    pub fn bind(&self, binder: &Binder) -> CpuStack {
        CpuStack {
            blocks: self
                .blocks
                .iter()
                .map(|b| b.layers.iter().map(|s| s.bind(binder)).collect())
                .collect(),
            depth: self.depth,
            final_norm: self.final_norm.as_ref().map(|n| n.bind(binder)),
            positions: self.positions.bind(binder),
            mask: if self.causal { Mask::Causal } else { Mask::All },
        }
    }
}

struct CpuSublayer {
    attention: Option<CpuAttention>,
    feed_forward: Option<CpuFeedForward>,
    experts: Option<CpuMixtureOfExperts>,
    norm: Option<CpuNorm>,
    residual: CpuResidual,
    inner: Inner,
}

enum InnerState {
    Attention(AttentionState),
    FeedForward(FeedForwardState),
    Experts(MixtureState),
}

struct SublayerState {
    /// The branch input: the norm's output, else the sublayer's input (shifted by
    /// Fixup's bias).
    norm: Option<NormState>,
    input: Option<Vec<f32>>,
    inner: InnerState,
    /// The branch output, kept for ReZero's α gradient.
    branch: Vec<f32>,
}

impl SublayerState {
    fn normed(&self) -> &[f32] {
        match (&self.norm, &self.input) {
            (Some(norm), _) => &norm.output,
            (None, Some(input)) => input,
            (None, None) => unreachable!("one of the two is kept"),
        }
    }
}

pub struct CpuStack {
    blocks: Vec<Vec<CpuSublayer>>,
    depth: usize,
    final_norm: Option<CpuNorm>,
    positions: CpuPositions,
    mask: Mask,
}

/// One sequence's pass through a stack.
pub struct StackState {
    rows: usize,
    layers: Vec<Vec<SublayerState>>,
    final_norm: Option<NormState>,
    /// Buckets of the relative position bias, when the stack has one.
    buckets: Option<Vec<usize>>,
    /// The stack's output `[rows, d_model]`.
    pub output: Vec<f32>,
}

impl CpuStack {
    fn layer(&self, i: usize) -> &[CpuSublayer] {
        &self.blocks[i % self.blocks.len()]
    }

    fn relative_bias(&self) -> Option<&crate::position::CpuRelativeBias> {
        self.blocks[0][0].attention.as_ref()?.relative_bias.as_ref()
    }

    /// An error when `len` tokens do not fit the stack's positions.
    pub fn check_length(&self, len: usize) -> anyhow::Result<()> {
        self.positions.check_length(len)
    }

    /// Cross-attention keys/values of every applied layer over `memory` `[rows, d]`.
    pub fn cross_key_values(&self, memory: &[f32], rows: usize) -> Vec<KeyValues> {
        (0..self.depth)
            .filter_map(|i| {
                let s = self
                    .layer(i)
                    .iter()
                    .find(|s| s.inner == Inner::CrossAttention)?;
                Some(s.attention.as_ref()?.key_values(memory, rows))
            })
            .collect()
    }

    /// Zero key/value gradients shaped like `cross`.
    pub fn zero_cross(cross: &[KeyValues]) -> Vec<KeyValues> {
        cross
            .iter()
            .map(|kv| KeyValues {
                k: vec![0.0; kv.k.len()],
                v: vec![0.0; kv.v.len()],
            })
            .collect()
    }

    /// Adds the cross-attention key/value projections' gradients and returns the
    /// memory's gradient.
    pub fn cross_backward(
        &self,
        memory: &[f32],
        rows: usize,
        dcross: Vec<KeyValues>,
        grad: &mut Gradient,
    ) -> Vec<f32> {
        let mut dmemory = vec![0.0; memory.len()];
        let mut dcross = dcross.into_iter();
        for i in 0..self.depth {
            let Some(s) = self
                .layer(i)
                .iter()
                .find(|s| s.inner == Inner::CrossAttention)
            else {
                continue;
            };
            let attention = s.attention.as_ref().expect("cross-attention");
            let dkv = dcross.next().expect("one gradient per cross-attention");
            attention.key_values_backward(memory, rows, dkv, grad, &mut dmemory);
        }
        dmemory
    }

    /// The stack over embedded tokens `x` `[rows, d]` (positions `0..rows`).
    pub fn forward(&self, x: Vec<f32>, rows: usize, cross: Option<&[KeyValues]>) -> StackState {
        self.forward_masked(x, rows, cross, self.mask)
    }

    /// [`forward`](Self::forward) with the self-attention seeing as `mask` says (a
    /// prefix LM's prefix depends on the sequence).
    pub fn forward_masked(
        &self,
        mut x: Vec<f32>,
        rows: usize,
        cross: Option<&[KeyValues]>,
        mask: Mask,
    ) -> StackState {
        let d = x.len() / rows;
        self.positions.forward(&mut x, d);
        let (bias, buckets) = match self.relative_bias() {
            Some(table) => {
                let (bias, buckets) = table.forward(rows, rows);
                (Some(bias), Some(buckets))
            }
            None => (None, None),
        };
        let mut layers = Vec::with_capacity(self.depth);
        let mut cross_index = 0;
        for i in 0..self.depth {
            let mut states = Vec::new();
            for s in self.layer(i) {
                let norm = s.norm.as_ref().map(|n| n.forward(&x));
                let input = norm
                    .is_none()
                    .then(|| s.residual.branch_input(&x).unwrap_or_else(|| x.clone()));
                let normed = match (&norm, &input) {
                    (Some(n), _) => n.output.as_slice(),
                    (None, Some(input)) => input.as_slice(),
                    (None, None) => unreachable!("one of the two is set"),
                };
                let (inner, branch) = match s.inner {
                    Inner::SelfAttention => {
                        let a = s.attention.as_ref().expect("attention");
                        let (state, out) = a.forward(normed, rows, bias.as_deref(), mask, None);
                        (InnerState::Attention(state), out)
                    }
                    Inner::CrossAttention => {
                        let a = s.attention.as_ref().expect("attention");
                        let kv = &cross.expect("cross-attention needs a memory")[cross_index];
                        cross_index += 1;
                        let (state, out) = a.forward(normed, rows, None, Mask::All, Some(kv));
                        (InnerState::Attention(state), out)
                    }
                    Inner::FeedForward => {
                        let f = s.feed_forward.as_ref().expect("feed-forward");
                        let (state, out) = f.forward(normed, rows);
                        (InnerState::FeedForward(state), out)
                    }
                    Inner::Experts => {
                        let e = s.experts.as_ref().expect("experts");
                        let (state, out) = e.forward(normed, rows);
                        (InnerState::Experts(state), out)
                    }
                };
                s.residual.forward(&mut x, &branch);
                states.push(SublayerState {
                    norm,
                    input,
                    inner,
                    branch,
                });
            }
            layers.push(states);
        }
        let final_norm = self.final_norm.as_ref().map(|n| n.forward(&x));
        let output = match &final_norm {
            Some(state) => state.output.clone(),
            None => x,
        };
        StackState {
            rows,
            layers,
            final_norm,
            buckets,
            output,
        }
    }

    /// Backward from the output gradient: adds every parameter's gradient (cross-
    /// attention key/value gradients into `dcross`) and returns the gradient of the
    /// embedded input.
    pub fn backward(
        &self,
        state: &StackState,
        doutput: &[f32],
        mut dcross: Option<&mut [KeyValues]>,
        cross: Option<&[KeyValues]>,
        grad: &mut Gradient,
    ) -> Vec<f32> {
        let rows = state.rows;
        let mut dx = match (&self.final_norm, &state.final_norm) {
            (Some(norm), Some(s)) => norm.backward(s, doutput, grad),
            _ => doutput.to_vec(),
        };
        let mut dscores: Vec<Vec<f32>> = Vec::new();
        let mut cross_index = cross.map_or(0, |c| c.len());
        for i in (0..self.depth).rev() {
            for (s, st) in self.layer(i).iter().zip(&state.layers[i]).rev() {
                let dbranch = s.residual.backward(&dx, &st.branch, grad);
                let normed = st.normed();
                let dnormed = match (&st.inner, s.inner) {
                    (InnerState::Attention(a_state), Inner::SelfAttention) => {
                        let a = s.attention.as_ref().expect("attention");
                        let (dn, layer_scores) = a.backward(normed, a_state, &dbranch, None, grad);
                        if dscores.is_empty() {
                            dscores = layer_scores;
                        } else {
                            dscores
                                .iter_mut()
                                .zip(&layer_scores)
                                .for_each(|(t, l)| crate::cpu::add_into(t, l));
                        }
                        dn
                    }
                    (InnerState::Attention(a_state), Inner::CrossAttention) => {
                        cross_index -= 1;
                        let a = s.attention.as_ref().expect("attention");
                        let kv = &cross.expect("cross keys")[cross_index];
                        let total = &mut dcross.as_mut().expect("cross gradients")[cross_index];
                        a.backward(normed, a_state, &dbranch, Some((kv, total)), grad)
                            .0
                    }
                    (InnerState::FeedForward(f_state), _) => s
                        .feed_forward
                        .as_ref()
                        .expect("feed-forward")
                        .backward(normed, f_state, &dbranch, rows, grad),
                    (InnerState::Experts(e_state), _) => s
                        .experts
                        .as_ref()
                        .expect("experts")
                        .backward(normed, e_state, &dbranch, rows, grad),
                    _ => unreachable!("state matches its sublayer"),
                };
                let dinput = match (&s.norm, &st.norm) {
                    (Some(norm), Some(n_state)) => norm.backward(n_state, &dnormed, grad),
                    _ => {
                        s.residual.branch_input_backward(&dnormed, grad);
                        dnormed
                    }
                };
                crate::cpu::add_into(&mut dx, &dinput);
            }
        }
        if let (Some(table), Some(buckets)) = (self.relative_bias(), &state.buckets) {
            // Masked (causal) entries have zero probability, so zero score gradients.
            table.backward(buckets, &dscores, grad);
        }
        self.positions.backward(&dx, grad);
        dx
    }
}
