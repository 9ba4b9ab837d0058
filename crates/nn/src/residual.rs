//! The residual connection around a sublayer `f`: `x + f(x)`; ReZero's `x + α f(x)` with
//! a learnable scalar α initialised to 0 (Bachlechner et al.); or Fixup's
//! `x + m · f(x + a) + b` with learnable scalars m (initialised to 1) and biases a, b
//! (initialised to 0) (Zhang et al.; the initialisation of `f`'s weights is the
//! architecture's).

use std::sync::Arc;

use fisherkit_model::burn;
use fisherkit_model::burn::module::{Module, Param};
use fisherkit_model::burn::tensor::{Device, Tensor};

use crate::cpu::{Binder, Gradient, Weight};
use crate::zeros;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidualKind {
    Plain,
    ReZero,
    Fixup,
}

#[derive(Module, Debug)]
pub struct Residual {
    /// ReZero's α or Fixup's multiplier (`[1]`).
    pub scale: Option<Param<Tensor<1>>>,
    /// Fixup's scalar bias added to the branch input.
    pub bias_in: Option<Param<Tensor<1>>>,
    /// Fixup's scalar bias added to the branch output.
    pub bias_out: Option<Param<Tensor<1>>>,
}

crate::param_list!(Residual {
    optional "residual_scale" => scale,
    optional "residual_bias_in" => bias_in,
    optional "residual_bias_out" => bias_out,
});

fn scalar(p: &Param<Tensor<1>>) -> Tensor<3> {
    p.val().unsqueeze::<3>()
}

impl Residual {
    /// Parameters start at zero: initialisers set Fixup's multiplier to 1.
    pub fn new(kind: ResidualKind, device: &Device) -> Self {
        let fixup = kind == ResidualKind::Fixup;
        Self {
            scale: (kind != ResidualKind::Plain).then(|| zeros([1], device)),
            bias_in: fixup.then(|| zeros([1], device)),
            bias_out: fixup.then(|| zeros([1], device)),
        }
    }

    /// The branch's input when there is no norm: `x (+ a)`.
    pub fn branch_input(&self, x: &Tensor<3>) -> Tensor<3> {
        match &self.bias_in {
            Some(a) => x.clone() + scalar(a),
            None => x.clone(),
        }
    }

    /// `x + m · branch (+ b)`.
    pub fn forward(&self, x: Tensor<3>, branch: Tensor<3>) -> Tensor<3> {
        let branch = match &self.scale {
            Some(m) => branch * scalar(m),
            None => branch,
        };
        let out = x + branch;
        match &self.bias_out {
            Some(b) => out + scalar(b),
            None => out,
        }
    }

    pub fn bind(&self, binder: &Binder) -> CpuResidual {
        let bind = |p: &Option<Param<Tensor<1>>>| p.as_ref().map(|p| binder.weight(p));
        CpuResidual {
            scale: bind(&self.scale),
            bias_in: bind(&self.bias_in),
            bias_out: bind(&self.bias_out),
        }
    }
}

pub struct CpuResidual {
    scale: Option<Arc<Weight>>,
    bias_in: Option<Arc<Weight>>,
    bias_out: Option<Arc<Weight>>,
}

impl CpuResidual {
    /// The branch's input when there is no norm: `x + a`, or `None` when it is `x`.
    pub fn branch_input(&self, x: &[f32]) -> Option<Vec<f32>> {
        let a = self.bias_in.as_ref()?.values()[0];
        Some(x.iter().map(|v| v + a).collect())
    }

    /// Adds `a`'s gradient from the gradient of the branch input.
    pub fn branch_input_backward(&self, dinput: &[f32], grad: &mut Gradient) {
        if let Some(a) = &self.bias_in {
            grad.add(a)[0] += dinput.iter().sum::<f32>();
        }
    }

    /// `x += m · branch (+ b)`.
    pub fn forward(&self, x: &mut [f32], branch: &[f32]) {
        let m = self.scale.as_ref().map_or(1.0, |s| s.values()[0]);
        let b = self.bias_out.as_ref().map_or(0.0, |s| s.values()[0]);
        x.iter_mut().zip(branch).for_each(|(x, v)| *x += m * v + b);
    }

    /// Given `dx` (the gradient of the sum, which is also the skip path's), adds the
    /// scalars' gradients and returns the branch's output gradient `m dx`.
    pub fn backward(&self, dx: &[f32], branch: &[f32], grad: &mut Gradient) -> Vec<f32> {
        if let Some(b) = &self.bias_out {
            grad.add(b)[0] += dx.iter().sum::<f32>();
        }
        match &self.scale {
            Some(scale) => {
                let m = scale.values()[0];
                grad.add(scale)[0] += dx.iter().zip(branch).map(|(d, v)| d * v).sum::<f32>();
                dx.iter().map(|d| m * d).collect()
            }
            None => dx.to_vec(),
        }
    }
}
