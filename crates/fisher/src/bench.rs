//! `fisherkit bench fisher`: per-example gradients per second on a randomly initialised
//! T5 (t5-small shape by default; inputs 128, targets 32 tokens), and diagonal PEFs per
//! second for a 2-label classification.

use crate::model::{Item, ModelGradients, Outputs};
use crate::{
    example_diagonal_given, example_diagonal_streamed, top_k_diagonal, ClassSelection,
    GradientModel, Mode,
};
use anyhow::{Context, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub preset: String,
    pub input_len: usize,
    pub target_len: usize,
    pub examples: usize,
    pub top_k: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub preset: String,
    pub parameters: usize,
    pub input_len: usize,
    pub target_len: usize,
    pub examples: usize,
    /// Squared per-example gradients per second (the empirical Fisher's per-example work).
    pub gradients_per_second: f64,
    /// The same through burn's autodiff, when the model has its own backward pass.
    pub autodiff_gradients_per_second: Option<f64>,
    pub diagonal_pefs_per_second: f64,
    /// `peak_gflops_per_s` and `workloads` (one example's squared gradient = one forward
    /// and one backward pass, ≈ 3 forward passes of flops).
    #[serde(flatten)]
    pub share_of_peak: serde_json::Value,
}

fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..n.saturating_sub(1))
        .map(|i| 3 + ((i * 7919 + salt * 104_729) % (vocab - 3)) as u32)
        .collect();
    ids.push(1);
    ids
}

pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let config = fisherkit_models::preset(&opts.preset)?;
    let device = Device::flex().autodiff();
    let mut model = fisherkit_models::init(&config, opts.seed, &device)?;
    model.set_training(false);
    let vocab = model.output_size();
    let items: Vec<Item> = (0..opts.examples)
        .map(|i| Item {
            example: Example::new(
                tokens(opts.input_len, vocab, i),
                tokens(opts.target_len, vocab, i + 1000),
            ),
            label: Some(i % 2),
        })
        .collect();

    // Squared per-example gradients of the target's log-likelihood, as the empirical
    // dataset Fisher computes them (the peer squares its gradients too): through the
    // model's own backward pass, then through autodiff.
    let per_second = |model: &ModelGradients<_>| -> Result<f64> {
        let squared = |(index, item): (usize, &Item)| {
            let selection = ClassSelection::all();
            example_diagonal_given(
                model,
                item,
                None,
                index as u64,
                Mode::Empirical,
                &selection,
                0,
            )
        };
        squared((0, &items[0]))?;
        let start = Instant::now();
        for pair in items.iter().enumerate() {
            std::hint::black_box(squared(pair)?);
        }
        Ok(items.len() as f64 / start.elapsed().as_secs_f64())
    };
    let tokens_model = ModelGradients::new(&model, Outputs::Tokens)?;
    let parameters = crate::param_count(tokens_model.params());
    let gradients_per_second = per_second(&tokens_model)?;
    let autodiff_gradients_per_second = if tokens_model.uses_backprop() {
        Some(per_second(&ModelGradients::autodiff(
            &model,
            Outputs::Tokens,
        )?)?)
    } else {
        None
    };

    // Diagonal PEFs of a 2-label classification (two backward passes per example).
    let labels = Outputs::Labels {
        names: vec!["positive".into(), "negative".into()],
        targets: vec![vec![3, 1], vec![4, 1]],
    };
    let label_model = ModelGradients::new(&model, labels)?;
    let start = Instant::now();
    for item in &items {
        let log_probs = label_model.log_probs(item)?;
        let diagonal =
            example_diagonal_streamed(&label_model, item, &log_probs, &ClassSelection::all())?
                .context("non-finite PEF in the benchmark")?;
        std::hint::black_box(top_k_diagonal(&diagonal, opts.top_k)?);
    }
    let diagonal_pefs_per_second = items.len() as f64 / start.elapsed().as_secs_f64();
    let gradient = fisherkit_model::peak::Workload {
        name: "per_example_gradient",
        flops: 3.0 * model.forward_flops(1, opts.input_len, opts.target_len),
        seconds: 1.0 / gradients_per_second,
    };
    let peak = fisherkit_model::peak::workload_peak(model.dominant_matmul(opts.input_len))?;
    Ok(BenchReport {
        share_of_peak: fisherkit_model::peak::share_of_peak(peak, &[gradient]),
        preset: opts.preset.clone(),
        parameters,
        input_len: opts.input_len,
        target_len: opts.target_len,
        examples: opts.examples,
        gradients_per_second,
        autodiff_gradients_per_second,
        diagonal_pefs_per_second,
    })
}
