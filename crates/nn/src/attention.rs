//! Multi-head and grouped-query dot-product attention: self or cross, with an optional
//! T5 relative position bias (owned by the stack's first layer, as in HF checkpoints),
//! rotary queries/keys, additive masks (padding, causal, prefix), and the incremental
//! key/value cache decoding uses.

use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::activation::softmax;
use fisherkit_model::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::cpu::{mat, matmul, Binder, Gradient};
use crate::linear::{CpuLinear, Linear};
use crate::position::{CpuRelativeBias, RelativeBias, Rotary};
use crate::Dropout;

/// Added to attention scores where a key must not be attended to. exp() of it
/// underflows to exactly 0, as HF's `finfo.min` does.
pub const MASKED: f32 = -1e9;

/// The 1/0 token mask `[batch, len]` of an additive padding mask `[batch, 1, 1, len]`
/// (0 for tokens, [`MASKED`] for padding), in the mask's dtype.
pub fn token_mask(additive_mask: Tensor<4>) -> Tensor<2> {
    let [rows, _, _, len] = additive_mask.dims();
    let dtype = additive_mask.dtype();
    additive_mask
        .reshape([rows, len])
        .equal_elem(0.0)
        .float()
        .cast(dtype)
}

/// Checkpoint names (prefixes) of an attention's parameters, e.g. T5: `q.`, `k.`, `v.`,
/// `o.`, `relative_attention_bias.`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub relative_bias: &'static str,
}

/// The shape of an attention: `heads` query heads of width `d_kv`, sharing `kv_heads`
/// key/value heads (grouped-query attention when fewer), scores scaled by `scale` (T5:
/// 1, folded into the initialisation; otherwise `d_kv^-½`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_kv: usize,
    pub scale: f64,
    pub bias: bool,
    pub rotary: Option<Rotary>,
}

impl AttentionShape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// The stack's relative position bias, on the first layer's self-attention.
    pub relative_bias: Option<RelativeBias>,
    #[module(skip)]
    pub shape: AttentionShape,
    #[module(skip)]
    names: AttentionNames,
}

crate::param_list!(Attention {
    child [names.q] => q,
    child [names.k] => k,
    child [names.v] => v,
    child [names.o] => o,
    optional_child [names.relative_bias] => relative_bias,
});

/// Keys and values split into key/value heads: `[batch, kv_heads, len, d_kv]` each (keys
/// already rotated when positions are rotary).
#[derive(Clone, Debug)]
pub struct KeyValue {
    pub keys: Tensor<4>,
    pub values: Tensor<4>,
}

impl KeyValue {
    /// Append one decoding step's keys/values along the length dimension.
    pub fn append(&mut self, step: KeyValue) {
        self.keys = Tensor::cat(vec![self.keys.clone(), step.keys], 2);
        self.values = Tensor::cat(vec![self.values.clone(), step.values], 2);
    }

    /// Keep/duplicate rows (beam reordering).
    pub fn select_rows(&self, rows: &Tensor<1, Int>) -> KeyValue {
        KeyValue {
            keys: self.keys.clone().select(0, rows.clone()),
            values: self.values.clone().select(0, rows.clone()),
        }
    }
}

/// Additive `[1, 1, queries, keys]` mask for queries at `first_query..`: a key is visible
/// when it is not after the query, or (prefix LM) when it lies before `prefix`.
pub fn causal_mask(
    first_query: usize,
    queries: usize,
    keys: usize,
    prefix: usize,
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    let visibility = Mask::Prefix(prefix);
    let mut mask = Vec::with_capacity(queries * keys);
    for q in first_query..first_query + queries {
        for k in 0..keys {
            mask.push(if visibility.hides(q, k) {
                MASKED
            } else {
                0.0f32
            });
        }
    }
    Tensor::from_data(
        TensorData::new(mask, [1, 1, queries, keys]),
        (device, dtype),
    )
}

/// Additive `[batch, 1, len, len]` self-attention mask of a padded batch of decoder-only
/// sequences: sequence `b` has `lengths[b]` tokens (later keys are padding) and sees as
/// `masks[b]` says.
pub fn lm_mask(
    lengths: &[usize],
    masks: &[Mask],
    len: usize,
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    let mut values = Vec::with_capacity(lengths.len() * len * len);
    for (&length, &visibility) in lengths.iter().zip(masks) {
        for q in 0..len {
            for k in 0..len {
                let hidden = k >= length || visibility.hides(q, k);
                values.push(if hidden { MASKED } else { 0.0f32 });
            }
        }
    }
    Tensor::from_data(
        TensorData::new(values, [lengths.len(), 1, len, len]),
        (device, dtype),
    )
}

impl Attention {
    pub fn new(
        shape: AttentionShape,
        relative_bias: Option<RelativeBias>,
        names: AttentionNames,
        device: &Device,
    ) -> Self {
        let inner = shape.heads * shape.d_kv;
        let kv_inner = shape.kv_heads * shape.d_kv;
        let d = shape.d_model;
        Self {
            q: Linear::new(d, inner, shape.bias, device),
            k: Linear::new(d, kv_inner, shape.bias, device),
            v: Linear::new(d, kv_inner, shape.bias, device),
            o: Linear::new(inner, d, shape.bias, device),
            relative_bias,
            shape,
            names,
        }
    }

    fn split_heads(&self, x: Tensor<3>, heads: usize) -> Tensor<4> {
        let [batch, len, _] = x.dims();
        x.reshape([batch, len, heads, self.shape.d_kv])
            .swap_dims(1, 2)
    }

    /// Project `x` (the normed input at positions `first..`, or the encoder output) to
    /// keys and values.
    pub fn key_value(&self, x: Tensor<3>, first: usize) -> KeyValue {
        let kv_heads = self.shape.kv_heads;
        let keys = self.split_heads(self.k.forward(x.clone()), kv_heads);
        KeyValue {
            keys: match self.shape.rotary {
                Some(rotary) => rotary.forward(keys, first),
                None => keys,
            },
            values: self.split_heads(self.v.forward(x), kv_heads),
        }
    }

    /// `[batch, kv_heads, len, d]` → `[batch, heads, len, d]`, each key/value head
    /// serving its group of query heads.
    fn expand_groups(&self, x: Tensor<4>) -> Tensor<4> {
        let group = self.shape.group();
        if group == 1 {
            return x;
        }
        let [batch, kv_heads, len, d] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, group, len, d])
            .reshape([batch, kv_heads * group, len, d])
    }

    /// `softmax(scale · q kᵀ + bias) v` for queries `x` at positions `first..`, then the
    /// output projection. `bias` broadcasts to `[batch, heads, queries, keys]` and already
    /// holds positions and masks.
    pub fn attend(
        &self,
        x: Tensor<3>,
        kv: &KeyValue,
        bias: Tensor<4>,
        first: usize,
        dropout: Dropout,
    ) -> Tensor<3> {
        let [batch, len, _] = x.dims();
        let mut q = self.split_heads(self.q.forward(x), self.shape.heads);
        if let Some(rotary) = self.shape.rotary {
            q = rotary.forward(q, first);
        }
        if self.shape.scale != 1.0 {
            q = q * self.shape.scale;
        }
        let keys = self.expand_groups(kv.keys.clone());
        let values = self.expand_groups(kv.values.clone());
        let scores = q.matmul(keys.swap_dims(2, 3)) + bias;
        let weights = dropout.apply(softmax(scores, 3));
        let context = weights.matmul(values).swap_dims(1, 2);
        let inner = self.shape.heads * self.shape.d_kv;
        self.o.forward(context.reshape([batch, len, inner]))
    }

    pub fn bind(&self, binder: &Binder) -> CpuAttention {
        CpuAttention {
            q: self.q.bind(binder, true),
            k: self.k.bind(binder, true),
            v: self.v.bind(binder, true),
            o: self.o.bind(binder, true),
            relative_bias: self.relative_bias.as_ref().map(|b| b.bind(binder)),
            shape: self.shape,
        }
    }
}

pub struct CpuAttention {
    q: CpuLinear,
    k: CpuLinear,
    v: CpuLinear,
    o: CpuLinear,
    pub relative_bias: Option<CpuRelativeBias>,
    shape: AttentionShape,
}

/// Keys and values `[len, kv_heads * d_kv]` (or their gradients).
pub struct KeyValues {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// What the backward pass needs of one attention.
pub struct AttentionState {
    q: Vec<f32>,
    /// Keys/values of a self-attention (cross-attention's come from outside).
    own: Option<KeyValues>,
    /// Attention weights per head, `[queries, keys]` each.
    probs: Vec<Vec<f32>>,
    context: Vec<f32>,
}

/// Which keys a query sees, for one unpadded sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    All,
    /// Keys up to the query's own position.
    Causal,
    /// A prefix LM: the first `n` positions see each other, every later one is causal.
    Prefix(usize),
}

impl Mask {
    /// Whether query position `query` must not see key position `key` (the one
    /// definition the burn masks, [`causal_mask`] and [`lm_mask`], agree with).
    pub fn hides(self, query: usize, key: usize) -> bool {
        match self {
            Mask::All => false,
            Mask::Causal => key > query,
            Mask::Prefix(prefix) => key > query && key >= prefix,
        }
    }
}

impl CpuAttention {
    fn inner(&self) -> usize {
        self.shape.heads * self.shape.d_kv
    }

    fn kv_inner(&self) -> usize {
        self.shape.kv_heads * self.shape.d_kv
    }

    /// Keys and values of `x` `[rows, d_model]` at positions `0..rows`.
    pub fn key_values(&self, x: &[f32], rows: usize) -> KeyValues {
        let mut k = self.k.forward(x, rows);
        if let Some(rotary) = self.shape.rotary {
            rotary.apply_cpu(&mut k, rows, self.shape.d_kv, false);
        }
        KeyValues {
            k,
            v: self.v.forward(x, rows),
        }
    }

    /// Adds the key/value projections' gradients given `dkv` (rotated-key gradients) and
    /// adds their input gradient into `dx`.
    pub fn key_values_backward(
        &self,
        x: &[f32],
        rows: usize,
        mut dkv: KeyValues,
        grad: &mut Gradient,
        dx: &mut [f32],
    ) {
        if let Some(rotary) = self.shape.rotary {
            rotary.apply_cpu(&mut dkv.k, rows, self.shape.d_kv, true);
        }
        self.k.backward(x, &dkv.k, rows, grad, dx, true);
        self.v.backward(x, &dkv.v, rows, grad, dx, true);
    }

    /// Attention of queries from `x` `[rows, d_model]` over their own keys (`cross`
    /// `None`) or over `cross`; `bias` `[heads, rows, keys]` is added to the scores.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        mask: Mask,
        cross: Option<&KeyValues>,
    ) -> (AttentionState, Vec<f32>) {
        let mut q = self.q.forward(x, rows);
        if let Some(rotary) = self.shape.rotary {
            rotary.apply_cpu(&mut q, rows, self.shape.d_kv, false);
        }
        let own = cross.is_none().then(|| self.key_values(x, rows));
        let kv = own.as_ref().or(cross).expect("own or cross keys");
        let keys = kv.k.len() / self.kv_inner();
        let (probs, context) = self.attend(&q, kv, rows, keys, bias, mask);
        let out = self.o.forward(&context, rows);
        (
            AttentionState {
                q,
                own,
                probs,
                context,
            },
            out,
        )
    }

    /// Head `h`'s columns of a `[rows, heads·d_kv]` query matrix, or of the key/value
    /// head serving it in a `[rows, kv_heads·d_kv]` matrix.
    fn query_head<'a>(&self, x: &'a [f32], rows: usize, h: usize) -> crate::cpu::View<'a> {
        let d_kv = self.shape.d_kv;
        mat(x, rows, self.inner()).columns(h * d_kv, d_kv)
    }

    fn kv_head<'a>(&self, x: &'a [f32], rows: usize, h: usize) -> crate::cpu::View<'a> {
        let d_kv = self.shape.d_kv;
        let g = h / self.shape.group();
        mat(x, rows, self.kv_inner()).columns(g * d_kv, d_kv)
    }

    /// `softmax(scale · q kᵀ + bias) v` per head: the weights per head and the context
    /// `[queries, inner]`.
    fn attend(
        &self,
        q: &[f32],
        kv: &KeyValues,
        queries: usize,
        keys: usize,
        bias: Option<&[f32]>,
        mask: Mask,
    ) -> (Vec<Vec<f32>>, Vec<f32>) {
        let (heads, d_kv) = (self.shape.heads, self.shape.d_kv);
        let scale = self.shape.scale as f32;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let mut scores = vec![0.0; queries * keys];
                matmul(
                    &mut scores,
                    self.query_head(q, queries, h),
                    self.kv_head(&kv.k, keys, h).t(),
                    false,
                );
                for (i, row) in scores.chunks_mut(keys).enumerate() {
                    for (j, s) in row.iter_mut().enumerate() {
                        *s *= scale;
                        if let Some(b) = bias {
                            *s += b[(h * queries + i) * keys + j];
                        }
                        if mask.hides(i, j) {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in row.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= sum);
                }
                let mut context = vec![0.0; queries * d_kv];
                matmul(
                    &mut context,
                    mat(&scores, queries, keys),
                    self.kv_head(&kv.v, keys, h),
                    false,
                );
                (scores, context)
            })
            .collect();
        let inner = self.inner();
        let mut context = vec![0.0; queries * inner];
        for (h, (_, ctx)) in per_head.iter().enumerate() {
            for (row, src) in context.chunks_mut(inner).zip(ctx.chunks(d_kv)) {
                row[h * d_kv..(h + 1) * d_kv].copy_from_slice(src);
            }
        }
        (per_head.into_iter().map(|(p, _)| p).collect(), context)
    }

    /// Adds the weight gradients (for cross-attention, the key/value gradients into
    /// `dcross` instead of the key/value projections'); returns the input gradient and
    /// the score gradients per head (for a relative position table).
    pub fn backward(
        &self,
        x: &[f32],
        state: &AttentionState,
        dout: &[f32],
        cross: Option<(&KeyValues, &mut KeyValues)>,
        grad: &mut Gradient,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let rows = state.q.len() / self.inner();
        let mut dcontext = vec![0.0; rows * self.inner()];
        self.o
            .backward(&state.context, dout, rows, grad, &mut dcontext, false);
        let kv = state
            .own
            .as_ref()
            .or(cross.as_ref().map(|(c, _)| *c))
            .expect("own or cross keys");
        let keys = kv.k.len() / self.kv_inner();
        let (mut dq, dkv, dscores) =
            self.attend_backward(&state.q, kv, &state.probs, &dcontext, rows, keys);
        if let Some(rotary) = self.shape.rotary {
            rotary.apply_cpu(&mut dq, rows, self.shape.d_kv, true);
        }
        let mut dx = vec![0.0; rows * self.q.d_in()];
        self.q.backward(x, &dq, rows, grad, &mut dx, false);
        match cross {
            Some((_, total)) => {
                crate::cpu::add_into(&mut total.k, &dkv.k);
                crate::cpu::add_into(&mut total.v, &dkv.v);
            }
            None => self.key_values_backward(x, rows, dkv, grad, &mut dx),
        }
        (dx, dscores)
    }

    /// Backward of [`attend`](Self::attend): `(dq, dk/dv, dscores per head)`, the score
    /// gradients before scaling (what a bias added to the scores receives).
    fn attend_backward(
        &self,
        q: &[f32],
        kv: &KeyValues,
        probs: &[Vec<f32>],
        dcontext: &[f32],
        queries: usize,
        keys: usize,
    ) -> (Vec<f32>, KeyValues, Vec<Vec<f32>>) {
        let (heads, d_kv) = (self.shape.heads, self.shape.d_kv);
        let scale = self.shape.scale as f32;
        let per_head: Vec<[Vec<f32>; 4]> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let (qh, kh, vh) = (
                    self.query_head(q, queries, h),
                    self.kv_head(&kv.k, keys, h),
                    self.kv_head(&kv.v, keys, h),
                );
                let dctx = self.query_head(dcontext, queries, h);
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
                if scale != 1.0 {
                    dq.iter_mut().for_each(|v| *v *= scale);
                    dk.iter_mut().for_each(|v| *v *= scale);
                }
                [dq, dk, dv, ds]
            })
            .collect();
        let (inner, kv_inner) = (self.inner(), self.kv_inner());
        let group = self.shape.group();
        let mut dq = vec![0.0; queries * inner];
        let mut dkv = KeyValues {
            k: vec![0.0; keys * kv_inner],
            v: vec![0.0; keys * kv_inner],
        };
        let mut dscores = Vec::with_capacity(heads);
        for (h, [hq, hk, hv, ds]) in per_head.into_iter().enumerate() {
            for (row, s) in dq.chunks_mut(inner).zip(hq.chunks(d_kv)) {
                row[h * d_kv..(h + 1) * d_kv].copy_from_slice(s);
            }
            // Heads of one group share a key/value head: their gradients add up.
            let g = h / group;
            for (dst, src) in [(&mut dkv.k, &hk), (&mut dkv.v, &hv)] {
                for (row, s) in dst.chunks_mut(kv_inner).zip(src.chunks(d_kv)) {
                    crate::cpu::add_into(&mut row[g * d_kv..(g + 1) * d_kv], s);
                }
            }
            dscores.push(ds);
        }
        (dq, dkv, dscores)
    }
}
