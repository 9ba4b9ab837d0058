//! `fisherkit bench train`: tokens per second of one full training step
//! (forward, backward, optimiser update) on random tokens, as the peer script measures.

use crate::data::BatchBy;
use crate::optim::{AdafactorConfig, AdamWConfig, Optimizer, OptimizerConfig};
use crate::schedule::{Schedule, ScheduleKind};
use crate::trainer::{train_step, TrainConfig};
use fisherkit_common::Result;
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel, ParamAccess};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub preset: String,
    pub batch: usize,
    pub input_len: usize,
    pub target_len: usize,
    pub warmup: usize,
    pub steps: usize,
    pub adafactor: bool,
    /// Classes of a classification head on an encoder preset (the step's target is one
    /// class per example).
    pub num_labels: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub preset: String,
    pub optimizer: String,
    pub parameters: usize,
    pub batch: usize,
    pub input_len: usize,
    pub target_len: usize,
    pub step_seconds: f64,
    pub tokens_per_s: f64,
    pub threads: usize,
    /// `peak_gflops_per_s` and `workloads` (a step = one forward and one backward pass,
    /// ≈ 3 forward passes of flops).
    #[serde(flatten)]
    pub share_of_peak: serde_json::Value,
}

pub fn run(opts: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let mut config = fisherkit_models::preset(&opts.preset)?;
    if let Some(n) = opts.num_labels {
        config["num_labels"] = serde_json::json!(n);
    }
    let mut model = fisherkit_models::init(&config, 0, &device.clone().autodiff())?;
    model.set_dropout(0.0)?;
    model.set_training(true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let vocab = model.vocab_size() as u32;
    let classes = model.class_labels().len() as u32;
    let target_len = if classes > 0 { 1 } else { opts.target_len };
    let batch: Vec<Example> = (0..opts.batch)
        .map(|_| Example {
            token_type_ids: Vec::new(),
            input_ids: (0..opts.input_len)
                .map(|_| rng.random_range(3..vocab))
                .collect(),
            target_ids: (0..target_len)
                .map(|_| match classes {
                    0 => rng.random_range(3..vocab),
                    classes => rng.random_range(0..classes),
                })
                .collect(),
        })
        .collect();
    let optimizer_config = if opts.adafactor {
        OptimizerConfig::Adafactor(AdafactorConfig::default())
    } else {
        OptimizerConfig::Adamw(AdamWConfig::default())
    };
    let train_config = TrainConfig {
        optimizer: optimizer_config,
        schedule: Schedule::new(ScheduleKind::Constant, 1e-4, 0, 0)?,
        batch: BatchBy::Examples(opts.batch),
        grad_accum: 1,
        max_grad_norm: None,
        z_loss: 0.0,
        seed: 0,
        total_steps: (opts.warmup + opts.steps) as u64,
        log_every: 1,
        eval_every: None,
        checkpoint_every: None,
        keep_checkpoints: 1,
    };
    let mut optimizer = Optimizer::new(optimizer_config);
    let batches = vec![batch];
    let bar = fisherkit_common::progress::bar((opts.warmup + opts.steps) as u64, "steps");
    let mut t = Instant::now();
    for step in 1..=(opts.warmup + opts.steps) as u64 {
        // The clock starts once the warm-up steps are done.
        if step == opts.warmup as u64 + 1 {
            t = Instant::now();
        }
        train_step(
            &mut *model,
            &mut optimizer,
            &batches,
            &train_config,
            1e-4,
            step,
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let step_seconds = t.elapsed().as_secs_f64() / opts.steps.max(1) as f64;
    let step = fisherkit_model::peak::Workload {
        name: "train_step",
        flops: 3.0 * model.forward_flops(opts.batch, opts.input_len, target_len),
        seconds: step_seconds,
    };
    let peak =
        fisherkit_model::peak::workload_peak(model.dominant_matmul(opts.batch * opts.input_len))?;
    Ok(BenchReport {
        share_of_peak: fisherkit_model::peak::share_of_peak(peak, &[step]),
        preset: opts.preset.clone(),
        optimizer: if opts.adafactor { "adafactor" } else { "adamw" }.into(),
        parameters: model.num_params(),
        batch: opts.batch,
        input_len: opts.input_len,
        target_len,
        step_seconds,
        // A classifier's target is a class, not tokens.
        tokens_per_s: (opts.batch * (opts.input_len + target_len * usize::from(classes == 0)))
            as f64
            / step_seconds,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}
