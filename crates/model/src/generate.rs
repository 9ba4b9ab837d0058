//! Decoding, written once for every architecture that generates: greedy, sampling
//! (temperature, top-k, top-p, seeded) and beam search with Hugging Face conventions,
//! incremental: a model's [`IncrementalDecoder`] starts from the inputs once (an
//! encoder–decoder encodes them and computes the cross-attention keys/values; a
//! single-stack LM reads the prompt) and then feeds only the newest token per step,
//! with cached self-attention keys/values.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::SpecialTokens;

/// How beam hypotheses of different lengths are compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthPenalty {
    /// HF: `sum_logprobs / len^a` (`a = 0` compares raw sums). `len` counts the generated
    /// tokens including EOS, as transformers ≥ 4.5x does.
    Power(f64),
    /// GNMT / the T5 paper: `sum_logprobs / ((5 + len) / 6)^alpha`.
    Gnmt(f64),
}

impl LengthPenalty {
    /// The score a hypothesis of `len` tokens with log-probability sum `sum_logprobs`
    /// is ranked by.
    pub fn normalise(self, sum_logprobs: f64, len: usize) -> f64 {
        let len = len as f64;
        match self {
            LengthPenalty::Power(a) => sum_logprobs / len.powf(a),
            LengthPenalty::Gnmt(alpha) => sum_logprobs / ((5.0 + len) / 6.0).powf(alpha),
        }
    }
}

/// Sampling instead of greedy choice (HF `do_sample=True`): logits divided by the
/// temperature, then cut to the `top_k` most likely tokens, then to the smallest set
/// whose probability reaches `top_p`, then one draw per row from a generator seeded
/// with `seed` (rows in order, so a run is reproducible).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

/// Decoding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// 1: greedy (or sampling).
    pub num_beams: usize,
    pub length_penalty: LengthPenalty,
    pub max_new_tokens: usize,
    /// EOS is forbidden before this many tokens (HF `min_new_tokens`; benchmarks force
    /// full-length outputs with it).
    pub min_new_tokens: usize,
    /// `None`: greedy (with one beam).
    pub sampling: Option<Sampling>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            num_beams: 1,
            length_penalty: LengthPenalty::Power(1.0),
            max_new_tokens: 32,
            min_new_tokens: 0,
            sampling: None,
        }
    }
}

/// What decoding needs of a model.
pub trait IncrementalDecoder {
    /// The decoding state (cached keys/values) of a batch of rows.
    type Cache;

    /// Start from a batch of inputs: the state and the logits `[rows, vocab]` of the
    /// first new token.
    fn begin(&self, inputs: &[Vec<u32>]) -> Result<(Self::Cache, Tensor<2>)>;

    /// Feed one token per row; the logits `[rows, vocab]` of the next.
    fn step(&self, cache: &mut Self::Cache, tokens: &[u32]) -> Result<Tensor<2>>;

    /// Keep/duplicate rows of the state (beam search).
    fn select_rows(&self, cache: &mut Self::Cache, rows: &[usize]);

    fn special_tokens(&self) -> SpecialTokens;

    /// Inputs decoded together must have one length (a single-stack LM continues each
    /// prompt at its own position); [`generate`] groups them.
    fn one_length_batches(&self) -> bool;
}

/// Ids `[rows, 1]` of one token per row.
pub fn step_ids(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [tokens.len(), 1]), device)
}

/// What a decoder step returns per row.
#[derive(Clone, Copy, PartialEq)]
enum StepScores {
    /// Raw logits: greedy decoding takes their argmax, as HF does (and skips a
    /// vocabulary-wide log-softmax per step); sampling scales them.
    Logits,
    /// Log-softmax: beam search adds them up.
    LogProbs,
}

/// The logits `[rows, vocab]` of one step as scores per row, with `forbidden` (EOS
/// before `min_new_tokens`: HF's min-length processor sets its score to -inf) removed.
fn step_scores(logits: Tensor<2>, forbidden: Option<u32>, kind: StepScores) -> Vec<Vec<f32>> {
    let [_, vocab] = logits.dims();
    let scores = match kind {
        StepScores::Logits => logits,
        StepScores::LogProbs => log_softmax(logits, 1),
    };
    let scores: Vec<f32> = scores.try_into_vec_as::<f32>().expect("f32 readback");
    scores
        .chunks(vocab)
        .map(|row| {
            let mut row = row.to_vec();
            if let Some(token) = forbidden {
                row[token as usize] = f32::NEG_INFINITY;
            }
            row
        })
        .collect()
}

/// Decode a batch of inputs; returns the generated ids per input (start token and
/// prompt excluded, EOS included when produced).
pub fn generate<D: IncrementalDecoder + Sync + ?Sized>(
    model: &D,
    inputs: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    ensure!(options.num_beams >= 1, "num_beams must be at least 1");
    ensure!(
        options.max_new_tokens >= 1,
        "max_new_tokens must be at least 1"
    );
    if let Some(sampling) = &options.sampling {
        ensure!(
            options.num_beams == 1,
            "sampling draws one continuation per input: it needs num_beams 1"
        );
        ensure!(
            sampling.temperature > 0.0 && sampling.temperature.is_finite(),
            "temperature must be a positive number, got {}",
            sampling.temperature
        );
        ensure!(sampling.top_k != Some(0), "top_k must be at least 1");
        if let Some(p) = sampling.top_p {
            ensure!(p > 0.0 && p <= 1.0, "top_p must be in (0, 1], got {p}");
        }
    }
    // Decode on a rayon worker thread: every step issues dozens of small parallel
    // products, and issued from outside the pool each one wakes the workers and puts the
    // caller to sleep (measured: the decoding loop runs ~20 % faster on a worker).
    rayon::scope(|_| {
        if !model.one_length_batches() {
            return decode_batch(model, inputs, options);
        }
        let mut by_length: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            by_length.entry(input.len()).or_default().push(i);
        }
        let mut outputs = vec![Vec::new(); inputs.len()];
        for indices in by_length.into_values() {
            let group: Vec<Vec<u32>> = indices.iter().map(|&i| inputs[i].clone()).collect();
            for (i, output) in indices
                .into_iter()
                .zip(decode_batch(model, &group, options)?)
            {
                outputs[i] = output;
            }
        }
        Ok(outputs)
    })
}

fn decode_batch<D: IncrementalDecoder + ?Sized>(
    model: &D,
    inputs: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    if options.num_beams == 1 {
        one_path(model, inputs, options)
    } else {
        beam_search(model, inputs, options)
    }
}

/// The logits of the next step: the first step's from starting, later ones by feeding
/// `last`.
fn next_logits<D: IncrementalDecoder + ?Sized>(
    model: &D,
    cache: &mut D::Cache,
    first: &mut Option<Tensor<2>>,
    last: &[u32],
) -> Result<Tensor<2>> {
    match first.take() {
        Some(logits) => Ok(logits),
        None => model.step(cache, last),
    }
}

/// One token drawn from a row of logits as [`Sampling`] says (`u`: a uniform draw in
/// [0, 1)).
pub fn sample_token(row: &[f32], sampling: &Sampling, u: f64) -> u32 {
    let scaled: Vec<f64> = row
        .iter()
        .map(|&v| v as f64 / sampling.temperature)
        .collect();
    // Most likely first (ties by id); -inf (forbidden) never kept.
    let mut order: Vec<usize> = (0..row.len())
        .filter(|&i| scaled[i] > f64::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
    if let Some(k) = sampling.top_k {
        // HF keeps every token scoring at least the k-th score.
        if let Some(&kth) = order.get(k - 1) {
            let cut = scaled[kth];
            order.retain(|&i| scaled[i] >= cut);
        }
    }
    let max = scaled[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| (scaled[i] - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = order.len();
    if let Some(p) = sampling.top_p {
        // The smallest most-likely set whose probability reaches p (at least one token).
        let mut mass = 0.0;
        for (n, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut target = u * kept;
    for (n, w) in weights[..keep].iter().enumerate() {
        if target < *w {
            return order[n] as u32;
        }
        target -= w;
    }
    order[keep - 1] as u32
}

/// Greedy decoding, or sampling when the options say so: one continuation per row.
fn one_path<D: IncrementalDecoder + ?Sized>(
    model: &D,
    inputs: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let tokens = model.special_tokens();
    let (mut cache, first) = model.begin(inputs)?;
    let mut first = Some(first);
    let mut rng = options.sampling.map(|s| StdRng::seed_from_u64(s.seed));
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); inputs.len()];
    let mut finished = vec![false; inputs.len()];
    let mut last = vec![tokens.pad; inputs.len()];
    for step in 0..options.max_new_tokens {
        let forbid_eos = step < options.min_new_tokens;
        let logits = next_logits(model, &mut cache, &mut first, &last)?;
        let rows = step_scores(logits, forbid_eos.then_some(tokens.eos), StepScores::Logits);
        for (i, row) in rows.iter().enumerate() {
            // Finished rows keep decoding padding (as HF does) but nothing is recorded.
            let token = if finished[i] {
                tokens.pad
            } else {
                match (&options.sampling, &mut rng) {
                    (Some(sampling), Some(rng)) => sample_token(row, sampling, rng.random()),
                    _ => crate::argmax(row) as u32,
                }
            };
            if !finished[i] {
                outputs[i].push(token);
                finished[i] = token == tokens.eos;
            }
            last[i] = token;
        }
        if finished.iter().all(|&f| f) {
            break;
        }
    }
    Ok(outputs)
}

/// The finished hypotheses of one input: the best `num_beams` by normalised score.
struct Hypotheses {
    best: Vec<(f64, Vec<u32>)>,
    num_beams: usize,
}

impl Hypotheses {
    fn add(&mut self, score: f64, tokens: Vec<u32>) {
        self.best.push((score, tokens));
        self.best.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.best.truncate(self.num_beams);
    }

    /// HF `early_stopping=True`: done as soon as `num_beams` hypotheses are finished.
    fn is_done(&self) -> bool {
        self.best.len() >= self.num_beams
    }
}

/// Beam search as HF `generate(num_beams=K, early_stopping=True)`: each step takes the
/// top 2K continuations over all beams; an EOS continuation ranked within the first K
/// becomes a finished hypothesis, the best K non-EOS continuations become the new beams.
/// At the length limit the running beams join the finished ones.
fn beam_search<D: IncrementalDecoder + ?Sized>(
    model: &D,
    inputs: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let tokens = model.special_tokens();
    let k = options.num_beams;
    let (mut cache, first) = model.begin(inputs)?;
    // Every input's row is repeated K times: row b*K + j is beam j of input b.
    let rows: Vec<usize> = (0..inputs.len())
        .flat_map(|b| std::iter::repeat_n(b, k))
        .collect();
    model.select_rows(&mut cache, &rows);
    let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &first.device());
    let mut first = Some(first.select(0, index));
    let mut beams: Vec<Vec<u32>> = vec![Vec::new(); inputs.len() * k];
    // Only beam 0 is live at the start, so the first step does not pick K copies.
    let mut scores: Vec<f64> = (0..inputs.len() * k)
        .map(|r| if r % k == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut hypotheses: Vec<Hypotheses> = (0..inputs.len())
        .map(|_| Hypotheses {
            best: Vec::new(),
            num_beams: k,
        })
        .collect();
    let mut last = vec![tokens.pad; inputs.len() * k];
    for step in 0..options.max_new_tokens {
        let forbid_eos = step < options.min_new_tokens;
        let logits = next_logits(model, &mut cache, &mut first, &last)?;
        let log_probs = step_scores(
            logits,
            forbid_eos.then_some(tokens.eos),
            StepScores::LogProbs,
        );
        let mut next_rows = Vec::with_capacity(inputs.len() * k);
        let mut next_beams = Vec::with_capacity(inputs.len() * k);
        let mut next_scores = Vec::with_capacity(inputs.len() * k);
        for (b, hyps) in hypotheses.iter_mut().enumerate() {
            if hyps.is_done() {
                // Keep the rows alive with padding so the batch shape stays fixed.
                for j in 0..k {
                    next_rows.push(b * k + j);
                    next_beams.push(beams[b * k + j].clone());
                    next_scores.push(scores[b * k + j]);
                }
                continue;
            }
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for j in 0..k {
                let row = b * k + j;
                for (token, &lp) in log_probs[row].iter().enumerate() {
                    candidates.push((scores[row] + lp as f64, row, token as u32));
                }
            }
            let top = 2 * k;
            candidates.select_nth_unstable_by(top - 1, |a, c| c.0.total_cmp(&a.0));
            candidates.truncate(top);
            candidates.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2)));
            let mut kept = 0;
            for (rank, &(score, row, token)) in candidates.iter().enumerate() {
                if token == tokens.eos {
                    if rank < k {
                        let mut tokens = beams[row].clone();
                        tokens.push(token);
                        let normalised = options.length_penalty.normalise(score, tokens.len());
                        hyps.add(normalised, tokens);
                    }
                } else if kept < k {
                    let mut tokens = beams[row].clone();
                    tokens.push(token);
                    next_rows.push(row);
                    next_beams.push(tokens);
                    next_scores.push(score);
                    kept += 1;
                }
            }
        }
        model.select_rows(&mut cache, &next_rows);
        last = next_beams
            .iter()
            .map(|t| *t.last().unwrap_or(&tokens.pad))
            .collect();
        beams = next_beams;
        scores = next_scores;
        if hypotheses.iter().all(Hypotheses::is_done) {
            break;
        }
    }
    // Length limit: running beams of unfinished inputs compete with the finished ones.
    for (b, hyps) in hypotheses.iter_mut().enumerate() {
        if hyps.is_done() {
            continue;
        }
        for j in 0..k {
            let row = b * k + j;
            let normalised = options
                .length_penalty
                .normalise(scores[row], beams[row].len());
            hyps.add(normalised, beams[row].clone());
        }
    }
    Ok(hypotheses
        .into_iter()
        .map(|h| {
            h.best
                .into_iter()
                .next()
                .map(|(_, t)| t)
                .unwrap_or_default()
        })
        .collect())
}
