//! Per-example gradients of T5 by a hand-written backward pass (CPU, f32).
//!
//! Fishers square the gradient of ONE example at a time, so the autodiff graph is built,
//! walked and freed once per example and class, and every parameter's gradient is then
//! copied out of its tensor into the flat vector the Fisher code reads. Here the forward
//! pass keeps exactly the activations the backward pass needs, and every weight gradient
//! is written by one matrix product straight into its place in the flat vector. The
//! weights are read in place from the model's CPU tensors; the attention and
//! feed-forward matrices are also kept transposed, for the forward products.
//!
//! The math mirrors [`crate::model`] (HF `modeling_t5.py`) in eval mode: T5LayerNorm
//! (RMS, no bias), unscaled attention with a relative position bias shared per stack,
//! ReLU/GELU/SiLU feed-forward (gated or not), tied or untied output with the `d_model^-½`
//! scale. Inputs are one unpadded example, so the only mask is the decoder's causal one.
//! Tests compare every gradient with burn's autodiff of the same model.

use anyhow::{ensure, Context, Result};
use fisherkit_model::burn::backend::flex::{Flex, FlexTensor};
use fisherkit_model::burn::tensor::{DType, Tensor};
use fisherkit_model::{
    matmul_transposed, ChooseObjectives, EachGradient, ExampleBackprop, ParamAccess, ParamRef,
    FEW_ROWS,
};
use rayon::prelude::*;
use std::collections::HashMap;

use crate::config::{Activation, T5Config};
use crate::model::{relative_position_bucket, MASKED, T5};

/// Products with at least this many multiply-adds run on all cores (burn-flex's
/// threshold); smaller ones on the calling thread.
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// One parameter: its values, read in place from the model's CPU tensor, and where its
/// gradient goes in the flat vector.
struct Weight {
    tensor: FlexTensor,
    rows: usize,
    cols: usize,
    offset: usize,
    /// Index into [`Gradient::written`].
    index: usize,
    /// `[cols, rows]` row-major copy of a projection weight (empty for the others): the
    /// forward product `x · Wᵀ` then reads both operands row-major, which gemm runs
    /// about twice as fast as with the transposed view of W.
    transposed: Vec<f32>,
}

impl Weight {
    fn values(&self) -> &[f32] {
        let start = self.tensor.layout().start_offset();
        &self.tensor.storage::<f32>()[start..start + self.rows * self.cols]
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

struct AttentionWeights {
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
}

enum FeedForwardWeights {
    Plain {
        wi: Weight,
        wo: Weight,
    },
    Gated {
        wi_0: Weight,
        wi_1: Weight,
        wo: Weight,
    },
}

struct EncoderLayer {
    attention_norm: Weight,
    attention: AttentionWeights,
    feed_forward_norm: Weight,
    feed_forward: FeedForwardWeights,
}

struct DecoderLayer {
    self_norm: Weight,
    self_attention: AttentionWeights,
    cross_norm: Weight,
    cross_attention: AttentionWeights,
    feed_forward_norm: Weight,
    feed_forward: FeedForwardWeights,
}

/// The hand-written gradient of a T5 model whose parameters are f32 tensors on the CPU
/// backend.
pub struct T5Backprop {
    config: T5Config,
    activation: Activation,
    shared: Weight,
    lm_head: Option<Weight>,
    encoder: Vec<EncoderLayer>,
    encoder_table: Weight,
    encoder_final_norm: Weight,
    decoder: Vec<DecoderLayer>,
    decoder_table: Weight,
    decoder_final_norm: Weight,
    num_params: usize,
    num_weights: usize,
}

impl T5Backprop {
    /// `None` when the parameters are not f32 tensors of the CPU backend (GPU devices and
    /// reduced precision keep burn's autodiff) or the model is in training mode (this
    /// pass has no dropout).
    pub fn new(model: &T5) -> Option<Self> {
        if model.training {
            return None;
        }
        let specs = model.param_specs();
        let mut weights: HashMap<String, Weight> = HashMap::new();
        for (index, ((name, param), spec)) in
            model.named_params().into_iter().zip(&specs).enumerate()
        {
            let tensor = match param {
                ParamRef::Vector(p) => cpu_f32(p.val())?,
                ParamRef::Matrix(p) => cpu_f32(p.val())?,
            };
            let (rows, cols) = match spec.shape[..] {
                [n] => (1, n),
                [r, c] => (r, c),
                _ => return None,
            };
            weights.insert(
                name,
                Weight {
                    tensor,
                    rows,
                    cols,
                    offset: spec.offset,
                    index,
                    transposed: Vec::new(),
                },
            );
        }
        weights
            .par_iter_mut()
            .filter(|(name, _)| is_projection(name))
            .for_each(|(_, w)| w.transposed = transpose(w.values(), w.rows, w.cols));
        let num_params = specs.iter().map(|s| s.numel()).sum();
        let num_weights = specs.len();
        let mut take = |name: String| weights.remove(&name);
        let config = model.config().clone();
        let attention = |take: &mut dyn FnMut(String) -> Option<Weight>, prefix: &str| {
            Some(AttentionWeights {
                q: take(format!("{prefix}q.weight"))?,
                k: take(format!("{prefix}k.weight"))?,
                v: take(format!("{prefix}v.weight"))?,
                o: take(format!("{prefix}o.weight"))?,
            })
        };
        let feed_forward = |take: &mut dyn FnMut(String) -> Option<Weight>, prefix: &str| {
            let wo = take(format!("{prefix}wo.weight"))?;
            Some(match take(format!("{prefix}wi.weight")) {
                Some(wi) => FeedForwardWeights::Plain { wi, wo },
                None => FeedForwardWeights::Gated {
                    wi_0: take(format!("{prefix}wi_0.weight"))?,
                    wi_1: take(format!("{prefix}wi_1.weight"))?,
                    wo,
                },
            })
        };
        let mut encoder = Vec::new();
        for i in 0..config.num_layers {
            let p = format!("encoder.block.{i}.layer.");
            encoder.push(EncoderLayer {
                attention_norm: take(format!("{p}0.layer_norm.weight"))?,
                attention: attention(&mut take, &format!("{p}0.SelfAttention."))?,
                feed_forward_norm: take(format!("{p}1.layer_norm.weight"))?,
                feed_forward: feed_forward(&mut take, &format!("{p}1.DenseReluDense."))?,
            });
        }
        let mut decoder = Vec::new();
        for i in 0..config.decoder_layers() {
            let p = format!("decoder.block.{i}.layer.");
            decoder.push(DecoderLayer {
                self_norm: take(format!("{p}0.layer_norm.weight"))?,
                self_attention: attention(&mut take, &format!("{p}0.SelfAttention."))?,
                cross_norm: take(format!("{p}1.layer_norm.weight"))?,
                cross_attention: attention(&mut take, &format!("{p}1.EncDecAttention."))?,
                feed_forward_norm: take(format!("{p}2.layer_norm.weight"))?,
                feed_forward: feed_forward(&mut take, &format!("{p}2.DenseReluDense."))?,
            });
        }
        let table = "layer.0.SelfAttention.relative_attention_bias.weight";
        Some(Self {
            activation: config.feed_forward().activation,
            shared: take("shared.weight".into())?,
            lm_head: take("lm_head.weight".into()),
            encoder,
            encoder_table: take(format!("encoder.block.0.{table}"))?,
            encoder_final_norm: take("encoder.final_layer_norm.weight".into())?,
            decoder,
            decoder_table: take(format!("decoder.block.0.{table}"))?,
            decoder_final_norm: take("decoder.final_layer_norm.weight".into())?,
            config,
            num_params,
            num_weights,
        })
        .filter(|_| weights.is_empty())
    }
}

/// Attention and feed-forward matrices (not embeddings, output head or position tables).
fn is_projection(name: &str) -> bool {
    ["Attention.", "DenseReluDense."]
        .iter()
        .any(|part| name.contains(part))
        && !name.contains("relative_attention_bias")
}

/// `[cols, rows]` row-major transpose of a `[rows, cols]` matrix, in cache-sized tiles.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 64;
    let mut out = vec![0.0; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

/// The CPU backend's tensor behind a contiguous f32 parameter, shared (not copied).
fn cpu_f32<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let tensor = t.inner().try_into_primitive::<Flex>().ok()?;
    tensor.layout().is_contiguous().then_some(tensor)
}

// ---------------------------------------------------------------------------------------
// Matrix products on row-major slices.

/// A read-only strided matrix: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A row-major `[rows, cols]` matrix.
fn mat(data: &[f32], rows: usize, cols: usize) -> View<'_> {
    assert_eq!(data.len(), rows * cols, "matrix is not [{rows}, {cols}]");
    View {
        data,
        rows,
        cols,
        row_stride: cols,
        col_stride: 1,
    }
}

impl<'a> View<'a> {
    fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            data: self.data,
        }
    }

    /// Columns `first..first + count` (one attention head of a `[len, inner]` matrix).
    fn columns(self, first: usize, count: usize) -> View<'a> {
        assert!(first + count <= self.cols);
        View {
            data: &self.data[first * self.col_stride..],
            cols: count,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// Head `h`'s columns of a `[rows, inner]` query/key/value matrix.
fn head(x: &[f32], rows: usize, inner: usize, h: usize, d_kv: usize) -> View<'_> {
    mat(x, rows, inner).columns(h * d_kv, d_kv)
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), `dst` row-major `[a.rows, b.cols]`.
fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    assert!(a.last_index() < a.data.len() && b.last_index() < b.data.len());
    let parallelism = if m * n * k >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm reads or writes inside the
    // slices; `dst` is exclusively borrowed and does not overlap `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `x · Wᵀ` for `x` `[rows, in]` and a `[out, in]` weight.
fn linear(x: &[f32], rows: usize, w: &Weight) -> Vec<f32> {
    let weight_t = if !w.transposed.is_empty() {
        mat(&w.transposed, w.cols, w.rows)
    } else if rows <= FEW_ROWS {
        // The output head has no transposed copy (it is the largest matrix): few rows
        // stream it once instead.
        return matmul_transposed(x, rows, w.values(), w.rows, w.cols);
    } else {
        mat(w.values(), w.rows, w.cols).t()
    };
    let mut out = vec![0.0; rows * w.rows];
    matmul(&mut out, mat(x, rows, w.cols), weight_t, false);
    out
}

/// The flat gradient being written: each weight's first contribution overwrites its
/// (zero) slot, later ones add.
struct Gradient {
    values: Vec<f32>,
    written: Vec<bool>,
}

impl Gradient {
    fn new(num_params: usize, num_weights: usize) -> Self {
        Self {
            values: vec![0.0; num_params],
            written: vec![false; num_weights],
        }
    }

    fn slot(&mut self, w: &Weight) -> (&mut [f32], bool) {
        let accumulate = std::mem::replace(&mut self.written[w.index], true);
        (&mut self.values[w.offset..w.offset + w.len()], accumulate)
    }

    /// The gradient of `y = x · Wᵀ` with respect to W: `dyᵀ · x`.
    fn linear(&mut self, w: &Weight, x: &[f32], dy: &[f32], rows: usize) {
        let (slot, accumulate) = self.slot(w);
        matmul(
            slot,
            mat(dy, rows, w.rows).t(),
            mat(x, rows, w.cols),
            accumulate,
        );
    }

    /// A slot to add into directly (norm weights, position tables, embeddings).
    fn add(&mut self, w: &Weight) -> &mut [f32] {
        self.written[w.index] = true;
        &mut self.values[w.offset..w.offset + w.len()]
    }
}

/// `dy · W` for a `[out, in]` weight: the input gradient of `y = x · Wᵀ`.
fn linear_input_grad(dy: &[f32], rows: usize, w: &Weight, dx: &mut [f32], accumulate: bool) {
    matmul(
        dx,
        mat(dy, rows, w.rows),
        mat(w.values(), w.rows, w.cols),
        accumulate,
    );
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

// ---------------------------------------------------------------------------------------
// Layers: forward passes that keep what their backward passes need.

/// T5LayerNorm over rows of `x`: `w * x / sqrt(mean(x²) + eps)`.
struct Norm {
    input: Vec<f32>,
    inv_rms: Vec<f32>,
    output: Vec<f32>,
}

impl Norm {
    fn rows(&self) -> usize {
        self.inv_rms.len()
    }
}

fn norm_forward(x: Vec<f32>, w: &Weight, eps: f64) -> Norm {
    let d = w.cols;
    let weight = w.values();
    let mut output = vec![0.0; x.len()];
    let inv_rms: Vec<f32> = x
        .chunks(d)
        .zip(output.chunks_mut(d))
        .map(|(row, out)| {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (mean_square + eps as f32).sqrt();
            for ((o, v), g) in out.iter_mut().zip(row).zip(weight) {
                *o = g * (v * r);
            }
            r
        })
        .collect();
    Norm {
        input: x,
        inv_rms,
        output,
    }
}

/// Adds the weight gradient into `grad` and returns the input gradient.
fn norm_backward(norm: &Norm, w: &Weight, dy: &[f32], grad: &mut Gradient) -> Vec<f32> {
    let d = w.cols;
    let weight = w.values();
    let dw = grad.add(w);
    let mut dx = vec![0.0; dy.len()];
    for (((x, dy), dx), &r) in norm
        .input
        .chunks(d)
        .zip(dy.chunks(d))
        .zip(dx.chunks_mut(d))
        .zip(&norm.inv_rms)
    {
        // u = dy ⊙ w;  dx = r u − x r³ (u·x)/d
        let mut ux = 0.0f32;
        for j in 0..d {
            dw[j] += dy[j] * x[j] * r;
            ux += dy[j] * weight[j] * x[j];
        }
        let c = r * r * r * ux / d as f32;
        for j in 0..d {
            dx[j] = r * dy[j] * weight[j] - x[j] * c;
        }
    }
    dx
}

fn activate(activation: Activation, z: f32) -> f32 {
    match activation {
        Activation::Relu => z.max(0.0),
        Activation::Gelu => 0.5 * z * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => 0.5 * z * (1.0 + gelu_tanh_inner(z).tanh()),
        Activation::Silu => z / (1.0 + (-z).exp()),
    }
}

/// √(2/π) and the cubic coefficient of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044715;

fn gelu_tanh_inner(z: f32) -> f32 {
    SQRT_2_OVER_PI * (z + GELU_CUBIC * z * z * z)
}

/// d act(z) / dz.
fn activate_grad(activation: Activation, z: f32) -> f32 {
    match activation {
        Activation::Relu => f32::from(z > 0.0),
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * z * z).exp() / (2.0 * std::f32::consts::PI).sqrt();
            cdf + z * pdf
        }
        Activation::GeluTanh => {
            let t = gelu_tanh_inner(z).tanh();
            0.5 * (1.0 + t)
                + 0.5 * z * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * z * z)
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-z).exp());
            s * (1.0 + z * (1.0 - s))
        }
    }
}

struct FeedForward {
    norm: Norm,
    /// Pre-activation (the activated branch when gated).
    pre: Vec<f32>,
    /// The linear branch of a gated unit.
    gate: Option<Vec<f32>>,
    /// The input of `wo`.
    hidden: Vec<f32>,
}

struct Attention {
    norm: Norm,
    q: Vec<f32>,
    /// Keys/values of a self-attention (cross-attention's are shared by the decoder
    /// passes, outside this state).
    own: Option<KeyValues>,
    /// Attention weights per head, `[queries, keys]` each.
    probs: Vec<Vec<f32>>,
    context: Vec<f32>,
}

/// Cross-attention keys and values of one decoder layer, from the encoder output (or
/// their gradients).
struct KeyValues {
    k: Vec<f32>,
    v: Vec<f32>,
}

struct EncoderState {
    attention: Attention,
    feed_forward: FeedForward,
}

struct DecoderState {
    self_attention: Attention,
    cross_attention: Attention,
    feed_forward: FeedForward,
}

/// One target sequence's decoder pass.
struct DecoderPass {
    decoder_ids: Vec<u32>,
    /// Position-table bucket of every (query, key) pair.
    buckets: Vec<usize>,
    layers: Vec<DecoderState>,
    final_norm: Norm,
    /// The (scaled) final hidden states, the input of the output projection.
    head_input: Vec<f32>,
    log_softmax: Vec<f32>,
}

/// A relative position bias `[heads, queries, keys]`, causal mask included.
fn position_bias(
    config: &T5Config,
    table: &Weight,
    queries: usize,
    keys: usize,
    causal: bool,
) -> (Vec<f32>, Vec<usize>) {
    let heads = config.num_heads;
    let values = table.values();
    let mut buckets = Vec::with_capacity(queries * keys);
    for q in 0..queries {
        for k in 0..keys {
            buckets.push(relative_position_bucket(
                k as i64 - q as i64,
                !causal,
                config.relative_attention_num_buckets,
                config.relative_attention_max_distance,
            ));
        }
    }
    let mut bias = vec![0.0; heads * queries * keys];
    for h in 0..heads {
        for (i, &b) in buckets.iter().enumerate() {
            let (q, k) = (i / keys, i % keys);
            bias[h * queries * keys + i] = if causal && k > q {
                MASKED
            } else {
                values[b * heads + h]
            };
        }
    }
    (bias, buckets)
}

impl T5Backprop {
    fn d_kv(&self) -> usize {
        self.config.d_kv
    }

    fn heads(&self) -> usize {
        self.config.num_heads
    }

    fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let d = self.config.d_model;
        let table = self.shared.values();
        ids.iter()
            .flat_map(|&id| &table[id as usize * d..(id as usize + 1) * d])
            .copied()
            .collect()
    }

    /// `softmax(q kᵀ + bias) v` for every head: returns the attention weights per head
    /// and the context `[queries, inner]`.
    fn attend(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        queries: usize,
        keys: usize,
        bias: Option<&[f32]>,
    ) -> (Vec<Vec<f32>>, Vec<f32>) {
        let (heads, d_kv) = (self.heads(), self.d_kv());
        let inner = heads * d_kv;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let qh = head(q, queries, inner, h, d_kv);
                let kh = head(k, keys, inner, h, d_kv);
                let vh = head(v, keys, inner, h, d_kv);
                let mut scores = match bias {
                    Some(b) => b[h * queries * keys..(h + 1) * queries * keys].to_vec(),
                    None => vec![0.0; queries * keys],
                };
                matmul(&mut scores, qh, kh.t(), bias.is_some());
                for row in scores.chunks_mut(keys) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in row.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= sum);
                }
                let mut context = vec![0.0; queries * d_kv];
                matmul(&mut context, mat(&scores, queries, keys), vh, false);
                (scores, context)
            })
            .collect();
        let mut context = vec![0.0; queries * inner];
        for (h, (_, ctx)) in per_head.iter().enumerate() {
            for (row, src) in context.chunks_mut(inner).zip(ctx.chunks(d_kv)) {
                row[h * d_kv..(h + 1) * d_kv].copy_from_slice(src);
            }
        }
        (per_head.into_iter().map(|(p, _)| p).collect(), context)
    }

    /// Backward of [`attend`](Self::attend): `(dq, dk, dv, dscores per head)`.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        probs: &[Vec<f32>],
        dcontext: &[f32],
        queries: usize,
        keys: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
        let (heads, d_kv) = (self.heads(), self.d_kv());
        let inner = heads * d_kv;
        let per_head: Vec<[Vec<f32>; 4]> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let cols = |x, rows| head(x, rows, inner, h, d_kv);
                let (qh, kh, vh) = (cols(q, queries), cols(k, keys), cols(v, keys));
                let dctx = cols(dcontext, queries);
                let p = &probs[h];
                let mut dp = vec![0.0; queries * keys];
                matmul(&mut dp, dctx, vh.t(), false);
                let mut dv = vec![0.0; keys * d_kv];
                matmul(&mut dv, mat(p, queries, keys).t(), dctx, false);
                // softmax backward: ds = p ⊙ (dp − Σ_j dp_j p_j)
                for (dp_row, p_row) in dp.chunks_mut(keys).zip(p.chunks(keys)) {
                    let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                    for (d, &pv) in dp_row.iter_mut().zip(p_row) {
                        *d = pv * (*d - dot);
                    }
                }
                let ds = dp;
                let mut dq = vec![0.0; queries * d_kv];
                matmul(&mut dq, mat(&ds, queries, keys), kh, false);
                let mut dk = vec![0.0; keys * d_kv];
                matmul(&mut dk, mat(&ds, queries, keys).t(), qh, false);
                [dq, dk, dv, ds]
            })
            .collect();
        let mut dq = vec![0.0; queries * inner];
        let mut dk = vec![0.0; keys * inner];
        let mut dv = vec![0.0; keys * inner];
        let mut dscores = Vec::with_capacity(heads);
        for (h, [hq, hk, hv, ds]) in per_head.into_iter().enumerate() {
            for (dst, src, rows) in [
                (&mut dq, &hq, queries),
                (&mut dk, &hk, keys),
                (&mut dv, &hv, keys),
            ] {
                for (row, s) in dst.chunks_mut(inner).zip(src.chunks(d_kv)).take(rows) {
                    row[h * d_kv..(h + 1) * d_kv].copy_from_slice(s);
                }
            }
            dscores.push(ds);
        }
        (dq, dk, dv, dscores)
    }

    fn feed_forward(
        &self,
        w: &FeedForwardWeights,
        norm_w: &Weight,
        x: &[f32],
        rows: usize,
    ) -> (FeedForward, Vec<f32>) {
        let norm = norm_forward(x.to_vec(), norm_w, self.config.layer_norm_epsilon);
        let act = self.activation;
        let (pre, gate, hidden, wo) = match w {
            FeedForwardWeights::Plain { wi, wo } => {
                let pre = linear(&norm.output, rows, wi);
                let hidden: Vec<f32> = pre.par_iter().map(|&z| activate(act, z)).collect();
                (pre, None, hidden, wo)
            }
            FeedForwardWeights::Gated { wi_0, wi_1, wo } => {
                let pre = linear(&norm.output, rows, wi_0);
                let gate = linear(&norm.output, rows, wi_1);
                let hidden: Vec<f32> = pre
                    .par_iter()
                    .zip(&gate)
                    .map(|(&z, g)| activate(act, z) * g)
                    .collect();
                (pre, Some(gate), hidden, wo)
            }
        };
        let out = linear(&hidden, rows, wo);
        (
            FeedForward {
                norm,
                pre,
                gate,
                hidden,
            },
            out,
        )
    }

    /// Adds the weight gradients; returns the gradient of the block input through this
    /// sublayer (without the residual).
    fn feed_forward_backward(
        &self,
        w: &FeedForwardWeights,
        norm_w: &Weight,
        state: &FeedForward,
        dout: &[f32],
        grad: &mut Gradient,
    ) -> Vec<f32> {
        let rows = state.norm.rows();
        let act = self.activation;
        let x = &state.norm.output;
        let d = self.config.d_model;
        let mut dnorm = vec![0.0; rows * d];
        match w {
            FeedForwardWeights::Plain { wi, wo } => {
                grad.linear(wo, &state.hidden, dout, rows);
                let mut dpre = vec![0.0; rows * wo.cols];
                linear_input_grad(dout, rows, wo, &mut dpre, false);
                dpre.par_iter_mut()
                    .zip(&state.pre)
                    .for_each(|(g, &z)| *g *= activate_grad(act, z));
                grad.linear(wi, x, &dpre, rows);
                linear_input_grad(&dpre, rows, wi, &mut dnorm, false);
            }
            FeedForwardWeights::Gated { wi_0, wi_1, wo } => {
                let gate = state.gate.as_ref().expect("gated forward keeps the gate");
                grad.linear(wo, &state.hidden, dout, rows);
                let mut dhidden = vec![0.0; rows * wo.cols];
                linear_input_grad(dout, rows, wo, &mut dhidden, false);
                let (dpre, dgate): (Vec<f32>, Vec<f32>) = dhidden
                    .par_iter()
                    .zip(&state.pre)
                    .zip(gate)
                    .map(|((&dh, &z), &g)| (dh * g * activate_grad(act, z), dh * activate(act, z)))
                    .unzip();
                grad.linear(wi_0, x, &dpre, rows);
                grad.linear(wi_1, x, &dgate, rows);
                linear_input_grad(&dpre, rows, wi_0, &mut dnorm, false);
                linear_input_grad(&dgate, rows, wi_1, &mut dnorm, true);
            }
        }
        norm_backward(&state.norm, norm_w, &dnorm, grad)
    }

    /// Self-attention sublayer (or the query side of cross-attention when `cross` gives
    /// the keys/values): returns the state and the sublayer output.
    fn attention(
        &self,
        w: &AttentionWeights,
        norm_w: &Weight,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        cross: Option<&KeyValues>,
    ) -> (Attention, Vec<f32>) {
        let norm = norm_forward(x.to_vec(), norm_w, self.config.layer_norm_epsilon);
        let q = linear(&norm.output, rows, &w.q);
        let own = cross.is_none().then(|| KeyValues {
            k: linear(&norm.output, rows, &w.k),
            v: linear(&norm.output, rows, &w.v),
        });
        let kv = own.as_ref().or(cross).expect("own or cross keys");
        let keys = kv.k.len() / self.config.inner_dim();
        let (probs, context) = self.attend(&q, &kv.k, &kv.v, rows, keys, bias);
        let out = linear(&context, rows, &w.o);
        (
            Attention {
                norm,
                q,
                own,
                probs,
                context,
            },
            out,
        )
    }

    /// Adds weight gradients (and, for cross-attention, the key/value gradients into
    /// `dcross`); returns the input gradient through this sublayer and the score
    /// gradients per head (for the position table).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        w: &AttentionWeights,
        norm_w: &Weight,
        state: &Attention,
        dout: &[f32],
        cross: Option<(&KeyValues, &mut KeyValues)>,
        grad: &mut Gradient,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let rows = state.norm.rows();
        let inner = self.config.inner_dim();
        grad.linear(&w.o, &state.context, dout, rows);
        let mut dcontext = vec![0.0; rows * inner];
        linear_input_grad(dout, rows, &w.o, &mut dcontext, false);
        let kv = state
            .own
            .as_ref()
            .or(cross.as_ref().map(|(c, _)| *c))
            .expect("own or cross keys");
        let keys = kv.k.len() / inner;
        let (dq, dk, dv, dscores) =
            self.attend_backward(&state.q, &kv.k, &kv.v, &state.probs, &dcontext, rows, keys);
        let x = &state.norm.output;
        let mut dnorm = vec![0.0; rows * self.config.d_model];
        grad.linear(&w.q, x, &dq, rows);
        linear_input_grad(&dq, rows, &w.q, &mut dnorm, false);
        match cross {
            Some((_, total)) => {
                add_into(&mut total.k, &dk);
                add_into(&mut total.v, &dv);
            }
            None => {
                grad.linear(&w.k, x, &dk, rows);
                grad.linear(&w.v, x, &dv, rows);
                linear_input_grad(&dk, rows, &w.k, &mut dnorm, true);
                linear_input_grad(&dv, rows, &w.v, &mut dnorm, true);
            }
        }
        (norm_backward(&state.norm, norm_w, &dnorm, grad), dscores)
    }

    /// Position-table gradient from the score gradients of every layer of a stack.
    fn table_backward(
        &self,
        table: &Weight,
        buckets: &[usize],
        dscores: &[Vec<f32>],
        grad: &mut Gradient,
    ) {
        let heads = self.heads();
        let dtable = grad.add(table);
        for (h, ds) in dscores.iter().enumerate() {
            for (&b, &g) in buckets.iter().zip(ds) {
                dtable[b * heads + h] += g;
            }
        }
    }
}

/// The encoder's forward state for one input.
struct EncoderPass {
    ids: Vec<u32>,
    buckets: Vec<usize>,
    layers: Vec<EncoderState>,
    final_norm: Norm,
}

impl T5Backprop {
    fn output_weight(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.shared)
    }

    /// The `d_model^-½` applied to the decoder output before a tied head, else 1.
    fn output_scale(&self) -> f32 {
        if self.config.scales_decoder_output() {
            (self.config.d_model as f32).powf(-0.5)
        } else {
            1.0
        }
    }

    fn encode(&self, input: &[u32]) -> EncoderPass {
        let n = input.len();
        let (bias, buckets) = position_bias(&self.config, &self.encoder_table, n, n, false);
        let mut x = self.embed(input);
        let mut layers = Vec::with_capacity(self.encoder.len());
        for layer in &self.encoder {
            let (attention, out) = self.attention(
                &layer.attention,
                &layer.attention_norm,
                &x,
                n,
                Some(&bias),
                None,
            );
            add_into(&mut x, &out);
            let (feed_forward, out) =
                self.feed_forward(&layer.feed_forward, &layer.feed_forward_norm, &x, n);
            add_into(&mut x, &out);
            layers.push(EncoderState {
                attention,
                feed_forward,
            });
        }
        EncoderPass {
            ids: input.to_vec(),
            buckets,
            layers,
            final_norm: norm_forward(x, &self.encoder_final_norm, self.config.layer_norm_epsilon),
        }
    }

    /// Teacher-forced decoder pass over `target` (shifted right behind the start token).
    fn decode(&self, target: &[u32], cross_keys: &[KeyValues]) -> DecoderPass {
        let config = &self.config;
        let decoder_ids = config.decoder_input(target);
        let m = decoder_ids.len();
        let (bias, buckets) = position_bias(config, &self.decoder_table, m, m, true);
        let mut x = self.embed(&decoder_ids);
        let mut layers = Vec::with_capacity(self.decoder.len());
        for (layer, cross) in self.decoder.iter().zip(cross_keys) {
            let (self_attention, out) = self.attention(
                &layer.self_attention,
                &layer.self_norm,
                &x,
                m,
                Some(&bias),
                None,
            );
            add_into(&mut x, &out);
            let (cross_attention, out) = self.attention(
                &layer.cross_attention,
                &layer.cross_norm,
                &x,
                m,
                None,
                Some(cross),
            );
            add_into(&mut x, &out);
            let (feed_forward, out) =
                self.feed_forward(&layer.feed_forward, &layer.feed_forward_norm, &x, m);
            add_into(&mut x, &out);
            layers.push(DecoderState {
                self_attention,
                cross_attention,
                feed_forward,
            });
        }
        let final_norm = norm_forward(x, &self.decoder_final_norm, config.layer_norm_epsilon);
        let scale = self.output_scale();
        let head_input: Vec<f32> = final_norm.output.iter().map(|v| v * scale).collect();
        let vocab = config.vocab_size;
        let mut log_softmax = linear(&head_input, m, self.output_weight());
        log_softmax.par_chunks_mut(vocab).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            row.iter_mut().for_each(|v| *v -= log_sum);
        });
        DecoderPass {
            decoder_ids,
            buckets,
            layers,
            final_norm,
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
        cross_keys: &[KeyValues],
        dcross: &mut [KeyValues],
        grad: &mut Gradient,
    ) -> Result<()> {
        let (d, vocab) = (self.config.d_model, self.config.vocab_size);
        let m = pass.decoder_ids.len();
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
        let head = self.output_weight();
        grad.linear(head, &pass.head_input, &dlogits, m);
        let mut dx = vec![0.0; m * d];
        linear_input_grad(&dlogits, m, head, &mut dx, false);
        let scale = self.output_scale();
        dx.iter_mut().for_each(|v| *v *= scale);
        let mut dx = norm_backward(&pass.final_norm, &self.decoder_final_norm, &dx, grad);
        let mut dscores = Vec::new();
        for ((layer, state), cross) in self
            .decoder
            .iter()
            .zip(&pass.layers)
            .zip(cross_keys.iter().zip(dcross.iter_mut()))
            .rev()
        {
            self.residual_feed_forward_backward(
                &layer.feed_forward,
                &layer.feed_forward_norm,
                &state.feed_forward,
                &mut dx,
                grad,
            );
            let (dnormed, _) = self.attention_backward(
                &layer.cross_attention,
                &layer.cross_norm,
                &state.cross_attention,
                &dx,
                Some(cross),
                grad,
            );
            add_into(&mut dx, &dnormed);
            self.residual_self_attention_backward(
                &layer.self_attention,
                &layer.self_norm,
                &state.self_attention,
                &mut dx,
                &mut dscores,
                grad,
            );
        }
        // Causal entries have zero probability, so their score gradients are zero.
        self.table_backward(&self.decoder_table, &pass.buckets, &dscores, grad);
        self.embedding_backward(&pass.decoder_ids, &dx, grad);
        Ok(())
    }

    /// Backward through the encoder from the gradient of its output.
    fn encode_backward(&self, pass: &EncoderPass, dencoded: &[f32], grad: &mut Gradient) {
        let mut dx = norm_backward(&pass.final_norm, &self.encoder_final_norm, dencoded, grad);
        let mut dscores = Vec::new();
        for (layer, state) in self.encoder.iter().zip(&pass.layers).rev() {
            self.residual_feed_forward_backward(
                &layer.feed_forward,
                &layer.feed_forward_norm,
                &state.feed_forward,
                &mut dx,
                grad,
            );
            self.residual_self_attention_backward(
                &layer.attention,
                &layer.attention_norm,
                &state.attention,
                &mut dx,
                &mut dscores,
                grad,
            );
        }
        self.table_backward(&self.encoder_table, &pass.buckets, &dscores, grad);
        self.embedding_backward(&pass.ids, &dx, grad);
    }

    /// `dx += ∂ff(norm(x))/∂x · dx` for a residual feed-forward sublayer.
    fn residual_feed_forward_backward(
        &self,
        w: &FeedForwardWeights,
        norm_w: &Weight,
        state: &FeedForward,
        dx: &mut [f32],
        grad: &mut Gradient,
    ) {
        let dnormed = self.feed_forward_backward(w, norm_w, state, dx, grad);
        add_into(dx, &dnormed);
    }

    /// The same for a residual self-attention sublayer; its score gradients (per head)
    /// are summed into `dscores`, shared by the stack's position table.
    fn residual_self_attention_backward(
        &self,
        w: &AttentionWeights,
        norm_w: &Weight,
        state: &Attention,
        dx: &mut [f32],
        dscores: &mut Vec<Vec<f32>>,
        grad: &mut Gradient,
    ) {
        let (dnormed, layer_scores) = self.attention_backward(w, norm_w, state, dx, None, grad);
        add_into(dx, &dnormed);
        if dscores.is_empty() {
            *dscores = layer_scores;
        } else {
            dscores
                .iter_mut()
                .zip(&layer_scores)
                .for_each(|(total, layer)| add_into(total, layer));
        }
    }

    fn embedding_backward(&self, ids: &[u32], dx: &[f32], grad: &mut Gradient) {
        let d = self.config.d_model;
        let dtable = grad.add(&self.shared);
        for (&id, row) in ids.iter().zip(dx.chunks(d)) {
            add_into(&mut dtable[id as usize * d..(id as usize + 1) * d], row);
        }
    }
}

impl ExampleBackprop for T5Backprop {
    fn gradients(
        &self,
        input: &[u32],
        targets: &[Vec<u32>],
        objectives: &mut ChooseObjectives<'_>,
        each: &mut EachGradient<'_>,
    ) -> Result<()> {
        self.config.check_ids(input, "input")?;
        for target in targets {
            self.config.check_ids(target, "target")?;
        }
        let encoder = self.encode(input);
        let n = input.len();
        let encoded = &encoder.final_norm.output;
        let cross_keys: Vec<KeyValues> = self
            .decoder
            .iter()
            .map(|layer| KeyValues {
                k: linear(encoded, n, &layer.cross_attention.k),
                v: linear(encoded, n, &layer.cross_attention.v),
            })
            .collect();
        let passes: Vec<DecoderPass> = targets
            .iter()
            .map(|target| self.decode(target, &cross_keys))
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
            let mut grad = Gradient::new(self.num_params, self.num_weights);
            let inner = self.config.inner_dim();
            let mut dcross: Vec<KeyValues> = (0..self.decoder.len())
                .map(|_| KeyValues {
                    k: vec![0.0; n * inner],
                    v: vec![0.0; n * inner],
                })
                .collect();
            for (pass, picks) in passes.iter().zip(picks) {
                self.decode_backward(pass, picks, &cross_keys, &mut dcross, &mut grad)?;
            }
            // The encoder output feeds every decoder layer's cross-attention keys/values.
            let mut dencoded = vec![0.0; n * self.config.d_model];
            for (layer, d) in self.decoder.iter().zip(&dcross) {
                let attention = &layer.cross_attention;
                grad.linear(&attention.k, encoded, &d.k, n);
                grad.linear(&attention.v, encoded, &d.v, n);
                linear_input_grad(&d.k, n, &attention.k, &mut dencoded, true);
                linear_input_grad(&d.v, n, &attention.v, &mut dencoded, true);
            }
            self.encode_backward(&encoder, &dencoded, &mut grad);
            each(index, grad.values)?;
        }
        Ok(())
    }
}
