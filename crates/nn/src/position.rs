//! Position information: T5's relative position buckets (a learned bias per head added to
//! the attention scores), absolute learned or sinusoidal embeddings (added to the token
//! embeddings at the bottom of a stack), and rotary embeddings (queries and keys rotated
//! inside attention).

use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use fisherkit_model::burn;
use fisherkit_model::burn::module::{Module, Param};
use fisherkit_model::burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cpu::{Binder, Gradient, Weight};
use crate::zeros;

/// `position_embedding_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionKind {
    /// T5's relative position buckets (the default).
    Relative,
    /// A learned `[max_positions, d_model]` table added to the token embeddings.
    Absolute,
    /// The fixed sin/cos table of Vaswani et al. added to the token embeddings.
    Sinusoidal,
    /// Queries and keys rotated by position (RoFormer, HF Llama's `rotate_half`).
    Rotary,
}

pub const POSITION_KINDS: &[&str] = &["relative", "absolute", "sinusoidal", "rotary"];

impl PositionKind {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "relative" => PositionKind::Relative,
            "absolute" => PositionKind::Absolute,
            "sinusoidal" => PositionKind::Sinusoidal,
            "rotary" => PositionKind::Rotary,
            other => bail!(
                "unknown position_embedding_type {other:?}; valid values: {}",
                POSITION_KINDS.join(", ")
            ),
        })
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

/// Which bucket each (query, key) pair falls in.
#[derive(Clone, Copy, Debug)]
pub struct Buckets {
    pub num_buckets: usize,
    pub max_distance: usize,
    /// Encoder (both directions) or decoder (only earlier keys are told apart).
    pub bidirectional: bool,
}

impl Buckets {
    /// Row-major `[queries, keys]` buckets for queries at `first_query..` and keys at
    /// `0..keys`.
    fn of(self, first_query: usize, queries: usize, keys: usize) -> Vec<usize> {
        let mut buckets = Vec::with_capacity(queries * keys);
        for q in first_query..first_query + queries {
            for k in 0..keys {
                buckets.push(relative_position_bucket(
                    k as i64 - q as i64,
                    self.bidirectional,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        buckets
    }
}

/// T5's learned relative position bias: a `[num_buckets, heads]` table, added to the
/// attention scores of every layer of a stack.
#[derive(Module, Debug)]
pub struct RelativeBias {
    pub weight: Param<Tensor<2>>,
    #[module(skip)]
    buckets: Buckets,
}

crate::param_list!(RelativeBias { param "weight" => weight, });

impl RelativeBias {
    pub fn new(buckets: Buckets, heads: usize, device: &Device) -> Self {
        Self {
            weight: zeros([buckets.num_buckets, heads], device),
            buckets,
        }
    }

    /// `[1, heads, queries, keys]` for queries at `first_query..` and keys at `0..keys`.
    pub fn bias(&self, first_query: usize, queries: usize, keys: usize) -> Tensor<4> {
        let table = self.weight.val();
        let heads = table.dims()[1];
        let buckets: Vec<i64> = self
            .buckets
            .of(first_query, queries, keys)
            .into_iter()
            .map(|b| b as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(buckets, [queries * keys]),
            &table.device(),
        );
        table
            .select(0, index)
            .reshape([queries, keys, heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }

    pub fn bind(&self, binder: &Binder) -> CpuRelativeBias {
        CpuRelativeBias {
            weight: binder.weight(&self.weight),
            buckets: self.buckets,
        }
    }
}

pub struct CpuRelativeBias {
    weight: Arc<Weight>,
    buckets: Buckets,
}

impl CpuRelativeBias {
    fn heads(&self) -> usize {
        self.weight.cols
    }

    /// The bias `[heads, queries, keys]` of queries and keys at `0..`, and the buckets
    /// for [`backward`](Self::backward).
    pub fn forward(&self, queries: usize, keys: usize) -> (Vec<f32>, Vec<usize>) {
        let heads = self.heads();
        let table = self.weight.values();
        let buckets = self.buckets.of(0, queries, keys);
        let mut bias = vec![0.0; heads * queries * keys];
        for h in 0..heads {
            for (i, &b) in buckets.iter().enumerate() {
                bias[h * queries * keys + i] = table[b * heads + h];
            }
        }
        (bias, buckets)
    }

    /// Adds the table gradient from the score gradients `[heads][queries * keys]`.
    pub fn backward(&self, buckets: &[usize], dscores: &[Vec<f32>], grad: &mut Gradient) {
        let heads = self.heads();
        let dtable = grad.add(&self.weight);
        for (h, ds) in dscores.iter().enumerate() {
            for (&b, &g) in buckets.iter().zip(ds) {
                dtable[b * heads + h] += g;
            }
        }
    }
}

/// The sinusoidal table row of position `pos` (`d` values: sin at even, cos at odd
/// indices, frequencies 10000^(−2i/d)).
fn sinusoid(pos: usize, d: usize) -> impl Iterator<Item = f32> {
    (0..d).map(move |j| {
        let i = (j / 2) as f64;
        let angle = pos as f64 * 10000f64.powf(-2.0 * i / d as f64);
        (if j % 2 == 0 { angle.sin() } else { angle.cos() }) as f32
    })
}

/// An error when a sequence of `len` tokens is longer than absolute positions reach
/// (the burn and the CPU pass share it).
fn check_length(kind: PositionKind, max_positions: usize, len: usize) -> Result<()> {
    if kind == PositionKind::Absolute {
        ensure!(
            len <= max_positions,
            "sequence of {len} tokens is longer than max_position_embeddings ({max_positions})"
        );
    }
    Ok(())
}

/// Positions added to a stack's input embeddings (absolute learned or sinusoidal; none
/// for relative and rotary positions, which act inside attention).
#[derive(Module, Debug)]
pub struct Positions {
    /// The learned `[max_positions, d_model]` table of absolute positions.
    pub absolute: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub kind: PositionKind,
    #[module(skip)]
    max_positions: usize,
}

crate::param_list!(Positions { optional "embed_positions.weight" => absolute, });

impl Positions {
    pub fn new(kind: PositionKind, max_positions: usize, d_model: usize, device: &Device) -> Self {
        Self {
            absolute: (kind == PositionKind::Absolute)
                .then(|| zeros([max_positions, d_model], device)),
            kind,
            max_positions,
        }
    }

    /// An error when a sequence is longer than the absolute positions reach.
    pub fn check_length(&self, len: usize) -> Result<()> {
        check_length(self.kind, self.max_positions, len)
    }

    /// `x` `[batch, len, d]` at positions `first..first + len`, plus their embeddings.
    pub fn forward(&self, x: Tensor<3>, first: usize) -> Tensor<3> {
        let [_, len, d] = x.dims();
        match self.kind {
            PositionKind::Absolute => {
                let table = self.absolute.as_ref().expect("absolute table").val();
                x + table.narrow(0, first, len).unsqueeze::<3>()
            }
            PositionKind::Sinusoidal => {
                let values: Vec<f32> = (first..first + len).flat_map(|p| sinusoid(p, d)).collect();
                let table = Tensor::<2>::from_data(
                    TensorData::new(values, [len, d]),
                    (&x.device(), x.dtype()),
                );
                x + table.unsqueeze::<3>()
            }
            PositionKind::Relative | PositionKind::Rotary => x,
        }
    }

    pub fn bind(&self, binder: &Binder) -> CpuPositions {
        CpuPositions {
            absolute: self.absolute.as_ref().map(|p| binder.weight(p)),
            kind: self.kind,
            max_positions: self.max_positions,
        }
    }
}

pub struct CpuPositions {
    absolute: Option<Arc<Weight>>,
    kind: PositionKind,
    max_positions: usize,
}

impl CpuPositions {
    /// See [`Positions::check_length`].
    pub fn check_length(&self, len: usize) -> Result<()> {
        check_length(self.kind, self.max_positions, len)
    }

    /// Adds the embeddings of positions `0..rows` to `x` `[rows, d]`.
    pub fn forward(&self, x: &mut [f32], d: usize) {
        match (self.kind, &self.absolute) {
            (PositionKind::Absolute, Some(table)) => {
                crate::cpu::add_into(x, &table.values()[..x.len()]);
            }
            (PositionKind::Sinusoidal, _) => {
                for (pos, row) in x.chunks_mut(d).enumerate() {
                    row.iter_mut()
                        .zip(sinusoid(pos, d))
                        .for_each(|(v, s)| *v += s);
                }
            }
            _ => {}
        }
    }

    /// Adds the table gradient (absolute positions) from the input gradient `dx`.
    pub fn backward(&self, dx: &[f32], grad: &mut Gradient) {
        if let Some(table) = &self.absolute {
            crate::cpu::add_into(&mut grad.add(table)[..dx.len()], dx);
        }
    }
}

/// Rotary position embeddings on `[.., d]` head vectors (HF Llama's `rotate_half`
/// layout): pairs `(i, i + d/2)` are rotated by `pos · θ^(−2i/d)`.
#[derive(Clone, Copy, Debug)]
pub struct Rotary {
    pub theta: f64,
}

impl Rotary {
    /// `cos` and `sin` `[len, d]` for positions `first..first + len` (each half repeats
    /// the frequencies).
    fn tables(self, first: usize, len: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        let half = d / 2;
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for pos in first..first + len {
            for j in 0..d {
                let i = (j % half) as f64;
                let angle = pos as f64 * self.theta.powf(-2.0 * i / d as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Rotates `x` `[batch, heads, len, d]` at positions `first..`.
    pub fn forward(self, x: Tensor<4>, first: usize) -> Tensor<4> {
        let [_, _, len, d] = x.dims();
        let half = d / 2;
        let (cos, sin) = self.tables(first, len, d);
        let (device, dtype) = (x.device(), x.dtype());
        let table = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [len, d]), (&device, dtype)).unsqueeze::<4>()
        };
        let rotated = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half).neg(),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        x * table(cos) + rotated * table(sin)
    }

    /// Rotates (or with `inverse`, rotates back: the backward pass, as the rotation is
    /// orthogonal) the `[rows, heads * d]` matrix `x` in place, row r at position r.
    pub fn apply_cpu(self, x: &mut [f32], rows: usize, d: usize, inverse: bool) {
        let half = d / 2;
        let (cos, sin) = self.tables(0, rows, d);
        let sign = if inverse { -1.0 } else { 1.0 };
        let width = x.len() / rows;
        for (r, row) in x.chunks_mut(width).enumerate() {
            let (cos, sin) = (&cos[r * d..(r + 1) * d], &sin[r * d..(r + 1) * d]);
            for head in row.chunks_mut(d) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    let s = sign * sin[i];
                    head[i] = a * cos[i] - b * s;
                    head[i + half] = b * cos[i] + a * s;
                }
            }
        }
    }
}
