//! The gradient baseline: full-batch gradient descent or Adam on the same network family
//! (fixed output signs) and the same loss (MSE), from the same initialisation as search.

use crate::data::Dataset;
use crate::linalg::dot;
use crate::network::Network;
use anyhow::{bail, ensure, Result};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Gd,
    Adam,
}

impl Optimizer {
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Gd => "gd",
            Optimizer::Adam => "adam",
        }
    }

    /// Default learning rates: plain GD tolerates a larger step on O(1)-scaled data.
    pub fn default_lr(self) -> f64 {
        match self {
            Optimizer::Gd => 0.05,
            Optimizer::Adam => 0.01,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub steps: usize,
    pub initial_loss: f64,
    pub final_loss: f64,
    /// (step, loss) at about 100 evenly spaced steps, first and last included.
    pub trajectory: Vec<(usize, f64)>,
    pub network: Network,
}

/// Loss and gradient of the MSE with respect to all weights.
pub fn loss_and_grad(net: &Network, data: &Dataset) -> (f64, Vec<f64>) {
    let k = data.dim();
    let mut grad = vec![0.0; net.weights.len()];
    let mut loss = 0.0;
    let scale = 2.0 / data.n as f64;
    for i in 0..data.n {
        let x = data.row(i);
        let pre: Vec<f64> = (0..net.units())
            .map(|j| dot(net.unit_weights(j), x))
            .collect();
        let out: f64 = pre
            .iter()
            .zip(&net.signs)
            .map(|(z, &s)| f64::from(s) * z.max(0.0))
            .sum();
        let r = out - data.y[i];
        loss += r * r;
        for (j, z) in pre.iter().enumerate() {
            // relu'(0) = 0, matching the pattern convention 1[w·x̃ > 0].
            if *z > 0.0 {
                let g = scale * r * f64::from(net.signs[j]);
                for c in 0..k {
                    grad[j * k + c] += g * x[c];
                }
            }
        }
    }
    (loss / data.n as f64, grad)
}

/// Train from `init` and return the final network and loss trajectory.
pub fn train(data: &Dataset, init: &Network, opts: &Options) -> Result<Run> {
    ensure!(
        opts.lr.is_finite() && opts.lr > 0.0,
        "learning rate must be positive (got {})",
        opts.lr
    );
    let mut net = init.clone();
    let mut m1 = vec![0.0; net.weights.len()];
    let mut m2 = vec![0.0; net.weights.len()];
    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
    let every = (opts.steps / 100).max(1);
    let mut trajectory = Vec::new();
    let initial_loss = net.loss(data);
    for step in 0..opts.steps {
        let (loss, grad) = loss_and_grad(&net, data);
        if !loss.is_finite() {
            bail!(
                "{} diverged at step {step} (loss {loss}); lower --lr (now {})",
                opts.optimizer.name(),
                opts.lr
            );
        }
        if step % every == 0 {
            trajectory.push((step, loss));
        }
        match opts.optimizer {
            Optimizer::Gd => {
                for (w, g) in net.weights.iter_mut().zip(&grad) {
                    *w -= opts.lr * g;
                }
            }
            Optimizer::Adam => {
                let t = (step + 1) as i32;
                let (c1, c2) = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
                for (idx, g) in grad.iter().enumerate() {
                    m1[idx] = b1 * m1[idx] + (1.0 - b1) * g;
                    m2[idx] = b2 * m2[idx] + (1.0 - b2) * g * g;
                    net.weights[idx] -= opts.lr * (m1[idx] / c1) / ((m2[idx] / c2).sqrt() + eps);
                }
            }
        }
    }
    let final_loss = net.loss(data);
    if !final_loss.is_finite() {
        bail!(
            "{} diverged (final loss {final_loss}); lower --lr (now {})",
            opts.optimizer.name(),
            opts.lr
        );
    }
    trajectory.push((opts.steps, final_loss));
    Ok(Run {
        optimizer: opts.optimizer,
        lr: opts.lr,
        steps: opts.steps,
        initial_loss,
        final_loss,
        trajectory,
        network: net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticSpec;

    #[test]
    fn gradient_matches_finite_differences() {
        let data = SyntheticSpec {
            n: 15,
            d: 2,
            teacher_units: 2,
            noise: 0.1,
            seed: 2,
        }
        .generate()
        .unwrap();
        let net = Network::random(2, 3, 5);
        let (_, grad) = loss_and_grad(&net, &data);
        let h = 1e-6;
        for idx in 0..net.weights.len() {
            let mut plus = net.clone();
            plus.weights[idx] += h;
            let mut minus = net.clone();
            minus.weights[idx] -= h;
            let fd = (plus.loss(&data) - minus.loss(&data)) / (2.0 * h);
            assert!(
                (fd - grad[idx]).abs() < 1e-5,
                "{idx}: {fd} vs {}",
                grad[idx]
            );
        }
    }

    #[test]
    fn both_optimizers_reduce_loss_and_bad_lr_is_refused() {
        let data = SyntheticSpec {
            n: 20,
            d: 1,
            teacher_units: 2,
            noise: 0.0,
            seed: 3,
        }
        .generate()
        .unwrap();
        let init = Network::random(1, 4, 1);
        for optimizer in [Optimizer::Gd, Optimizer::Adam] {
            let opts = Options {
                optimizer,
                lr: optimizer.default_lr(),
                steps: 500,
            };
            let run = train(&data, &init, &opts).unwrap();
            assert!(run.final_loss < run.initial_loss);
            assert_eq!(run.trajectory.last().unwrap().1, run.final_loss);
        }
        let opts = Options {
            optimizer: Optimizer::Gd,
            lr: 0.0,
            steps: 200,
        };
        assert!(train(&data, &init, &opts).is_err());
    }
}
