//! Feed-forward activations and their derivatives: the burn forward pass on tensors and
//! the scalar value/derivative the CPU backward pass uses, side by side so that a new
//! activation is added in one place.

use anyhow::{bail, Result};
use fisherkit_model::burn::tensor::activation::{elu, gelu, relu, selu, sigmoid, silu, softplus};
use fisherkit_model::burn::tensor::Tensor;

/// Activation of a feed-forward block (or of the gated branch of a gated one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU, HF `gelu`.
    Gelu,
    /// tanh approximation, HF `gelu_new` (what HF's `gated-gelu` means).
    GeluTanh,
    Silu,
    /// ELU with α = 1.
    Elu,
    Selu,
    Sigmoid,
    /// softplus with β = 1 (the identity above 20, as PyTorch and burn).
    Softplus,
    /// The identity: only meaningful gated (LiGLU, `gated-linear`).
    Linear,
}

/// The names `feed_forward_proj` accepts after an optional `gated-`.
pub const ACTIVATION_NAMES: &[&str] = &[
    "relu", "gelu", "gelu_new", "silu", "elu", "selu", "sigmoid", "softplus", "linear",
];

/// Above this input softplus is the identity (burn's and PyTorch's threshold).
const SOFTPLUS_THRESHOLD: f32 = 20.0;
/// SELU's constants (Klambauer et al., as in PyTorch and burn).
const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_SCALE: f32 = 1.050_701;
/// √(2/π) and the cubic coefficient of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044715;

impl Activation {
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => relu(x),
            Activation::Gelu => gelu(x),
            // 0.5·(1 + tanh(u)) = σ(2u): one fused, stable sigmoid instead of burn's
            // element-wise tanh and powf, which took a quarter of a small model's training
            // step (perf).
            Activation::GeluTanh => {
                let cubic = x.clone() * x.clone() * x.clone();
                let inner = (x.clone() + cubic * GELU_CUBIC) * (2.0 * SQRT_2_OVER_PI);
                x * sigmoid(inner)
            }
            Activation::Silu => silu(x),
            Activation::Elu => elu(x, 1.0),
            Activation::Selu => selu(x),
            Activation::Sigmoid => sigmoid(x),
            Activation::Softplus => softplus(x, 1.0),
            Activation::Linear => x,
        }
    }

    /// act(z).
    pub fn value(self, z: f32) -> f32 {
        match self {
            Activation::Relu => z.max(0.0),
            Activation::Gelu => 0.5 * z * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2)),
            // 0.5·(1 + tanh(u)) = σ(2u), as the burn forward computes it.
            Activation::GeluTanh => z * logistic(2.0 * gelu_tanh_inner(z)),
            Activation::Silu => z * logistic(z),
            Activation::Elu => {
                if z > 0.0 {
                    z
                } else {
                    z.exp_m1()
                }
            }
            Activation::Selu => {
                if z >= 0.0 {
                    SELU_SCALE * z
                } else {
                    SELU_SCALE * SELU_ALPHA * z.exp_m1()
                }
            }
            Activation::Sigmoid => logistic(z),
            Activation::Softplus => {
                if z > SOFTPLUS_THRESHOLD {
                    z
                } else {
                    z.exp().ln_1p()
                }
            }
            Activation::Linear => z,
        }
    }

    /// d act(z) / dz.
    pub fn derivative(self, z: f32) -> f32 {
        match self {
            Activation::Relu => f32::from(z > 0.0),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * z * z).exp() / (2.0 * std::f32::consts::PI).sqrt();
                cdf + z * pdf
            }
            Activation::GeluTanh => {
                // With s = σ(2u) = 0.5·(1 + tanh u): 0.5·(1 − tanh² u) = 2·s·(1 − s).
                let s = logistic(2.0 * gelu_tanh_inner(z));
                s + 2.0 * z * s * (1.0 - s) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * z * z)
            }
            Activation::Silu => {
                let s = logistic(z);
                s * (1.0 + z * (1.0 - s))
            }
            Activation::Elu => {
                if z > 0.0 {
                    1.0
                } else {
                    z.exp()
                }
            }
            Activation::Selu => {
                if z >= 0.0 {
                    SELU_SCALE
                } else {
                    SELU_SCALE * SELU_ALPHA * z.exp()
                }
            }
            Activation::Sigmoid => {
                let s = logistic(z);
                s * (1.0 - s)
            }
            Activation::Softplus => {
                if z > SOFTPLUS_THRESHOLD {
                    1.0
                } else {
                    logistic(z)
                }
            }
            Activation::Linear => 1.0,
        }
    }
}

fn logistic(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn gelu_tanh_inner(z: f32) -> f32 {
    SQRT_2_OVER_PI * (z + GELU_CUBIC * z * z * z)
}

/// Parsed `feed_forward_proj` (HF's key): `"{act}"` or `"gated-{act}"`. GLU =
/// `gated-sigmoid`, GeGLU = `gated-gelu`, ReGLU = `gated-relu`, SwiGLU = `gated-silu`,
/// LiGLU = `gated-linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedForwardKind {
    pub gated: bool,
    pub activation: Activation,
}

impl FeedForwardKind {
    pub fn parse(proj: &str) -> Result<Self> {
        let valid = || {
            let plain: Vec<&str> = ACTIVATION_NAMES
                .iter()
                .copied()
                .filter(|a| *a != "linear")
                .collect();
            format!(
                "valid values: {}, or gated-<any of {}>",
                plain.join(", "),
                ACTIVATION_NAMES.join(", ")
            )
        };
        let (gated, act) = match proj.strip_prefix("gated-") {
            Some(act) => (true, act),
            None => (false, proj),
        };
        let activation = match act {
            "relu" => Activation::Relu,
            // HF maps `gated-gelu` to the tanh approximation for backwards compatibility.
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "elu" => Activation::Elu,
            "selu" => Activation::Selu,
            "sigmoid" => Activation::Sigmoid,
            "softplus" => Activation::Softplus,
            "linear" if gated => Activation::Linear,
            _ => bail!("unknown feed_forward_proj {proj:?}; {}", valid()),
        };
        Ok(Self { gated, activation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fisherkit_model::burn::tensor::{Device, TensorData};

    /// Every activation's derivative against a central difference of its value (f64
    /// steps on the f32 function, away from kinks), and its value against burn's.
    #[test]
    fn derivatives_match_differences_and_values_match_burn() {
        let zs: Vec<f32> = (-60..=60).map(|i| i as f32 * 0.37 + 0.011).collect();
        let all = [
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Elu,
            Activation::Selu,
            Activation::Sigmoid,
            Activation::Softplus,
            Activation::Linear,
        ];
        let device = Device::flex();
        for act in all {
            let burn = act
                .forward(Tensor::<1>::from_data(
                    TensorData::new(zs.clone(), [zs.len()]),
                    &device,
                ))
                .try_into_vec_as::<f32>()
                .unwrap();
            for (&z, &b) in zs.iter().zip(&burn) {
                let v = act.value(z);
                assert!(
                    (v - b).abs() <= 1e-5 * v.abs().max(1.0),
                    "{act:?}({z}): {v} vs burn {b}"
                );
                let h = 1e-3f32;
                let numeric = (act.value(z + h) - act.value(z - h)) / (2.0 * h);
                let d = act.derivative(z);
                assert!(
                    (numeric - d).abs() <= 2e-2 * d.abs().max(1.0),
                    "{act:?}'({z}): {d} vs difference {numeric}"
                );
            }
        }
    }

    /// The σ(2u) form of the tanh-approximated GELU against burn's own tanh form.
    #[test]
    fn gelu_tanh_equals_burns_gelu_approximate() {
        let zs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05 + 0.003).collect();
        let x = Tensor::<1>::from_data(TensorData::new(zs.clone(), [zs.len()]), &Device::flex());
        let ours = Activation::GeluTanh
            .forward(x.clone())
            .try_into_vec_as::<f32>()
            .unwrap();
        let burns = fisherkit_model::burn::tensor::activation::gelu_approximate(x)
            .try_into_vec_as::<f32>()
            .unwrap();
        for ((z, a), b) in zs.iter().zip(&ours).zip(&burns) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "gelu_new({z}): {a} vs burn {b}"
            );
        }
    }

    #[test]
    fn every_documented_name_parses_and_bad_names_list_the_valid_ones() {
        for name in ACTIVATION_NAMES {
            assert!(
                FeedForwardKind::parse(&format!("gated-{name}"))
                    .unwrap()
                    .gated
            );
            if *name != "linear" {
                assert!(!FeedForwardKind::parse(name).unwrap().gated);
            }
        }
        assert_eq!(
            FeedForwardKind::parse("gated-gelu").unwrap().activation,
            Activation::GeluTanh
        );
        for bad in ["gated-wobble", "half-relu", "linear", ""] {
            let err = FeedForwardKind::parse(bad).unwrap_err().to_string();
            assert!(err.contains("softplus") && err.contains("gated-"), "{err}");
        }
    }
}
