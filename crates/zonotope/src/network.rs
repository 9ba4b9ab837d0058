//! The network family `f(x) = Σ_j s_j relu(w_jᵀ x̃)` with fixed output signs, and one
//! unit's place in the search space: an output sign and an activation pattern.

use crate::data::Dataset;
use crate::linalg::dot;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// A hidden unit as the search sees it: output sign and activation pattern (one bit per
/// example: whether `w_jᵀ x̃_i > 0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unit {
    pub sign: i8,
    pub pattern: Vec<bool>,
}

impl Unit {
    /// The pattern as a 0/1 string (the patterns-file format).
    pub fn bits(&self) -> String {
        self.pattern
            .iter()
            .map(|&b| if b { '1' } else { '0' })
            .collect()
    }
}

/// Network weights: unit j has weights `weights[j*(d+1)..(j+1)*(d+1)]` (last = bias)
/// and output sign `signs[j]` ∈ {+1, −1}.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub d: usize,
    pub weights: Vec<f64>,
    pub signs: Vec<i8>,
}

/// Output signs +1, −1, +1, … — the fixed sign layout used for every random
/// initialisation, so `search` and `gd` start from the same network.
pub fn alternating_signs(m: usize) -> Vec<i8> {
    (0..m).map(|j| if j % 2 == 0 { 1 } else { -1 }).collect()
}

impl Network {
    pub fn from_weights(d: usize, weights: Vec<f64>, signs: Vec<i8>) -> Self {
        assert_eq!(
            weights.len(),
            signs.len() * (d + 1),
            "weights/signs mismatch"
        );
        Self { d, weights, signs }
    }

    /// The shared initialisation of `search` and `gd`: Gaussian weights with variance
    /// 1/(d+1) (so pre-activations are O(1) on standardised data), alternating signs.
    pub fn random(d: usize, m: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let scale = 1.0 / ((d + 1) as f64).sqrt();
        let weights = (0..m * (d + 1))
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                scale * z
            })
            .collect::<Vec<f64>>();
        Self::from_weights(d, weights, alternating_signs(m))
    }

    pub fn units(&self) -> usize {
        self.signs.len()
    }

    pub fn unit_weights(&self, j: usize) -> &[f64] {
        &self.weights[j * (self.d + 1)..(j + 1) * (self.d + 1)]
    }

    /// Predictions on the data (a real ReLU forward pass, not the QP's linear model).
    pub fn predict(&self, data: &Dataset) -> Vec<f64> {
        (0..data.n)
            .map(|i| {
                let x = data.row(i);
                (0..self.units())
                    .map(|j| f64::from(self.signs[j]) * dot(self.unit_weights(j), x).max(0.0))
                    .sum()
            })
            .collect()
    }

    /// Mean squared error on the data.
    pub fn loss(&self, data: &Dataset) -> f64 {
        self.predict(data)
            .iter()
            .zip(&data.y)
            .map(|(p, y)| (p - y).powi(2))
            .sum::<f64>()
            / data.n as f64
    }

    /// The activation pattern and sign of every unit.
    pub fn units_at(&self, data: &Dataset) -> Vec<Unit> {
        (0..self.units())
            .map(|j| Unit {
                sign: self.signs[j],
                pattern: (0..data.n)
                    .map(|i| dot(self.unit_weights(j), data.row(i)) > 0.0)
                    .collect(),
            })
            .collect()
    }
}
