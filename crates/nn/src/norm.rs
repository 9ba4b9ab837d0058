//! One normalisation over the last dimension: `w ⊙ (x − μ) / √(var + ε) (+ b)`.
//! RMSNorm (T5LayerNorm) is the special case without the mean and the bias; LayerNorm
//! has both. Statistics are computed in at least f32 whatever the parameter dtype (as HF
//! does for bf16/f16 T5; f64 models keep f64, which gradient checks rely on).

use std::sync::Arc;

use anyhow::{bail, Result};
use fisherkit_model::burn;
use fisherkit_model::burn::module::{Module, Param};
use fisherkit_model::burn::tensor::{DType, Device, Tensor};

use crate::cpu::{Binder, Gradient, Weight};
use crate::{ones, zeros};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// Root mean square, no mean subtraction, no bias (T5, Llama).
    Rms,
    /// Mean and variance, with a bias (BERT, the original Transformer).
    Layer,
}

impl NormKind {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "rms" => NormKind::Rms,
            "layer" => NormKind::Layer,
            other => bail!("unknown norm {other:?}: expected rms or layer"),
        })
    }
}

#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    eps: f64,
}

crate::param_list!(Norm {
    param "weight" => weight,
    optional "bias" => bias,
});

impl Norm {
    /// Weight 1, bias 0: the identity on normalised inputs.
    pub fn new(kind: NormKind, d: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: ones([d], device),
            bias: (kind == NormKind::Layer).then(|| zeros([d], device)),
            eps,
        }
    }

    fn removes_mean(&self) -> bool {
        self.bias.is_some()
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = x.dtype();
        let statistics = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let mut x = x.cast(statistics);
        if self.removes_mean() {
            x = x.clone() - x.mean_dim(2);
        }
        let variance = (x.clone() * x.clone()).mean_dim(2);
        let normed = (x * (variance + self.eps).sqrt().recip()).cast(dtype);
        let out = normed * self.weight.val().unsqueeze::<3>();
        match &self.bias {
            Some(bias) => out + bias.val().unsqueeze::<3>(),
            None => out,
        }
    }

    pub fn bind(&self, binder: &Binder) -> CpuNorm {
        CpuNorm {
            weight: binder.weight(&self.weight),
            bias: self.bias.as_ref().map(|b| binder.weight(b)),
            eps: self.eps as f32,
        }
    }
}

pub struct CpuNorm {
    weight: Arc<Weight>,
    bias: Option<Arc<Weight>>,
    eps: f32,
}

/// What the backward pass needs: the normalised input `x̂` and `1/σ` per row.
pub struct NormState {
    normalized: Vec<f32>,
    inv_std: Vec<f32>,
    pub output: Vec<f32>,
}

impl CpuNorm {
    pub fn forward(&self, x: &[f32]) -> NormState {
        let d = self.weight.cols;
        let weight = self.weight.values();
        let bias = self.bias.as_ref().map(|b| b.values());
        let mut normalized = vec![0.0; x.len()];
        let mut output = vec![0.0; x.len()];
        let inv_std = x
            .chunks(d)
            .zip(normalized.chunks_mut(d))
            .zip(output.chunks_mut(d))
            .map(|((row, xhat), out)| {
                let mean = if bias.is_some() {
                    row.iter().sum::<f32>() / d as f32
                } else {
                    0.0
                };
                let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let r = 1.0 / (variance + self.eps).sqrt();
                for j in 0..d {
                    xhat[j] = (row[j] - mean) * r;
                    out[j] = weight[j] * xhat[j] + bias.map_or(0.0, |b| b[j]);
                }
                r
            })
            .collect();
        NormState {
            normalized,
            inv_std,
            output,
        }
    }

    /// Adds the weight (and bias) gradients into `grad` and returns the input gradient:
    /// with `g = dy ⊙ w`, `dx = r (g − mean(g) − x̂ mean(g ⊙ x̂))` (no `mean(g)` for RMS).
    pub fn backward(&self, state: &NormState, dy: &[f32], grad: &mut Gradient) -> Vec<f32> {
        let d = self.weight.cols;
        let weight = self.weight.values();
        {
            let dw = grad.add(&self.weight);
            for (xhat, dy) in state.normalized.chunks(d).zip(dy.chunks(d)) {
                for j in 0..d {
                    dw[j] += dy[j] * xhat[j];
                }
            }
        }
        if let Some(bias) = &self.bias {
            let db = grad.add(bias);
            for dy in dy.chunks(d) {
                crate::cpu::add_into(db, dy);
            }
        }
        let removes_mean = self.bias.is_some();
        let mut dx = vec![0.0; dy.len()];
        for (((xhat, dy), dx), &r) in state
            .normalized
            .chunks(d)
            .zip(dy.chunks(d))
            .zip(dx.chunks_mut(d))
            .zip(&state.inv_std)
        {
            let (mut g_mean, mut gx_mean) = (0.0f32, 0.0f32);
            for j in 0..d {
                let g = dy[j] * weight[j];
                g_mean += g;
                gx_mean += g * xhat[j];
            }
            let g_mean = if removes_mean { g_mean / d as f32 } else { 0.0 };
            let gx_mean = gx_mean / d as f32;
            for j in 0..d {
                dx[j] = r * (dy[j] * weight[j] - g_mean - xhat[j] * gx_mean);
            }
        }
        dx
    }
}
