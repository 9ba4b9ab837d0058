//! Whole jobs behind the CLI: `train` from files, `eval` of a model on a data set.

use crate::data::{steps_for_epochs, BatchBy};
use crate::evaluate::{classifier_metrics, generate_ids, DecodeOptions, CLASSIFIER_METRICS};
use crate::trainer::{self, RunOptions, Summary, TrainConfig, TrainData, Validator};
use fisherkit_common::{bail, ensure, Context, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, Model, TextTokenizer};
use fisherkit_tasks::metrics;
use std::path::{Path, PathBuf};

/// Length of a run.
#[derive(Debug, Clone, Copy)]
pub enum RunLength {
    Steps(u64),
    Epochs(u64),
}

/// A `fisherkit train` invocation.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub model_dir: PathBuf,
    pub train_files: Vec<PathBuf>,
    pub valid_file: Option<PathBuf>,
    pub out: PathBuf,
    /// Default: `model_dir/tokenizer.json` when present.
    pub tokenizer: Option<PathBuf>,
    pub mixture_cap: Option<usize>,
    pub mixture_temperature: f64,
    pub max_input_len: usize,
    pub max_target_len: usize,
    /// Override of the model's `dropout_rate`.
    pub dropout: Option<f64>,
    pub length: RunLength,
    /// Metrics computed on generated validation predictions (needs a tokenizer).
    pub valid_metrics: Vec<String>,
    /// At most this many validation examples are generated for the metrics.
    pub valid_generate: usize,
    pub resume: bool,
    pub stop_after: Option<u64>,
    /// Everything but `total_steps`, which comes from `length`.
    pub config: TrainConfig,
}

/// Cut ids to `max` tokens keeping the final EOS. Returns whether it cut.
fn truncate(ids: &mut Vec<u32>, max: usize, eos: u32) -> bool {
    if ids.len() <= max {
        return false;
    }
    ids.truncate(max.saturating_sub(1));
    ids.push(eos);
    true
}

/// Read a JSONL data file (`input`/`target` text with a tokenizer, or `input_ids`/
/// `target_ids`), truncating to the limits with a warning count; for a classifier,
/// `{"text", "label"}` lines as `fisherkit classify` reads them, plus the label.
pub fn read_data(
    path: &Path,
    tokenizer: Option<&TextTokenizer>,
    model: &dyn Model,
    max_in: usize,
    max_tgt: usize,
    quiet: bool,
) -> Result<Vec<Example>> {
    let labels = model.class_labels();
    if !labels.is_empty() {
        // A classifier: encoder inputs with a label each (the tokenizer truncates text
        // to what the positions reach; ids are checked as given).
        return fisherkit_model::data::read_classification(path, tokenizer, Some(labels), true);
    }
    let eos = model.special_tokens().eos;
    let mut examples = fisherkit_model::data::read_examples(
        path,
        tokenizer,
        model.vocab_size(),
        fisherkit_model::data::Targets::for_model(model),
    )?;
    let (mut cut_in, mut cut_tgt) = (0, 0);
    for (i, e) in examples.iter_mut().enumerate() {
        ensure!(
            !e.target_ids.is_empty(),
            "{}: example {} has an empty target",
            path.display(),
            i + 1
        );
        cut_in += usize::from(truncate(&mut e.input_ids, max_in, eos));
        cut_tgt += usize::from(truncate(&mut e.target_ids, max_tgt, eos));
    }
    if (cut_in > 0 || cut_tgt > 0) && !quiet {
        eprintln!(
            "warning: {}: truncated {cut_in} inputs to {max_in} tokens and {cut_tgt} targets to {max_tgt} tokens",
            path.display()
        );
    }
    Ok(examples)
}

/// `--tokenizer`, else the model directory's own (as the model reads it: an encoder's
/// truncates to what its positions reach).
fn load_tokenizer(
    job_tokenizer: Option<&Path>,
    model_dir: &Path,
    model: &dyn Model,
) -> Result<(Option<TextTokenizer>, Option<PathBuf>)> {
    match job_tokenizer {
        Some(p) => {
            ensure!(
                model.class_labels().is_empty(),
                "--tokenizer: a classifier reads the tokenizer.json of its own directory"
            );
            let eos = model.special_tokens().eos;
            Ok((Some(TextTokenizer::load(p, eos)?), Some(p.to_path_buf())))
        }
        None => {
            let path = model_dir.join(fisherkit_model::tokenizer::TOKENIZER_FILE);
            Ok((
                model.tokenizer_in(model_dir)?,
                path.exists().then_some(path),
            ))
        }
    }
}

/// Load a model for training: on the autodiff flavour of `device`, with an optional
/// dropout override.
pub fn load_for_training(
    dir: &Path,
    device: &Device,
    dropout: Option<f64>,
) -> Result<Box<dyn Model>> {
    let mut model = fisherkit_models::load(dir, &device.clone().autodiff())?;
    if let Some(rate) = dropout {
        model.set_dropout(rate)?;
    }
    Ok(model)
}

/// Run a training job. Returns the summary; the model is in `out/model`.
pub fn run_train(job: &TrainJob, device: &Device, quiet: bool) -> Result<Summary> {
    ensure!(!job.train_files.is_empty(), "no --train file given");
    let model = load_for_training(&job.model_dir, device, job.dropout)?;
    let eos = model.special_tokens().eos;
    let (tokenizer, tokenizer_path) =
        load_tokenizer(job.tokenizer.as_deref(), &job.model_dir, &*model)?;
    if let Some(tk) = &tokenizer {
        ensure!(
            tk.vocab_size() <= model.vocab_size(),
            "the tokenizer has {} tokens but the model's vocabulary is {}",
            tk.vocab_size(),
            model.vocab_size()
        );
    }
    let mut sources = Vec::new();
    for f in &job.train_files {
        sources.push(read_data(
            f,
            tokenizer.as_ref(),
            &*model,
            job.max_input_len,
            job.max_target_len,
            quiet,
        )?);
    }
    let train = if sources.len() == 1 {
        sources.pop().expect("one source")
    } else {
        let size = fisherkit_tasks::mixture::default_size(&sources, job.mixture_cap);
        fisherkit_tasks::mixture::sample_mixture(
            &sources,
            size,
            job.mixture_cap,
            job.mixture_temperature,
            job.config.seed,
        )?
    };
    let valid = match &job.valid_file {
        Some(f) => Some(read_data(
            f,
            tokenizer.as_ref(),
            &*model,
            job.max_input_len,
            job.max_target_len,
            quiet,
        )?),
        None => None,
    };
    let mut config = job.config.clone();
    config.total_steps = match job.length {
        RunLength::Steps(n) => n,
        RunLength::Epochs(e) => {
            let lengths: Vec<(usize, usize)> = train
                .iter()
                .map(|e| (e.input_ids.len(), e.target_ids.len()))
                .collect();
            steps_for_epochs(&lengths, config.batch, config.seed, e, config.grad_accum)?
        }
    };
    let s = config.schedule;
    config.schedule =
        crate::schedule::Schedule::new(s.kind, s.lr, s.warmup_steps, config.total_steps)?;
    // Metrics on generated validation predictions.
    let mut validator_fn;
    let mut classifier_validator;
    let mut validator: Option<&mut Validator<'_>> = None;
    if let (false, Some(valid)) = (model.class_labels().is_empty(), &valid) {
        // A classifier's metrics come from its predicted classes (accuracy and macro-F1
        // unless others are asked for).
        let metric_names: Vec<String> =
            if job.valid_metrics.is_empty() || job.valid_metrics == ["exact-match"] {
                CLASSIFIER_METRICS.iter().map(|m| m.to_string()).collect()
            } else {
                job.valid_metrics.clone()
            };
        let examples = &valid[..valid.len().min(job.valid_generate)];
        classifier_validator = move |m: &dyn Model| -> Result<Vec<(String, f64)>> {
            let (scores, _) = classifier_metrics(m, examples, &metric_names, 32)?;
            Ok(scores.metrics.into_iter().collect())
        };
        validator = Some(&mut classifier_validator);
    } else if let (Some(valid_file), Some(tk)) = (&job.valid_file, &tokenizer) {
        if !job.valid_metrics.is_empty() {
            let texts = fisherkit_tasks::load_examples(valid_file).with_context(|| {
                format!(
                    "{}: validation metrics need text targets",
                    valid_file.display()
                )
            })?;
            let n = texts.len().min(job.valid_generate);
            let inputs: Vec<Vec<u32>> = valid.as_ref().expect("read above")[..n]
                .iter()
                .map(|e| e.input_ids.clone())
                .collect();
            let refs: Vec<String> = texts[..n].iter().map(|e| e.target.clone()).collect();
            let metric_names = job.valid_metrics.clone();
            // Predictions need not run past the longest reference by much.
            let longest = valid.as_ref().expect("read above")[..n]
                .iter()
                .map(|e| e.target_ids.len())
                .max()
                .unwrap_or(1);
            let max_new = (longest + 8).min(job.max_target_len);
            validator_fn = move |m: &dyn Model| -> Result<Vec<(String, f64)>> {
                let opts = DecodeOptions {
                    max_new_tokens: max_new,
                    ..Default::default()
                };
                let preds: Vec<String> = generate_ids(m, &inputs, &opts)?
                    .iter()
                    .map(|g| tk.decode(&cut_at_eos(g, eos)))
                    .collect::<Result<_>>()?;
                let scores = metrics::evaluate(&preds, &refs, &metric_names, None)?;
                Ok(scores.metrics.into_iter().collect())
            };
            validator = Some(&mut validator_fn);
        }
    }
    let (_, summary) = trainer::train(
        model,
        TrainData {
            train: &train,
            valid: valid.as_deref(),
        },
        &config,
        RunOptions {
            out: &job.out,
            resume: job.resume,
            stop_after: job.stop_after,
            tokenizer: tokenizer_path.as_deref(),
            validator,
            quiet,
        },
    )?;
    Ok(summary)
}

/// Ids up to (not including) the first EOS.
pub fn cut_at_eos(ids: &[u32], eos: u32) -> Vec<u32> {
    ids.iter().take_while(|&&t| t != eos).copied().collect()
}

/// A `fisherkit eval` invocation.
#[derive(Debug, Clone)]
pub struct EvalJob {
    pub model_dir: PathBuf,
    pub data: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub metrics: Vec<String>,
    pub labels: Option<Vec<String>>,
    pub decode: DecodeOptions,
    /// Write `{"input","target","prediction"}` rows here.
    pub predictions_out: Option<PathBuf>,
}

/// Generate on the data set and score. Returns the scores.
pub fn run_eval(job: &EvalJob, device: &Device) -> Result<metrics::Scores> {
    let model = fisherkit_models::load(&job.model_dir, device)?;
    let eos = model.special_tokens().eos;
    let (tokenizer, _) = load_tokenizer(job.tokenizer.as_deref(), &job.model_dir, &*model)?;
    if !model.class_labels().is_empty() {
        return run_classifier_eval(job, &*model, tokenizer.as_ref());
    }
    let Some(tokenizer) = tokenizer else {
        bail!(
            "{} has no tokenizer.json: pass --tokenizer to turn predictions into text",
            job.model_dir.display()
        );
    };
    let examples = fisherkit_tasks::load_examples(&job.data)?;
    let inputs: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| tokenizer.encode(&e.input))
        .collect::<Result<_>>()?;
    let bar = fisherkit_common::progress::bar(inputs.len() as u64, "examples");
    let mut predictions = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(job.decode.batch_size.max(1) * 4) {
        for g in generate_ids(&*model, chunk, &job.decode)? {
            predictions.push(tokenizer.decode(&cut_at_eos(&g, eos))?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(path) = &job.predictions_out {
        let rows: Vec<serde_json::Value> = examples
            .iter()
            .zip(&predictions)
            .map(
                |(e, p)| serde_json::json!({"input": e.input, "target": e.target, "prediction": p}),
            )
            .collect();
        fisherkit_common::atomic::write_file(path, |w| {
            use std::io::Write;
            for r in &rows {
                writeln!(w, "{r}")?;
            }
            Ok(())
        })?;
    }
    let references: Vec<String> = examples.into_iter().map(|e| e.target).collect();
    metrics::evaluate(
        &predictions,
        &references,
        &job.metrics,
        job.labels.as_deref(),
    )
}

/// `eval` of a classifier: predicted classes against the data's labels.
fn run_classifier_eval(
    job: &EvalJob,
    model: &dyn Model,
    tokenizer: Option<&TextTokenizer>,
) -> Result<metrics::Scores> {
    ensure!(
        job.labels.is_none(),
        "--labels: a classifier's labels are its head's classes ({})",
        model.class_labels().join(",")
    );
    let examples = fisherkit_model::data::read_classification(
        &job.data,
        tokenizer,
        Some(model.class_labels()),
        true,
    )?;
    // The command's default (exact match) is accuracy here; report macro-F1 beside it.
    let metrics: Vec<String> = if job.metrics == ["exact-match"] {
        CLASSIFIER_METRICS.iter().map(|m| m.to_string()).collect()
    } else {
        job.metrics.clone()
    };
    let (scores, predictions) =
        classifier_metrics(model, &examples, &metrics, job.decode.batch_size)?;
    if let Some(path) = &job.predictions_out {
        let labels = model.class_labels();
        fisherkit_common::atomic::write_file(path, |w| {
            use std::io::Write;
            for (e, p) in examples.iter().zip(&predictions) {
                let row =
                    serde_json::json!({"label": labels[e.target_ids[0] as usize], "prediction": p});
                writeln!(w, "{row}")?;
            }
            Ok(())
        })?;
    }
    Ok(scores)
}

/// Check that a batching choice is usable.
pub fn batch_by(batch_size: usize, max_tokens: Option<usize>) -> Result<BatchBy> {
    Ok(match max_tokens {
        Some(0) => bail!("--max-tokens must be positive"),
        Some(t) => BatchBy::Tokens(t),
        None if batch_size == 0 => bail!("--batch-size must be positive"),
        None => BatchBy::Examples(batch_size),
    })
}

/// The model's own loss on examples equals what `score` reports: the mean negative
/// log-likelihood per target token.
pub fn model_loss(model: &dyn Model, examples: &[Example]) -> Result<f64> {
    ensure!(!model.is_training(), "evaluate with dropout off");
    trainer::mean_loss(model, examples, 32)
}
