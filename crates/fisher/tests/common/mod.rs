//! Small models with a burn (autodiff) implementation and an independent plain-f64
//! implementation, for checking the Fisher math against closed forms and finite
//! differences.

use fisherkit_fisher::{GradientModel, ParamSpec, Pick};
use fisherkit_model::burn::tensor::{activation::log_softmax, DType, Device, Tensor, TensorData};

/// logits_t = W2 tanh(W1 x_t + b1) + b2 (with a hidden layer) or W x_t + b (without),
/// one output distribution per input row x_t.
pub struct TestModel {
    pub dims: Dims,
    pub theta: Vec<f64>,
    params: Vec<ParamSpec>,
}

#[derive(Clone, Copy)]
pub struct Dims {
    pub input: usize,
    pub hidden: Option<usize>,
    pub classes: usize,
}

/// One example: rows of inputs (one per output position) and observed classes.
#[derive(Clone)]
pub struct Example {
    pub rows: Vec<Vec<f64>>,
    pub observed: Vec<usize>,
}

/// A deterministic pseudo-random generator so tests need no extra dependency.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    pub fn normal_ish(&mut self, scale: f64) -> f64 {
        (self.uniform() + self.uniform() + self.uniform() - 1.5) * 2.0 * scale
    }
}

impl TestModel {
    pub fn new(dims: Dims, seed: u64) -> Self {
        let mut params = Vec::new();
        let d_out_in = dims.hidden.unwrap_or(dims.input);
        if let Some(h) = dims.hidden {
            params.push(spec("hidden.weight", vec![h, dims.input]));
            params.push(spec("hidden.bias", vec![h]));
        }
        params.push(spec("out.weight", vec![dims.classes, d_out_in]));
        params.push(spec("out.bias", vec![dims.classes]));
        let n = fisherkit_fisher::param_count(&params);
        let mut rng = Lcg(seed);
        let theta = (0..n).map(|_| rng.normal_ish(0.8)).collect();
        Self {
            dims,
            theta,
            params,
        }
    }

    pub fn examples(&self, n: usize, positions: usize, seed: u64) -> Vec<Example> {
        let mut rng = Lcg(seed);
        (0..n)
            .map(|_| Example {
                rows: (0..positions)
                    .map(|_| (0..self.dims.input).map(|_| rng.normal_ish(1.0)).collect())
                    .collect(),
                observed: (0..positions)
                    .map(|_| (rng.uniform() * self.dims.classes as f64) as usize)
                    .collect(),
            })
            .collect()
    }

    /// Plain f64 log-probabilities for parameters `theta` (independent of burn).
    pub fn log_probs_f64(&self, theta: &[f64], example: &Example) -> Vec<Vec<f64>> {
        let Dims {
            input,
            hidden,
            classes,
        } = self.dims;
        example
            .rows
            .iter()
            .map(|x| {
                let (features, rest): (Vec<f64>, &[f64]) = match hidden {
                    Some(h) => {
                        let (w1, rest) = theta.split_at(h * input);
                        let (b1, rest) = rest.split_at(h);
                        let f = (0..h)
                            .map(|i| {
                                let z: f64 =
                                    (0..input).map(|j| w1[i * input + j] * x[j]).sum::<f64>();
                                (z + b1[i]).tanh()
                            })
                            .collect();
                        (f, rest)
                    }
                    None => (x.clone(), theta),
                };
                let d = features.len();
                let (w2, b2) = rest.split_at(classes * d);
                let logits: Vec<f64> = (0..classes)
                    .map(|c| (0..d).map(|j| w2[c * d + j] * features[j]).sum::<f64>() + b2[c])
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                logits.iter().map(|l| l - lse).collect()
            })
            .collect()
    }

    /// Burn forward: [positions, classes] log-probabilities, with gradient leaves
    /// when `device` is an autodiff device.
    fn forward(&self, device: &Device, example: &Example) -> (Vec<Tensor<1>>, Tensor<2>) {
        let mut leaves = Vec::new();
        let mut weights = Vec::new();
        let mut offset = 0;
        for p in &self.params {
            let n = p.numel();
            let data = TensorData::new(self.theta[offset..offset + n].to_vec(), [n]);
            let t = Tensor::<1>::from_data(data, (device, DType::F64));
            let t = if device.is_autodiff() {
                t.require_grad()
            } else {
                t
            };
            let shape = if p.shape.len() == 2 {
                [p.shape[0], p.shape[1]]
            } else {
                [1, p.shape[0]]
            };
            weights.push(t.clone().reshape(shape));
            leaves.push(t);
            offset += n;
        }
        let positions = example.rows.len();
        let flat: Vec<f64> = example.rows.iter().flatten().copied().collect();
        let x = Tensor::<2>::from_data(
            TensorData::new(flat, [positions, self.dims.input]),
            (device, DType::F64),
        );
        let mut h = x;
        let mut i = 0;
        if self.dims.hidden.is_some() {
            h = (h.matmul(weights[0].clone().transpose()) + weights[1].clone()).tanh();
            i = 2;
        }
        let logits = h.matmul(weights[i].clone().transpose()) + weights[i + 1].clone();
        (leaves, log_softmax(logits, 1))
    }
}

fn spec(name: &str, shape: Vec<usize>) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        shape,
    }
}

fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let data = t.into_data_as::<f32>();
    data.as_slice::<f32>().expect("f32 data").to_vec()
}

impl GradientModel for TestModel {
    type Example = Example;

    fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    fn log_probs(&self, example: &Example) -> anyhow::Result<Vec<Vec<f32>>> {
        let (_, lp) = self.forward(&Device::flex(), example);
        let v = to_f32(lp);
        Ok(v.chunks(self.dims.classes).map(<[f32]>::to_vec).collect())
    }

    fn grad(&self, example: &Example, picks: &[Pick]) -> anyhow::Result<Vec<f32>> {
        let (leaves, lp) = self.forward(&Device::flex().autodiff(), example);
        let objective = picks
            .iter()
            .map(|&(t, c)| lp.clone().slice([t..t + 1, c..c + 1]).sum())
            .reduce(|a, b| a + b)
            .expect("at least one pick");
        let grads = objective.backward();
        Ok(leaves
            .iter()
            .flat_map(|leaf| to_f32(leaf.grad(&grads).expect("leaf gradient")))
            .collect())
    }

    fn observed(&self, example: &Example) -> anyhow::Result<Vec<Pick>> {
        Ok(example.observed.iter().copied().enumerate().collect())
    }
}
