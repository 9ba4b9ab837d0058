//! `y = x · Wᵀ (+ b)` with a PyTorch-layout `[out, in]` weight, so checkpoints load and
//! save without transposing.

use std::sync::Arc;

use fisherkit_model::burn;
use fisherkit_model::burn::module::{Module, Param};
use fisherkit_model::burn::tensor::{Device, Tensor};

use crate::cpu::{Binder, Gradient, Weight};
use crate::zeros;

#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

crate::param_list!(Linear {
    param "weight" => weight,
    optional "bias" => bias,
});

impl Linear {
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        Self {
            weight: zeros([d_out, d_in], device),
            bias: bias.then(|| zeros([d_out], device)),
        }
    }

    pub fn d_out(&self) -> usize {
        self.weight.val().dims()[0]
    }

    /// Over the last dimension of `x`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, len, d_in] = x.dims();
        let out = fisherkit_model::linear(x.reshape([batch * len, d_in]), self.weight.val());
        let out = match &self.bias {
            Some(bias) => out + bias.val().unsqueeze::<2>(),
            None => out,
        };
        out.reshape([batch, len, self.d_out()])
    }

    /// The CPU mirror. `transposed`: keep a transposed copy of the weight for the forward
    /// product (projections; not the large output head).
    pub fn bind(&self, binder: &Binder, transposed: bool) -> CpuLinear {
        CpuLinear {
            weight: binder.weight(&self.weight),
            bias: self.bias.as_ref().map(|b| binder.weight(b)),
            transposed,
        }
    }
}

pub struct CpuLinear {
    pub weight: Arc<Weight>,
    bias: Option<Arc<Weight>>,
    transposed: bool,
}

impl CpuLinear {
    /// A weight bound elsewhere used as a bias-free linear map (a tied output head).
    pub fn from_weight(weight: Arc<Weight>, transposed: bool) -> Self {
        Self {
            weight,
            bias: None,
            transposed,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.cols
    }

    pub fn d_out(&self) -> usize {
        self.weight.rows
    }

    /// `[rows, d_in]` → `[rows, d_out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = self.weight.product(x, rows, self.transposed);
        if let Some(bias) = &self.bias {
            for row in out.chunks_mut(self.d_out()) {
                crate::cpu::add_into(row, bias.values());
            }
        }
        out
    }

    /// Adds the weight (and bias) gradient of the forward over `x` given `dy`, and
    /// writes (or with `accumulate` adds) the input gradient into `dx`.
    pub fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        rows: usize,
        grad: &mut Gradient,
        dx: &mut [f32],
        accumulate: bool,
    ) {
        self.backward_params(x, dy, rows, grad);
        self.weight.input_grad(dy, rows, dx, accumulate);
    }

    /// Only the parameter gradients (the input needs none, e.g. token embeddings).
    pub fn backward_params(&self, x: &[f32], dy: &[f32], rows: usize, grad: &mut Gradient) {
        grad.linear(&self.weight, x, dy, rows);
        if let Some(bias) = &self.bias {
            let db = grad.add(bias);
            for row in dy.chunks(self.d_out()) {
                crate::cpu::add_into(db, row);
            }
        }
    }
}
