//! `out(act(in x))` or, gated, `out(act(in_act x) ⊙ in_linear x)`, with any
//! [`Activation`].

use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::activation::{Activation, FeedForwardKind};
use crate::cpu::{Binder, Gradient};
use crate::linear::{CpuLinear, Linear};
use crate::Dropout;

/// Checkpoint names of a feed-forward's projections (e.g. T5: `wi`, `wi_0`, `wi_1`, `wo`).
#[derive(Clone, Copy, Debug)]
pub struct FeedForwardNames {
    /// The input projection of a dense unit.
    pub dense: &'static str,
    /// The activated branch of a gated unit.
    pub gate_act: &'static str,
    /// The linear branch of a gated unit.
    pub gate_linear: &'static str,
    pub output: &'static str,
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub dense: Option<Linear>,
    pub gate_act: Option<Linear>,
    pub gate_linear: Option<Linear>,
    pub output: Linear,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    names: FeedForwardNames,
}

crate::param_list!(FeedForward {
    optional_child [names.dense] => dense,
    optional_child [names.gate_act] => gate_act,
    optional_child [names.gate_linear] => gate_linear,
    child [names.output] => output,
});

impl FeedForward {
    /// `names` are prefixes, e.g. `"wi."`.
    pub fn new(
        kind: FeedForwardKind,
        d_model: usize,
        d_ff: usize,
        bias: bool,
        names: FeedForwardNames,
        device: &Device,
    ) -> Self {
        let input = || Linear::new(d_model, d_ff, bias, device);
        Self {
            dense: (!kind.gated).then(input),
            gate_act: kind.gated.then(input),
            gate_linear: kind.gated.then(input),
            output: Linear::new(d_ff, d_model, bias, device),
            activation: kind.activation,
            names,
        }
    }

    pub fn forward(&self, x: Tensor<3>, dropout: Dropout) -> Tensor<3> {
        let hidden = match (&self.dense, &self.gate_act, &self.gate_linear) {
            (Some(dense), _, _) => self.activation.forward(dense.forward(x)),
            (None, Some(act), Some(linear)) => {
                self.activation.forward(act.forward(x.clone())) * linear.forward(x)
            }
            _ => unreachable!("FeedForward::new sets the dense or both gated projections"),
        };
        self.output.forward(dropout.apply(hidden))
    }

    pub fn bind(&self, binder: &Binder) -> CpuFeedForward {
        let bind = |l: &Option<Linear>| l.as_ref().map(|l| l.bind(binder, true));
        CpuFeedForward {
            dense: bind(&self.dense),
            gate_act: bind(&self.gate_act),
            gate_linear: bind(&self.gate_linear),
            output: self.output.bind(binder, true),
            activation: self.activation,
        }
    }
}

pub struct CpuFeedForward {
    dense: Option<CpuLinear>,
    gate_act: Option<CpuLinear>,
    gate_linear: Option<CpuLinear>,
    output: CpuLinear,
    activation: Activation,
}

/// What the backward pass needs.
pub struct FeedForwardState {
    /// Pre-activation (of the activated branch when gated).
    pre: Vec<f32>,
    /// The linear branch of a gated unit.
    gate: Option<Vec<f32>>,
    /// The input of the output projection.
    hidden: Vec<f32>,
}

impl CpuFeedForward {
    fn input(&self) -> &CpuLinear {
        self.dense
            .as_ref()
            .or(self.gate_act.as_ref())
            .expect("dense or gated")
    }

    pub fn forward(&self, x: &[f32], rows: usize) -> (FeedForwardState, Vec<f32>) {
        let act = self.activation;
        let pre = self.input().forward(x, rows);
        let gate = self.gate_linear.as_ref().map(|l| l.forward(x, rows));
        let hidden: Vec<f32> = match &gate {
            None => pre.par_iter().map(|&z| act.value(z)).collect(),
            Some(gate) => pre
                .par_iter()
                .zip(gate)
                .map(|(&z, g)| act.value(z) * g)
                .collect(),
        };
        let out = self.output.forward(&hidden, rows);
        (FeedForwardState { pre, gate, hidden }, out)
    }

    /// Adds the weight gradients; returns the input gradient.
    pub fn backward(
        &self,
        x: &[f32],
        state: &FeedForwardState,
        dout: &[f32],
        rows: usize,
        grad: &mut Gradient,
    ) -> Vec<f32> {
        let act = self.activation;
        let mut dhidden = vec![0.0; rows * self.output.d_in()];
        self.output
            .backward(&state.hidden, dout, rows, grad, &mut dhidden, false);
        let mut dx = vec![0.0; rows * self.input().d_in()];
        match (&state.gate, &self.gate_linear) {
            (None, _) => {
                dhidden
                    .par_iter_mut()
                    .zip(&state.pre)
                    .for_each(|(g, &z)| *g *= act.derivative(z));
                self.input()
                    .backward(x, &dhidden, rows, grad, &mut dx, false);
            }
            (Some(gate), Some(linear)) => {
                let (dpre, dgate): (Vec<f32>, Vec<f32>) = dhidden
                    .par_iter()
                    .zip(&state.pre)
                    .zip(gate)
                    .map(|((&dh, &z), &g)| (dh * g * act.derivative(z), dh * act.value(z)))
                    .unzip();
                self.input().backward(x, &dpre, rows, grad, &mut dx, false);
                linear.backward(x, &dgate, rows, grad, &mut dx, true);
            }
            (Some(_), None) => unreachable!("a gate needs its linear branch"),
        }
        dx
    }
}
