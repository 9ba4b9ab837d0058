//! Adafactor (as Hugging Face / mesh-TF) and AdamW (as PyTorch) on burn tensors.
//!
//! Every parameter is handed over as a matrix: vectors as `[1, n]` with
//! `factored = false`, matrices `[rows, cols]` with `factored = true` (Adafactor then
//! keeps row and column second-moment statistics instead of a full matrix). Tensors
//! must live on a non-autodiff device (`tensor.inner()`). No value is read back to the
//! host during an update, so the optimiser runs wherever the model runs.

use burn::tensor::{Device, Tensor, TensorData};
use fisherkit_common::{anyhow, bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdafactorConfig {
    /// First-moment decay; `None` (the paper's default, beta1 = 0) keeps no first moment.
    pub beta1: Option<f64>,
    /// Updates are scaled down so that their RMS is at most this.
    pub clip_threshold: f64,
    /// Added to squared gradients.
    pub eps1: f64,
    /// Lower bound of the parameter scale.
    pub eps2: f64,
    /// Second-moment decay `beta2_t = 1 - t^decay_rate`.
    pub decay_rate: f64,
    /// Multiply the step by `max(eps2, RMS(param))` ("relative step" with the
    /// inverse-sqrt schedule, parameter scaling on).
    pub scale_parameter: bool,
    pub weight_decay: f64,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            beta1: None,
            clip_threshold: 1.0,
            eps1: 1e-30,
            eps2: 1e-3,
            decay_rate: -0.8,
            scale_parameter: true,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OptimizerConfig {
    Adafactor(AdafactorConfig),
    Adamw(AdamWConfig),
}

/// One saved state tensor: `{param}/{slot}` name, shape, row-major values.
pub type StateTensor = (String, Vec<usize>, Vec<f32>);

/// An optimiser with its per-parameter state. Call [`begin_step`](Self::begin_step)
/// once per update, then [`update`](Self::update) for every parameter.
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    /// parameter name → slot name → state tensor.
    state: BTreeMap<String, BTreeMap<String, Tensor<2>>>,
}

fn scalar_to_matrix(t: Tensor<1>) -> Tensor<2> {
    t.reshape([1, 1])
}

/// Root mean square as a `[1, 1]` tensor.
fn rms(t: &Tensor<2>) -> Tensor<2> {
    scalar_to_matrix(t.clone().square().mean().sqrt())
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of updates taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    fn slot(&mut self, name: &str, slot: &str, init: impl FnOnce() -> Tensor<2>) -> Tensor<2> {
        self.state
            .entry(name.to_string())
            .or_default()
            .entry(slot.to_string())
            .or_insert_with(init)
            .clone()
    }

    fn set_slot(&mut self, name: &str, slot: &str, value: Tensor<2>) {
        self.state
            .get_mut(name)
            .expect("slot created before it is set")
            .insert(slot.to_string(), value);
    }

    /// The updated value of parameter `name` given its gradient and learning rate `lr`.
    pub fn update(
        &mut self,
        name: &str,
        param: Tensor<2>,
        grad: Tensor<2>,
        factored: bool,
        lr: f64,
    ) -> Result<Tensor<2>> {
        ensure!(self.step > 0, "begin_step must be called before update");
        ensure!(
            param.dims() == grad.dims(),
            "parameter {name}: gradient shape {:?} differs from parameter shape {:?}",
            grad.dims(),
            param.dims()
        );
        Ok(match self.config {
            OptimizerConfig::Adafactor(c) => self.adafactor(c, name, param, grad, factored, lr),
            OptimizerConfig::Adamw(c) => self.adamw(c, name, param, grad, lr),
        })
    }

    fn adafactor(
        &mut self,
        c: AdafactorConfig,
        name: &str,
        param: Tensor<2>,
        grad: Tensor<2>,
        factored: bool,
        lr: f64,
    ) -> Tensor<2> {
        let [rows, cols] = param.dims();
        let device = param.device();
        let step_lr = if c.scale_parameter {
            rms(&param).clamp_min(c.eps2).mul_scalar(lr)
        } else {
            Tensor::<2>::full([1, 1], lr, &device)
        };
        let beta2t = 1.0 - (self.step as f64).powf(c.decay_rate);
        let sq = grad.clone().square().add_scalar(c.eps1);
        let update = if factored {
            let row = self.slot(name, "exp_avg_sq_row", || Tensor::zeros([rows, 1], &device));
            let col = self.slot(name, "exp_avg_sq_col", || Tensor::zeros([1, cols], &device));
            let row = row.mul_scalar(beta2t) + sq.clone().mean_dim(1).mul_scalar(1.0 - beta2t);
            let col = col.mul_scalar(beta2t) + sq.mean_dim(0).mul_scalar(1.0 - beta2t);
            let row_mean = scalar_to_matrix(row.clone().mean());
            let r_factor = (row.clone() / row_mean).sqrt().recip();
            let c_factor = col.clone().sqrt().recip();
            self.set_slot(name, "exp_avg_sq_row", row);
            self.set_slot(name, "exp_avg_sq_col", col);
            r_factor * c_factor * grad
        } else {
            let v = self.slot(name, "exp_avg_sq", || Tensor::zeros([rows, cols], &device));
            let v = v.mul_scalar(beta2t) + sq.mul_scalar(1.0 - beta2t);
            self.set_slot(name, "exp_avg_sq", v.clone());
            v.sqrt().recip() * grad
        };
        let clip = rms(&update).div_scalar(c.clip_threshold).clamp_min(1.0);
        let mut update = update / clip * step_lr.clone();
        if let Some(beta1) = c.beta1 {
            let m = self.slot(name, "exp_avg", || Tensor::zeros([rows, cols], &device));
            let m = m.mul_scalar(beta1) + update.mul_scalar(1.0 - beta1);
            self.set_slot(name, "exp_avg", m.clone());
            update = m;
        }
        let param = if c.weight_decay != 0.0 {
            param.clone() - param * step_lr.mul_scalar(c.weight_decay)
        } else {
            param
        };
        param - update
    }

    fn adamw(
        &mut self,
        c: AdamWConfig,
        name: &str,
        param: Tensor<2>,
        grad: Tensor<2>,
        lr: f64,
    ) -> Tensor<2> {
        let [rows, cols] = param.dims();
        let device = param.device();
        let m = self.slot(name, "exp_avg", || Tensor::zeros([rows, cols], &device));
        let v = self.slot(name, "exp_avg_sq", || Tensor::zeros([rows, cols], &device));
        let m = m.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + grad.square().mul_scalar(1.0 - c.beta2);
        self.set_slot(name, "exp_avg", m.clone());
        self.set_slot(name, "exp_avg_sq", v.clone());
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        // PyTorch order: decay first, then addcdiv with denom = sqrt(v)/sqrt(bc2) + eps.
        let param = param.mul_scalar(1.0 - lr * c.weight_decay);
        let denom = v.sqrt().div_scalar(bias_correction2_sqrt).add_scalar(c.eps);
        param - (m / denom).mul_scalar(lr / bias_correction1)
    }

    /// The state as host tensors named `{param}/{slot}`, for checkpoints.
    pub fn state_tensors(&self) -> Result<Vec<StateTensor>> {
        let mut out = Vec::new();
        for (param, slots) in &self.state {
            for (slot, t) in slots {
                let values = t
                    .clone()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| anyhow!("reading optimiser state {param}/{slot}: {e:?}"))?;
                out.push((format!("{param}/{slot}"), t.dims().to_vec(), values));
            }
        }
        Ok(out)
    }

    /// Restore the state saved by [`state_tensors`](Self::state_tensors) after `step` updates.
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: Vec<StateTensor>,
        device: &Device,
    ) -> Result<()> {
        self.step = step;
        self.state.clear();
        for (full, shape, values) in tensors {
            let Some((param, slot)) = full.rsplit_once('/') else {
                bail!("optimiser state tensor {full:?} is not named param/slot");
            };
            ensure!(
                shape.len() == 2,
                "optimiser state tensor {full}: expected 2 dimensions, got {shape:?}"
            );
            let t = Tensor::<2>::from_data(TensorData::new(values, shape), device);
            self.state
                .entry(param.to_string())
                .or_default()
                .insert(slot.to_string(), t);
        }
        Ok(())
    }
}

/// Scale factor of PyTorch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: usize, cols: usize, v: &[f64]) -> Tensor<2> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, [rows, cols]), &Device::flex())
    }

    fn host(x: Tensor<2>) -> Vec<f64> {
        x.try_into_vec_as::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1e-3),
                "got {got:?}, want {want:?}"
            );
        }
    }

    fn rms_host(v: &[f64]) -> f64 {
        (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
    }

    /// Reference Adafactor step for a 2x2 matrix with fresh state at step `t` (the state
    /// of earlier steps is replayed through the same function).
    fn adafactor_reference(p: &[f64], grads: &[Vec<f64>], lr: f64, c: AdafactorConfig) -> Vec<f64> {
        let (rows, cols) = (2, 2);
        let mut p = p.to_vec();
        let mut row = vec![0.0; rows];
        let mut col = vec![0.0; cols];
        let mut m = vec![0.0; rows * cols];
        for (i, g) in grads.iter().enumerate() {
            let step = (i + 1) as f64;
            let beta2t = 1.0 - step.powf(c.decay_rate);
            let sq: Vec<f64> = g.iter().map(|x| x * x + c.eps1).collect();
            for r in 0..rows {
                row[r] = beta2t * row[r] + (1.0 - beta2t) * (sq[r * cols] + sq[r * cols + 1]) / 2.0;
            }
            for k in 0..cols {
                col[k] = beta2t * col[k] + (1.0 - beta2t) * (sq[k] + sq[cols + k]) / 2.0;
            }
            let row_mean = row.iter().sum::<f64>() / rows as f64;
            let mut u: Vec<f64> = (0..rows * cols)
                .map(|j| g[j] / ((row[j / cols] / row_mean).sqrt() * col[j % cols].sqrt()))
                .collect();
            let clip = (rms_host(&u) / c.clip_threshold).max(1.0);
            let scale = if c.scale_parameter {
                rms_host(&p).max(c.eps2)
            } else {
                1.0
            } * lr;
            for x in &mut u {
                *x = *x / clip * scale;
            }
            if let Some(b1) = c.beta1 {
                for j in 0..u.len() {
                    m[j] = b1 * m[j] + (1.0 - b1) * u[j];
                    u[j] = m[j];
                }
            }
            for j in 0..p.len() {
                p[j] -= u[j] + c.weight_decay * scale * p[j];
            }
        }
        p
    }

    #[test]
    fn adafactor_factored_matches_closed_form() {
        let p0 = [0.5, -1.0, 2.0, 0.25];
        let grads = vec![
            vec![0.1, -0.2, 0.3, 0.05],
            vec![-0.3, 0.1, 0.02, 0.4],
            vec![0.2, 0.2, -0.1, 0.0],
        ];
        for c in [
            AdafactorConfig::default(),
            AdafactorConfig {
                beta1: Some(0.9),
                scale_parameter: false,
                weight_decay: 0.1,
                clip_threshold: 0.5,
                ..Default::default()
            },
        ] {
            let mut opt = Optimizer::new(OptimizerConfig::Adafactor(c));
            let mut p = t(2, 2, &p0);
            for g in &grads {
                opt.begin_step();
                p = opt.update("w", p, t(2, 2, g), true, 0.01).unwrap();
            }
            assert_close(&host(p), &adafactor_reference(&p0, &grads, 0.01, c), 1e-5);
        }
    }

    #[test]
    fn adafactor_first_step_by_hand() {
        // Unfactored, step 1: beta2t = 0 so v = g² + eps1 and u = sign(g); RMS(u) = 1 (no
        // clipping); scale = max(1e-3, RMS(p)) · lr.
        let mut opt = Optimizer::new(OptimizerConfig::Adafactor(AdafactorConfig::default()));
        opt.begin_step();
        let p = opt
            .update(
                "v",
                t(1, 3, &[3.0, 0.0, -4.0]),
                t(1, 3, &[2.0, -0.5, 1e-3]),
                false,
                0.1,
            )
            .unwrap();
        let scale = (25.0f64 / 3.0).sqrt() * 0.1;
        assert_close(&host(p), &[3.0 - scale, scale, -4.0 - scale], 1e-5);
        // A zero parameter uses eps2 as its scale; the clip bounds the update RMS by 1.
        let mut opt = Optimizer::new(OptimizerConfig::Adafactor(AdafactorConfig::default()));
        opt.begin_step();
        let p = opt
            .update("z", t(1, 2, &[0.0, 0.0]), t(1, 2, &[1.0, -1.0]), false, 1.0)
            .unwrap();
        assert_close(&host(p), &[-1e-3, 1e-3], 1e-5);
    }

    #[test]
    fn adamw_matches_pytorch_closed_form() {
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = Optimizer::new(OptimizerConfig::Adamw(c));
        let (p0, g1, g2) = ([1.0, -2.0], [0.5, 0.1], [-0.2, 0.3]);
        let lr = 0.01;
        opt.begin_step();
        let p = opt
            .update("w", t(1, 2, &p0), t(1, 2, &g1), false, lr)
            .unwrap();
        // Step 1: m̂ = g, v̂ = g² → update = g/(|g| + eps) ≈ sign(g).
        let want1: Vec<f64> = (0..2)
            .map(|i| p0[i] * (1.0 - lr * 0.1) - lr * g1[i] / (g1[i].abs() + 1e-8))
            .collect();
        let p1 = host(p.clone());
        assert_close(&p1, &want1, 1e-6);
        opt.begin_step();
        let p = opt.update("w", p, t(1, 2, &g2), false, lr).unwrap();
        let want2: Vec<f64> = (0..2)
            .map(|i| {
                let m = 0.9 * 0.1 * g1[i] + 0.1 * g2[i];
                let v = 0.999 * 0.001 * g1[i] * g1[i] + 0.001 * g2[i] * g2[i];
                let denom = v.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
                p1[i] * (1.0 - lr * 0.1) - lr / (1.0 - 0.9f64.powi(2)) * m / denom
            })
            .collect();
        assert_close(&host(p), &want2, 1e-6);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let cfg = OptimizerConfig::Adafactor(AdafactorConfig {
            beta1: Some(0.9),
            ..Default::default()
        });
        let g = [vec![0.1, -0.2, 0.3, 0.05], vec![-0.3, 0.1, 0.02, 0.4]];
        let mut a = Optimizer::new(cfg);
        let mut p = t(2, 2, &[0.5, -1.0, 2.0, 0.25]);
        a.begin_step();
        p = a.update("w", p, t(2, 2, &g[0]), true, 0.01).unwrap();
        let mut b = Optimizer::new(cfg);
        b.load_state(a.step(), a.state_tensors().unwrap(), &Device::flex())
            .unwrap();
        a.begin_step();
        b.begin_step();
        let pa = a
            .update("w", p.clone(), t(2, 2, &g[1]), true, 0.01)
            .unwrap();
        let pb = b.update("w", p, t(2, 2, &g[1]), true, 0.01).unwrap();
        assert_eq!(host(pa), host(pb));
        assert_eq!(
            b.state_tensors().unwrap().len(),
            3,
            "row, col and first moment"
        );
    }

    #[test]
    fn clip_factor_as_pytorch() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    }
}
