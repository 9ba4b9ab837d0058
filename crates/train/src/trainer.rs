//! The training loop over any [`Model`]: micro-batches with gradient accumulation,
//! cross-entropy (+ optional z-loss), gradient-norm clipping, Adafactor/AdamW with a
//! schedule, periodic validation, atomic checkpoints and exact resume.
//!
//! Output directory layout:
//! - `model/` — the final model in the Hugging Face layout (+ `tokenizer.json`);
//! - `checkpoints/step-NNNNNNNN/` — `model/`, `optimizer.safetensors`, `trainer_state.json`;
//! - `metrics.jsonl` — one JSON object per logged step and per validation;
//! - `train_config.json` — the run's settings (a resumed run must match them).

use crate::data::{BatchBy, BatchStream, DataPosition};
use crate::optim::{clip_factor, Optimizer, OptimizerConfig};
use crate::schedule::Schedule;
use fisherkit_common::atomic::{write_json, StagedDir};
use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use fisherkit_common::{bail, ensure, Context, Result};
use fisherkit_model::burn::tensor::activation::log_softmax;
use fisherkit_model::burn::tensor::{Device, Tensor};
use fisherkit_model::host::HostValues;
use fisherkit_model::{gather_targets, Example, LogProbModel, Model, ParamAccess};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that defines a run (saved as `train_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub batch: BatchBy,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    /// Coefficient of the z-loss `logsumexp(logits)²` (mesh TF uses 1e-4); 0 disables it.
    pub z_loss: f64,
    pub seed: u64,
    pub total_steps: u64,
    pub log_every: u64,
    pub eval_every: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub keep_checkpoints: usize,
}

/// What a checkpoint records besides the model and optimiser state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub data_position: DataPosition,
    pub tokens_seen: u64,
    pub last_loss: f64,
}

/// Validation hook: given the model (dropout off) returns named metrics.
pub type Validator<'a> = dyn FnMut(&dyn Model) -> Result<Vec<(String, f64)>> + 'a;

/// Result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: f64,
    pub tokens_per_s: f64,
    pub seconds: f64,
    pub stopped_early: bool,
}

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CONFIG_FILE: &str = "train_config.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// Seed of the dropout masks of one micro-batch: a pure function of the run seed and
/// the position, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut x = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// The differentiable loss terms of one batch.
pub struct LossTerms {
    /// Sum of −log p over the target tokens.
    pub nll: Tensor<1>,
    /// Sum of the z-loss terms over the target tokens, when asked for.
    pub z: Option<Tensor<1>>,
    /// The model's own weighted auxiliary losses (mixture-of-experts routers), a mean
    /// over the batch's tokens; `None` when the model has none.
    pub auxiliary: Option<Tensor<1>>,
}

/// The loss terms of one batch (see [`LossTerms`]).
pub fn batch_loss_terms(model: &dyn Model, batch: &[Example], want_z: bool) -> Result<LossTerms> {
    let (logits, auxiliary) = fisherkit_model::auxiliary::collect(|| model.logits(batch));
    let logits = logits?;
    let auxiliary = auxiliary.into_iter().reduce(|a, b| a + b);
    let log_probs = log_softmax(logits.clone(), 2);
    let z = if want_z {
        // logsumexp = logit - log-softmax, read at vocabulary index 0; pad positions masked.
        let [b, t, _] = logits.dims();
        let lse: Tensor<2> =
            (logits.narrow(2, 0, 1) - log_probs.clone().narrow(2, 0, 1)).reshape([b, t]);
        let mask: Vec<f32> = batch
            .iter()
            .flat_map(|e| (0..t).map(move |i| if i < e.target_ids.len() { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::<2>::from_data(
            fisherkit_model::burn::tensor::TensorData::new(mask, [b, t]),
            &lse.device(),
        );
        Some((lse.square() * mask).sum())
    } else {
        None
    };
    let nll = gather_targets(log_probs, batch)?.sum().neg();
    Ok(LossTerms { nll, z, auxiliary })
}

/// Mean cross-entropy per target token of `examples` (dropout off, no gradients).
pub fn mean_loss(model: &dyn Model, examples: &[Example], batch_size: usize) -> Result<f64> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].input_ids.len(), examples[i].target_ids.len()));
    let (mut total, mut tokens) = (0.0f64, 0usize);
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<Example> = chunk.iter().map(|&i| examples[i].clone()).collect();
        let terms = batch_loss_terms(model, &batch, false)?;
        total += f64::from(terms.nll.into_scalar::<f32>());
        tokens += batch.iter().map(|e| e.target_ids.len()).sum::<usize>();
    }
    Ok(total / tokens.max(1) as f64)
}

/// Elements per parallel task of the step's element-wise passes over gradients.
const CHUNK: usize = 1 << 16;

/// The newest complete checkpoint in `out`, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let dir = out.join(CHECKPOINTS_DIR);
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(step) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if path.join(STATE_FILE).exists() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn checkpoint_steps(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = out.join(CHECKPOINTS_DIR);
    let mut v = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if let Some(step) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                v.push((step, path));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Write a checkpoint atomically (staged directory, renamed into place), then prune
/// the oldest beyond `keep`.
fn write_checkpoint(
    out: &Path,
    model: &dyn Model,
    optimizer: &Optimizer,
    state: &TrainerState,
    tokenizer: Option<&Path>,
    keep: usize,
) -> Result<PathBuf> {
    let dir = out
        .join(CHECKPOINTS_DIR)
        .join(format!("step-{:08}", state.step));
    let staged = StagedDir::new(&dir, true)?;
    model.save_checkpoint(&staged.path().join("model"), tokenizer, false)?;
    let tensors: Vec<(String, OwnedTensor)> = optimizer
        .state_tensors()
        .into_iter()
        .map(|(name, shape, values)| (name, OwnedTensor::f32(shape, &values)))
        .collect();
    let meta = HashMap::from([("step".to_string(), optimizer.step().to_string())]);
    st::write(&staged.path().join(OPTIMIZER_FILE), &tensors, meta)?;
    write_json(&staged.path().join(STATE_FILE), state)?;
    let path = staged
        .commit()
        .with_context(|| format!("writing checkpoint {}", dir.display()))?;
    let all = checkpoint_steps(out)?;
    if all.len() > keep.max(1) {
        for (_, old) in &all[..all.len() - keep.max(1)] {
            std::fs::remove_dir_all(old).ok();
        }
    }
    Ok(path)
}

/// Load a checkpoint: model (onto `device`), optimiser state and trainer state.
pub fn load_checkpoint(
    dir: &Path,
    device: &Device,
    optimizer: &mut Optimizer,
) -> Result<(Box<dyn Model>, TrainerState)> {
    let model = fisherkit_models::load(&dir.join("model"), device)?;
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .with_context(|| format!("reading {}", dir.join(STATE_FILE).display()))?,
    )
    .with_context(|| format!("parsing {}", dir.join(STATE_FILE).display()))?;
    let file = MappedFile::open(&dir.join(OPTIMIZER_FILE))?;
    let mut tensors = Vec::new();
    for name in file.names_in_order()? {
        let (shape, values) = file.read_f32(&name)?;
        tensors.push((name, shape, values));
    }
    optimizer.load_state(state.step, tensors)?;
    Ok((model, state))
}

/// Append-only JSONL log; on resume, rows after the checkpoint's step are dropped.
struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        if let Some(step) = resume_step {
            if path.exists() {
                let text = std::fs::read_to_string(path)?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                fisherkit_common::atomic::write_bytes(path, kept.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }

    fn write(&mut self, row: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{row}").context("writing metrics.jsonl")?;
        Ok(())
    }
}

/// Inputs of [`train`] besides the model.
pub struct TrainData<'a> {
    pub train: &'a [Example],
    /// Held-out examples for the validation loss.
    pub valid: Option<&'a [Example]>,
}

/// Options of one invocation (not part of the run's identity).
pub struct RunOptions<'a> {
    pub out: &'a Path,
    pub resume: bool,
    /// Stop after this many updates in this invocation (a checkpoint is written).
    pub stop_after: Option<u64>,
    /// Copied next to every saved model.
    pub tokenizer: Option<&'a Path>,
    pub validator: Option<&'a mut Validator<'a>>,
    pub quiet: bool,
}

/// Train `model` (on an autodiff device) according to `config`. Returns the trained
/// model and a summary; the final model is saved under `out/model` when the run
/// reaches `total_steps`.
pub fn train(
    mut model: Box<dyn Model>,
    data: TrainData<'_>,
    config: &TrainConfig,
    mut run: RunOptions<'_>,
) -> Result<(Box<dyn Model>, Summary)> {
    let out = run.out;
    ensure!(
        model.device().is_autodiff(),
        "training needs the model on an autodiff device"
    );
    ensure!(
        config.grad_accum >= 1,
        "gradient accumulation must be at least 1"
    );
    ensure!(config.total_steps >= 1, "nothing to do: 0 training steps");
    ensure!(!data.train.is_empty(), "no training examples");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let device = model.device();
    let mut optimizer = Optimizer::new(config.optimizer);
    let mut state = TrainerState {
        step: 0,
        data_position: DataPosition::default(),
        tokens_seen: 0,
        last_loss: f64::NAN,
    };

    let config_path = out.join(CONFIG_FILE);
    let mut resumed_from = None;
    if run.resume {
        if let Some(ckpt) = latest_checkpoint(out)? {
            // Compared as text: both sides come from the same serializer, and parsing
            // floats back (e.g. Adafactor's eps1 = 1e-30) need not round-trip exactly.
            let saved = std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?;
            ensure!(
                saved.trim_end() == serde_json::to_string_pretty(config)?,
                "--resume with different settings than the run in {} (see {}); use the same flags or a new --out",
                out.display(),
                config_path.display()
            );
            let (mut loaded, s) = load_checkpoint(&ckpt, &device, &mut optimizer)?;
            // The run's dropout rate, not the one the checkpoint was saved with.
            loaded.set_dropout(model.dropout())?;
            model = loaded;
            state = s;
            resumed_from = Some(ckpt);
        }
    } else if latest_checkpoint(out)?.is_some() {
        bail!("{} already holds checkpoints: pass --resume to continue that run, or choose a new --out", out.display());
    }
    write_json(&config_path, config)?;
    let mut log = MetricsLog::open(
        &out.join(METRICS_FILE),
        resumed_from.as_ref().map(|_| state.step),
    )?;
    if let Some(ckpt) = &resumed_from {
        if !run.quiet {
            eprintln!("resuming from {} (step {})", ckpt.display(), state.step);
        }
    }

    let lengths: Vec<(usize, usize)> = data
        .train
        .iter()
        .map(|e| (e.input_ids.len(), e.target_ids.len()))
        .collect();
    let mut stream = BatchStream::new(lengths, config.batch, config.seed, state.data_position)?;
    let schedule = config.schedule;
    let bar = fisherkit_common::progress::bar(config.total_steps, "steps");
    bar.set_position(state.step);
    let started = Instant::now();
    let mut tokens_this_run = 0u64;
    let mut steps_this_run = 0u64;
    let mut last_good: Option<PathBuf> = resumed_from.clone();
    model.set_training(true);

    while state.step < config.total_steps {
        if run.stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let step = state.step + 1;
        // Gather the step's micro-batches first: the loss is normalised by the number
        // of target tokens of the whole step, as if it were one batch.
        let micro: Vec<Vec<usize>> = (0..config.grad_accum)
            .map(|_| stream.next_batch())
            .collect::<Result<_>>()?;
        let step_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| data.train[i].input_ids.len() + data.train[i].target_ids.len())
            .sum();
        let batches: Vec<Vec<Example>> = micro
            .iter()
            .map(|ids| ids.iter().map(|&i| data.train[i].clone()).collect())
            .collect();
        let lr = schedule.lr_at(step);
        let stats = match train_step(&mut *model, &mut optimizer, &batches, config, lr, step) {
            Ok(stats) => stats,
            Err(e) => {
                bar.abandon();
                let keep = match &last_good {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                return Err(e.context(format!("step {step} ({keep})")));
            }
        };
        let (loss, grad_norm, z_mean) = (stats.loss, stats.grad_norm, stats.z_loss);
        state.step = step;
        state.data_position = stream.position();
        state.tokens_seen += step_tokens as u64;
        state.last_loss = loss;
        tokens_this_run += step_tokens as u64;
        steps_this_run += 1;
        let elapsed = started.elapsed().as_secs_f64();
        let tps = tokens_this_run as f64 / elapsed.max(1e-9);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4} · {tps:.0} tok/s"));
        if step.is_multiple_of(config.log_every.max(1)) || step == config.total_steps {
            log.write(serde_json::json!({
                "step": step, "epoch": state.data_position.epoch, "loss": loss,
                "z_loss": z_mean, "aux_loss": stats.auxiliary_loss,
                "lr": lr, "grad_norm": grad_norm, "tokens": state.tokens_seen,
                "tokens_per_s": tps, "elapsed_s": elapsed,
            }))?;
        }
        let eval_now =
            config.eval_every.is_some_and(|n| step.is_multiple_of(n)) || step == config.total_steps;
        if eval_now && (data.valid.is_some() || run.validator.is_some()) {
            model.set_training(false);
            let mut row = serde_json::json!({"step": step});
            let eval_model = model.without_autodiff();
            if let Some(valid) = data.valid {
                row["valid_loss"] = mean_loss(&*eval_model, valid, 32)?.into();
            }
            if let Some(validator) = run.validator.as_deref_mut() {
                for (name, value) in validator(&*eval_model)? {
                    row[format!("valid_{name}")] = value.into();
                }
            }
            model.set_training(true);
            if !run.quiet {
                bar.println(format!("step {step}: {row}"));
            }
            log.write(row)?;
        }
        let stopping =
            run.stop_after.is_some_and(|n| steps_this_run >= n) && step < config.total_steps;
        if config
            .checkpoint_every
            .is_some_and(|n| step.is_multiple_of(n))
            || stopping
        {
            last_good = Some(write_checkpoint(
                out,
                &*model,
                &optimizer,
                &state,
                run.tokenizer,
                config.keep_checkpoints,
            )?);
        }
    }
    bar.finish_and_clear();
    let finished = state.step >= config.total_steps;
    if finished {
        model.set_training(false);
        model.save_checkpoint(&out.join("model"), run.tokenizer, true)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        model,
        Summary {
            steps: state.step,
            final_loss: state.last_loss,
            tokens_per_s: tokens_this_run as f64 / seconds.max(1e-9),
            seconds,
            stopped_early: !finished,
        },
    ))
}

/// Loss statistics of one update.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean cross-entropy per target token (+ z-loss and auxiliary terms) over the step's
    /// batches.
    pub loss: f64,
    /// Mean z-loss per target token, when enabled.
    pub z_loss: Option<f64>,
    /// The model's weighted auxiliary loss (mixture-of-experts routers; included in
    /// `loss`), when it has one.
    pub auxiliary_loss: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimiser update over `batches` (gradient accumulation): the loss is normalised
/// by the number of target tokens of all batches together, as if they were one batch.
/// A non-finite loss or gradient is an error and leaves the model untouched.
pub fn train_step(
    model: &mut dyn Model,
    optimizer: &mut Optimizer,
    batches: &[Vec<Example>],
    config: &TrainConfig,
    lr: f64,
    step: u64,
) -> Result<StepStats> {
    // On a rayon worker thread, as decoding: a step issues hundreds of small parallel
    // tensor operations, and issued from outside the pool each one wakes the workers and
    // puts the caller to sleep (the quickstart: 9.1 M context switches, 6 min 32 s; on a
    // worker 0.5 M, 4 min).
    rayon::scope(|_| {
        let device = model.device();
        let step_targets: usize = batches.iter().flatten().map(|e| e.target_ids.len()).sum();
        ensure!(step_targets > 0, "a training step without target tokens");
        let specs = model.param_specs();
        // Each parameter's gradient summed over the batches, where the backward pass left
        // it when there is one batch (`None`: the loss does not reach the parameter).
        let mut gradients: Vec<Option<HostValues>> = specs.iter().map(|_| None).collect();
        let (mut nll_sum, mut z_sum) = (0.0f64, 0.0f64);
        // Σ over batches of the auxiliary loss × the batch's target tokens.
        let mut auxiliary_sum: Option<f64> = None;
        for (k, batch) in batches.iter().enumerate() {
            device.seed(dropout_seed(config.seed, step, k));
            let LossTerms { nll, z, auxiliary } =
                batch_loss_terms(model, batch, config.z_loss > 0.0)?;
            let mut loss = nll.clone();
            if let Some(z) = &z {
                loss = loss + z.clone().mul_scalar(config.z_loss);
            }
            // A per-token mean, weighted by the batch's share of the step's targets: the
            // step's auxiliary loss is the mean over its batches as if they were one.
            if let Some(auxiliary) = &auxiliary {
                let targets: usize = batch.iter().map(|e| e.target_ids.len()).sum();
                loss = loss + auxiliary.clone().mul_scalar(targets as f64);
                *auxiliary_sum.get_or_insert(0.0) +=
                    f64::from(auxiliary.clone().inner().into_scalar::<f32>()) * targets as f64;
            }
            let grads = loss.div_scalar(step_targets as f64).backward();
            nll_sum += f64::from(nll.inner().into_scalar::<f32>());
            if let Some(z) = z {
                z_sum += f64::from(z.inner().into_scalar::<f32>());
            }
            for ((_, p), sum) in model.named_params().iter().zip(&mut gradients) {
                if let Some(g) = p.grad_host(&grads)? {
                    *sum = Some(match sum.take() {
                        None => g,
                        Some(sum) => {
                            let mut sum = sum.into_vec();
                            sum.par_iter_mut()
                                .zip(g.values())
                                .with_min_len(CHUNK)
                                .for_each(|(s, g)| *s += g);
                            HostValues::Read(sum)
                        }
                    });
                }
            }
        }
        let auxiliary = auxiliary_sum.map(|sum| sum / step_targets as f64);
        let loss =
            (nll_sum + config.z_loss * z_sum) / step_targets as f64 + auxiliary.unwrap_or(0.0);
        let grad_norm = gradients
            .iter()
            .flatten()
            .map(|g| {
                g.values()
                    .par_chunks(CHUNK)
                    .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt();
        ensure!(
            loss.is_finite() && grad_norm.is_finite(),
            "training diverged: loss {loss}, gradient norm {grad_norm}; stopped without applying the update. Try a lower --lr or gradient clipping (--max-grad-norm)"
        );
        let scale = config
            .max_grad_norm
            .map_or(1.0, |m| clip_factor(grad_norm, m)) as f32;
        optimizer.begin_step();
        for (((name, mut p), spec), g) in model
            .named_params_mut()
            .into_iter()
            .zip(&specs)
            .zip(gradients)
        {
            let Some(mut g) = g else { continue };
            if scale < 1.0 {
                let mut scaled = g.into_vec();
                scaled
                    .par_iter_mut()
                    .with_min_len(CHUNK)
                    .for_each(|g| *g *= scale);
                g = HostValues::Read(scaled);
            }
            let (shape, factored) = match spec.shape[..] {
                [rows, cols] => ([rows, cols], true),
                _ => ([1, spec.numel()], false),
            };
            let old = p
                .as_ref()
                .host_values()
                .with_context(|| format!("parameter {name}"))?;
            let new = optimizer.update(&name, old.values(), g.values(), shape, factored, lr)?;
            drop(old);
            p.set_values(new)
                .with_context(|| format!("parameter {name}"))?;
        }
        Ok(StepStats {
            loss,
            z_loss: (config.z_loss > 0.0).then(|| z_sum / step_targets as f64),
            auxiliary_loss: auxiliary,
            grad_norm,
        })
    })
}
