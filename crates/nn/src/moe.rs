//! A mixture-of-experts feed-forward (Switch Transformer, GShard): a router picks, per
//! token, its top-1 (Switch) or top-2 experts among `E` feed-forwards and weighs each
//! chosen expert's output by its gate — the router probability (top-1), or the two
//! probabilities renormalised to sum to one (top-2).
//!
//! Capacity is per sequence, as in Hugging Face's SwitchTransformers: an expert takes at
//! most `capacity` tokens of each sequence, earlier positions first (a token's first
//! choice before its second). A choice over capacity is dropped; with all its choices
//! dropped a token gets nothing from the sublayer and its residual passes it through
//! unchanged. Because capacity is per sequence and padding comes last, a sequence's
//! output does not depend on the batch it is in — per-example gradients and batched
//! training agree — and whether a token is dropped depends only on earlier tokens, so a
//! causal decoder stays causal. (GShard serves all first choices before any second
//! choice: there a token's second choice depends on later tokens and on padding.)
//!
//! Training adds the router's auxiliary losses through [`fisherkit_model::auxiliary`]:
//! the load-balancing loss `α · E · Σᵢ fᵢ Pᵢ` over the batch's tokens (fᵢ the share of
//! tokens whose first choice is expert i, Pᵢ the mean router probability of i; Switch
//! eq. 4) and, when β > 0, the router z-loss `β · mean(logsumexp(logits)²)` (ST-MoE).
//! They are regularisers of training, not part of the model's likelihood: scores,
//! decoding and Fisher information leave them out.
//!
//! Names follow Hugging Face's SwitchTransformers: `router.classifier.weight`,
//! `experts.expert_<i>.wi.weight`, ….

use fisherkit_model::burn;
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::activation::softmax;
use fisherkit_model::burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::activation::FeedForwardKind;
use crate::cpu::{Binder, Gradient};
use crate::feed_forward::{CpuFeedForward, FeedForward, FeedForwardNames, FeedForwardState};
use crate::linear::{CpuLinear, Linear};
use crate::Dropout;

/// How tokens are routed, and what the router adds to the training loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Routing {
    pub experts: usize,
    /// 1 (Switch) or 2 (GShard).
    pub top_k: usize,
    /// The most tokens of one sequence an expert takes.
    pub capacity: usize,
    /// α of the load-balancing loss.
    pub aux_loss_coef: f64,
    /// β of the router z-loss (0: none).
    pub z_loss_coef: f64,
}

/// Which tokens each expert processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// Per expert, the token rows (`sequence · len + position`) it processes.
    pub assigned: Vec<Vec<usize>>,
    /// Per token, its chosen experts, most probable first.
    pub choices: Vec<Vec<usize>>,
    /// Choices refused because the expert was full.
    pub dropped: usize,
}

impl Routing {
    /// Route `sequences` of `len` tokens given their router probabilities
    /// `[sequences · len, experts]`.
    pub fn dispatch(&self, probs: &[f32], sequences: usize, len: usize) -> Dispatch {
        let experts = self.experts;
        debug_assert_eq!(probs.len(), sequences * len * experts);
        let choices: Vec<Vec<usize>> = probs
            .chunks(experts)
            .map(|row| {
                let mut order: Vec<usize> = (0..experts).collect();
                // Most probable first; ties by expert index.
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order.truncate(self.top_k);
                order
            })
            .collect();
        let mut assigned = vec![Vec::new(); experts];
        let mut dropped = 0;
        for sequence in 0..sequences {
            let mut taken = vec![0usize; experts];
            let first = sequence * len;
            for (offset, chosen) in choices[first..first + len].iter().enumerate() {
                let token = first + offset;
                for &expert in chosen {
                    if taken[expert] < self.capacity {
                        taken[expert] += 1;
                        assigned[expert].push(token);
                    } else {
                        dropped += 1;
                    }
                }
            }
        }
        Dispatch {
            assigned,
            choices,
            dropped,
        }
    }

    /// The gate of each chosen expert of one token given its probabilities `row`.
    fn gates(&self, row: &[f32], chosen: &[usize]) -> Vec<f32> {
        if self.top_k == 1 {
            return vec![row[chosen[0]]];
        }
        let total: f32 = chosen.iter().map(|&e| row[e]).sum();
        chosen.iter().map(|&e| row[e] / total).collect()
    }

    /// The gradient of the probabilities `row` given the gradients `dgates` of the
    /// chosen experts' gates (zero for a dropped choice).
    fn gates_backward(&self, row: &[f32], chosen: &[usize], dgates: &[f32]) -> Vec<f32> {
        let mut dprobs = vec![0.0; row.len()];
        if self.top_k == 1 {
            dprobs[chosen[0]] = dgates[0];
            return dprobs;
        }
        // gₑ = pₑ / S with S the chosen probabilities' sum: ∂gₑ/∂p_c = δₑc / S − pₑ / S².
        let total: f32 = chosen.iter().map(|&e| row[e]).sum();
        let through_total: f32 = chosen
            .iter()
            .zip(dgates)
            .map(|(&e, &dg)| dg * row[e])
            .sum::<f32>()
            / (total * total);
        for (&c, &dg) in chosen.iter().zip(dgates) {
            dprobs[c] = dg / total - through_total;
        }
        dprobs
    }
}

/// The load-balancing loss `E · Σᵢ fᵢ Pᵢ` of router probabilities `probs` `[tokens,
/// experts]` given the first choices (differentiable through `probs`).
pub fn balance_loss(probs: Tensor<2>, choices: &[Vec<usize>]) -> Tensor<1> {
    let [tokens, experts] = probs.dims();
    let mut share = vec![0f32; experts];
    for chosen in choices {
        share[chosen[0]] += 1.0 / tokens as f32;
    }
    let share = Tensor::<1>::from_data(
        TensorData::new(share, [experts]),
        (&probs.device(), probs.dtype()),
    );
    let mean_probs: Tensor<1> = probs.mean_dim(0).reshape([experts]);
    (mean_probs * share).sum() * experts as f64
}

/// The router z-loss `mean(logsumexp(logits)²)` over the tokens of `logits` `[tokens,
/// experts]`.
pub fn router_z_loss(logits: Tensor<2>) -> Tensor<1> {
    let [tokens, _] = logits.dims();
    let max = logits.clone().detach().max_dim(1);
    let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
    lse.square().sum() / tokens as f64
}

#[derive(Module, Debug)]
pub struct MixtureOfExperts {
    /// `[experts, d_model]`: the router's logits.
    pub router: Linear,
    pub experts: Vec<FeedForward>,
    #[module(skip)]
    pub routing: Routing,
}

crate::param_list!(MixtureOfExperts {
    child "router.classifier." => router,
    children "experts.expert_" => experts,
});

impl MixtureOfExperts {
    pub fn new(
        routing: Routing,
        kind: FeedForwardKind,
        d_model: usize,
        d_ff: usize,
        names: FeedForwardNames,
        device: &Device,
    ) -> Self {
        Self {
            router: Linear::new(d_model, routing.experts, false, device),
            experts: (0..routing.experts)
                .map(|_| FeedForward::new(kind, d_model, d_ff, false, names, device))
                .collect(),
            routing,
        }
    }

    /// The experts' combined output `[batch, len, d]` (zero for dropped tokens); pushes
    /// the router's weighted auxiliary losses when a training step collects them.
    pub fn forward(&self, x: Tensor<3>, dropout: Dropout) -> Tensor<3> {
        let [batch, len, d] = x.dims();
        let tokens = batch * len;
        let experts = self.routing.experts;
        let flat: Tensor<2> = x.reshape([tokens, d]);
        let logits: Tensor<2> = self
            .router
            .forward(flat.clone().unsqueeze::<3>())
            .reshape([tokens, experts]);
        let probs = softmax(logits.clone(), 1);
        let host: Vec<f32> = probs
            .clone()
            .detach()
            .try_into_vec_as()
            .expect("router probabilities read back");
        let dispatch = self.routing.dispatch(&host, batch, len);
        let device = flat.device();
        let gates = if self.routing.top_k == 1 {
            probs.clone()
        } else {
            let mut chosen = vec![0f32; tokens * experts];
            for (token, picks) in dispatch.choices.iter().enumerate() {
                for &e in picks {
                    chosen[token * experts + e] = 1.0;
                }
            }
            let chosen = Tensor::<2>::from_data(
                TensorData::new(chosen, [tokens, experts]),
                (&device, probs.dtype()),
            );
            let total = (probs.clone() * chosen).sum_dim(1);
            probs.clone() / total
        };
        let mut out = Tensor::<2>::zeros([tokens, d], (&device, flat.dtype()));
        for (e, rows) in dispatch.assigned.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &device);
            let input = flat.clone().select(0, index.clone()).reshape([1, n, d]);
            let output: Tensor<2> = self.experts[e].forward(input, dropout).reshape([n, d]);
            let gate = gates.clone().select(0, index.clone()).narrow(1, e, 1);
            out = out.select_assign(0, index, output * gate, IndexingUpdateOp::Add);
        }
        if fisherkit_model::auxiliary::is_collecting() {
            let mut auxiliary = balance_loss(probs, &dispatch.choices) * self.routing.aux_loss_coef;
            if self.routing.z_loss_coef > 0.0 {
                auxiliary = auxiliary + router_z_loss(logits) * self.routing.z_loss_coef;
            }
            fisherkit_model::auxiliary::push(auxiliary);
        }
        out.reshape([batch, len, d])
    }

    pub fn bind(&self, binder: &Binder) -> CpuMixtureOfExperts {
        CpuMixtureOfExperts {
            router: self.router.bind(binder, true),
            experts: self.experts.iter().map(|e| e.bind(binder)).collect(),
            routing: self.routing,
        }
    }
}

/// The CPU mirror over one sequence (the likelihood only: no auxiliary losses).
pub struct CpuMixtureOfExperts {
    router: CpuLinear,
    experts: Vec<CpuFeedForward>,
    routing: Routing,
}

/// One expert's share of a sequence.
struct ExpertState {
    expert: usize,
    rows: Vec<usize>,
    /// The rows' inputs `[rows, d]`, its pass and its outputs.
    input: Vec<f32>,
    state: FeedForwardState,
    output: Vec<f32>,
}

/// What the backward pass needs.
pub struct MixtureState {
    probs: Vec<f32>,
    choices: Vec<Vec<usize>>,
    /// Per token, the gate of each chosen expert (in `choices` order).
    gates: Vec<Vec<f32>>,
    experts: Vec<ExpertState>,
}

/// Where `expert` stands among a token's `chosen` experts.
fn rank_of(chosen: &[usize], expert: usize) -> usize {
    chosen
        .iter()
        .position(|&e| e == expert)
        .expect("an expert processes only tokens that chose it")
}

impl CpuMixtureOfExperts {
    /// `x` `[rows, d]`, one sequence.
    pub fn forward(&self, x: &[f32], rows: usize) -> (MixtureState, Vec<f32>) {
        let d = self.router.d_in();
        let count = self.routing.experts;
        let mut probs = self.router.forward(x, rows);
        probs.par_chunks_mut(count).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|v| *v = (*v - max).exp());
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= total);
        });
        let dispatch = self.routing.dispatch(&probs, 1, rows);
        let gates: Vec<Vec<f32>> = dispatch
            .choices
            .iter()
            .zip(probs.chunks(count))
            .map(|(chosen, row)| self.routing.gates(row, chosen))
            .collect();
        let mut out = vec![0.0; rows * d];
        let mut experts = Vec::new();
        for (expert, assigned) in dispatch.assigned.into_iter().enumerate() {
            if assigned.is_empty() {
                continue;
            }
            let input: Vec<f32> = assigned
                .iter()
                .flat_map(|&r| &x[r * d..(r + 1) * d])
                .copied()
                .collect();
            let (state, output) = self.experts[expert].forward(&input, assigned.len());
            for (&r, y) in assigned.iter().zip(output.chunks(d)) {
                let gate = gates[r][rank_of(&dispatch.choices[r], expert)];
                out[r * d..(r + 1) * d]
                    .iter_mut()
                    .zip(y)
                    .for_each(|(o, v)| *o += gate * v);
            }
            experts.push(ExpertState {
                expert,
                rows: assigned,
                input,
                state,
                output,
            });
        }
        let state = MixtureState {
            probs,
            choices: dispatch.choices,
            gates,
            experts,
        };
        (state, out)
    }

    /// Adds the router's and experts' gradients; returns the input gradient.
    pub fn backward(
        &self,
        x: &[f32],
        state: &MixtureState,
        dout: &[f32],
        rows: usize,
        grad: &mut Gradient,
    ) -> Vec<f32> {
        let d = self.router.d_in();
        let count = self.routing.experts;
        let mut dx = vec![0.0; rows * d];
        // Per token, the gradient of each chosen expert's gate (zero where dropped).
        let mut dgates = vec![vec![0.0f32; self.routing.top_k]; rows];
        for e in &state.experts {
            let mut dexpert = vec![0.0; e.rows.len() * d];
            for ((&r, y), dy) in e
                .rows
                .iter()
                .zip(e.output.chunks(d))
                .zip(dexpert.chunks_mut(d))
            {
                let g = &dout[r * d..(r + 1) * d];
                let rank = rank_of(&state.choices[r], e.expert);
                dgates[r][rank] = g.iter().zip(y).map(|(a, b)| a * b).sum();
                let gate = state.gates[r][rank];
                dy.iter_mut().zip(g).for_each(|(t, v)| *t = gate * v);
            }
            let dinput =
                self.experts[e.expert].backward(&e.input, &e.state, &dexpert, e.rows.len(), grad);
            for (&r, di) in e.rows.iter().zip(dinput.chunks(d)) {
                crate::cpu::add_into(&mut dx[r * d..(r + 1) * d], di);
            }
        }
        let mut dlogits = vec![0.0; rows * count];
        for (r, dl) in dlogits.chunks_mut(count).enumerate() {
            let p = &state.probs[r * count..(r + 1) * count];
            let dp = self
                .routing
                .gates_backward(p, &state.choices[r], &dgates[r]);
            // softmax backward: dlⱼ = pⱼ (dpⱼ − Σₖ pₖ dpₖ).
            let mean: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            dl.iter_mut()
                .zip(p.iter().zip(&dp))
                .for_each(|(t, (&pj, &dpj))| *t = pj * (dpj - mean));
        }
        self.router.backward(x, &dlogits, rows, grad, &mut dx, true);
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;

    fn routing(experts: usize, top_k: usize, capacity: usize) -> Routing {
        Routing {
            experts,
            top_k,
            capacity,
            aux_loss_coef: 0.01,
            z_loss_coef: 0.0,
        }
    }

    /// Random probability rows from a small deterministic generator.
    fn random_probs(tokens: usize, experts: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut draw = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) + 1e-3
        };
        let mut probs: Vec<f32> = (0..tokens * experts).map(|_| draw()).collect();
        for row in probs.chunks_mut(experts) {
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= total);
        }
        probs
    }

    /// Against a brute-force restatement: every expert takes at most `capacity` tokens
    /// per sequence; a choice is kept exactly when fewer than `capacity` choices of
    /// earlier positions of the same sequence went to its expert (a token's choices are
    /// distinct experts); choices are the top-k by probability.
    #[test]
    fn dispatch_respects_capacity_and_priority() {
        for (experts, top_k, capacity, sequences, len) in [
            (4, 1, 2, 3, 7),
            (3, 2, 3, 2, 6),
            (5, 2, 1, 1, 9),
            (2, 1, 9, 2, 4),
        ] {
            let routing = routing(experts, top_k, capacity);
            let probs = random_probs(sequences * len, experts, (experts * 31 + len) as u64);
            let dispatch = routing.dispatch(&probs, sequences, len);
            let mut kept = 0;
            for (token, chosen) in dispatch.choices.iter().enumerate() {
                let row = &probs[token * experts..(token + 1) * experts];
                let mut sorted: Vec<f32> = row.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let chosen_probs: Vec<f32> = chosen.iter().map(|&e| row[e]).collect();
                assert_eq!(chosen_probs, sorted[..top_k].to_vec());
                let sequence = token / len;
                for &e in chosen {
                    let ahead = (sequence * len..token)
                        .filter(|&t| dispatch.choices[t].contains(&e))
                        .count();
                    let is_assigned = dispatch.assigned[e].contains(&token);
                    assert_eq!(is_assigned, ahead < capacity, "token {token} expert {e}");
                    kept += usize::from(is_assigned);
                }
            }
            assert_eq!(kept + dispatch.dropped, sequences * len * top_k);
            for rows in &dispatch.assigned {
                for s in 0..sequences {
                    let here = rows.iter().filter(|&&r| r / len == s).count();
                    assert!(here <= capacity);
                }
            }
        }
    }

    /// Two tokens, two experts: probabilities (0.7, 0.3) and (0.4, 0.6) choose experts 0
    /// and 1, so f = (½, ½), P = (0.55, 0.45) and the loss is 2 · (½·0.55 + ½·0.45) = 1;
    /// with both choosing expert 0, f = (1, 0) and the loss is 2 · 0.55 = 1.1.
    #[test]
    fn balance_loss_on_a_hand_case() {
        let device = Device::flex();
        let probs = Tensor::<2>::from_floats([[0.7, 0.3], [0.4, 0.6]], &device);
        let value =
            |choices: &[Vec<usize>]| balance_loss(probs.clone(), choices).into_scalar::<f32>();
        assert!((value(&[vec![0], vec![1]]) - 1.0).abs() < 1e-6);
        assert!((value(&[vec![0], vec![0]]) - 1.1).abs() < 1e-6);
        // z-loss: logsumexp of (0, ln 3) is ln 4; of (1, 1) is 1 + ln 2.
        let logits = Tensor::<2>::from_floats([[0.0, 3f32.ln()], [1.0, 1.0]], &device);
        let expected = (4f32.ln().powi(2) + (1.0 + 2f32.ln()).powi(2)) / 2.0;
        assert!((router_z_loss(logits).into_scalar::<f32>() - expected).abs() < 1e-5);
    }

    fn mixture(top_k: usize, capacity: usize, device: &Device) -> MixtureOfExperts {
        let names = FeedForwardNames {
            dense: "wi.",
            gate_act: "wi_0.",
            gate_linear: "wi_1.",
            output: "wo.",
        };
        let kind = FeedForwardKind {
            activation: Activation::Relu,
            gated: false,
        };
        let mut moe = MixtureOfExperts::new(routing(3, top_k, capacity), kind, 4, 6, names, device);
        let mut params = Vec::new();
        moe.params_mut("", &mut params);
        for (i, (_, mut p)) in params.into_iter().enumerate() {
            let n = p.shape().iter().product::<usize>();
            let values: Vec<f32> = (0..n)
                .map(|j| (((i * 7919 + j * 104729) % 1000) as f32 / 500.0 - 1.0) * 0.8)
                .collect();
            p.set_f32(&values).unwrap();
        }
        moe
    }

    /// The burn forward against a per-token restatement: each token's output is the sum
    /// over its kept choices of gate × expert(token), zero when all were dropped.
    #[test]
    fn forward_is_the_gated_sum_of_kept_experts() {
        let device = Device::flex();
        for top_k in [1, 2] {
            let moe = mixture(top_k, 2, &device);
            let (len, d) = (5, 4);
            let x: Vec<f32> = (0..len * d)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let input = Tensor::<3>::from_data(TensorData::new(x.clone(), [1, len, d]), &device);
            let out: Vec<f32> = moe
                .forward(input.clone(), Dropout::default())
                .try_into_vec_as()
                .unwrap();
            let logits: Vec<f32> = moe.router.forward(input).try_into_vec_as().unwrap();
            let probs: Vec<f32> = logits
                .chunks(3)
                .flat_map(|row| {
                    let total: f32 = row.iter().map(|v| v.exp()).sum();
                    row.iter().map(move |v| v.exp() / total).collect::<Vec<_>>()
                })
                .collect();
            let dispatch = moe.routing.dispatch(&probs, 1, len);
            assert!(dispatch.dropped > 0, "the case should drop a choice");
            for t in 0..len {
                let token = Tensor::<3>::from_data(
                    TensorData::new(x[t * d..(t + 1) * d].to_vec(), [1, 1, d]),
                    &device,
                );
                let chosen = &dispatch.choices[t];
                let gates = moe.routing.gates(&probs[t * 3..(t + 1) * 3], chosen);
                let mut expected = vec![0.0f32; d];
                for (&e, g) in chosen.iter().zip(gates) {
                    if dispatch.assigned[e].contains(&t) {
                        let y: Vec<f32> = moe.experts[e]
                            .forward(token.clone(), Dropout::default())
                            .try_into_vec_as()
                            .unwrap();
                        expected.iter_mut().zip(y).for_each(|(o, v)| *o += g * v);
                    }
                }
                for (a, b) in out[t * d..(t + 1) * d].iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-5, "token {t}: {a} vs {b}");
                }
            }
        }
    }
}
