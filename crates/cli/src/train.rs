//! Arguments of the training, evaluation, task and tokenizer commands.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use fisherkit_model::burn::tensor::Device;
use fisherkit_tasks::{glue, metrics, mixture, synthetic, tokenizer};
use fisherkit_train::evaluate::DecodeOptions;
use fisherkit_train::job::{self, EvalJob, RunLength, TrainJob};
use fisherkit_train::optim::{AdafactorConfig, AdamWConfig, OptimizerConfig};
use fisherkit_train::schedule::{Schedule, ScheduleKind};
use fisherkit_train::trainer::TrainConfig;
use fisherkit_train::{bench as train_bench, quickstart as qs};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model directory in the Hugging Face layout (e.g. from `fisherkit init`).
    #[arg(long)]
    model: PathBuf,
    /// Training JSONL (`{"input","target"}` text, or `input_ids`/`target_ids`). Several
    /// files are mixed examples-proportionally (see --mixture-cap, --mixture-temperature).
    #[arg(long, num_args = 1.., required = true)]
    train: Vec<PathBuf>,
    /// Validation JSONL: loss (and --valid-metrics on generated predictions) every
    /// --eval-every steps and at the end.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Output directory: model/, checkpoints/, metrics.jsonl, train_config.json.
    #[arg(long)]
    out: PathBuf,
    /// tokenizer.json (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// adafactor (the paper's) or adamw.
    #[arg(long, default_value = "adafactor")]
    optimizer: String,
    /// Peak learning rate (default: 1e-3 for Adafactor, as T5 fine-tuning; 1e-4 for AdamW).
    #[arg(long)]
    lr: Option<f64>,
    /// constant, inverse-sqrt (T5: lr·sqrt(w/max(step,w))) or linear-decay.
    #[arg(long, default_value = "constant")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Examples per (micro-)batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Token budget per (micro-)batch, padded tokens counted; batches are length-bucketed.
    /// Overrides --batch-size.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Micro-batches per update.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Dropout rate (default: the model config's dropout_rate).
    #[arg(long)]
    dropout: Option<f64>,
    /// z-loss coefficient (mesh TF uses 1e-4).
    #[arg(long, default_value_t = 0.0)]
    z_loss: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Adafactor first-moment decay (default: none, i.e. beta1 = 0).
    #[arg(long)]
    beta1: Option<f64>,
    /// Adafactor: do not scale steps by the parameter RMS.
    #[arg(long)]
    no_scale_parameter: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of updates.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Number of passes over the training data (default 1 when --steps is not given).
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long, default_value = "exact-match", value_delimiter = ',')]
    valid_metrics: Vec<String>,
    /// Generate on at most this many validation examples for the metrics.
    #[arg(long, default_value_t = 200)]
    valid_generate: usize,
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Continue the run in --out from its last checkpoint (same flags required).
    #[arg(long)]
    resume: bool,
    /// Stop this invocation after N updates, writing a checkpoint (continue with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Longer inputs are truncated (keeping EOS), with a warning count.
    #[arg(long, default_value_t = 512)]
    max_input_len: usize,
    /// Longer targets are truncated (keeping EOS), with a warning count.
    #[arg(long, default_value_t = 128)]
    max_target_len: usize,
    /// With several --train files: per-file size limit in the mixing rates.
    #[arg(long)]
    mixture_cap: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    mixture_temperature: f64,
}

fn optimizer_config(args: &TrainArgs) -> Result<(OptimizerConfig, f64)> {
    Ok(match args.optimizer.as_str() {
        "adafactor" => (
            OptimizerConfig::Adafactor(AdafactorConfig {
                beta1: args.beta1,
                scale_parameter: !args.no_scale_parameter,
                ..Default::default()
            }),
            args.lr.unwrap_or(1e-3),
        ),
        "adamw" => (
            OptimizerConfig::Adamw(AdamWConfig {
                weight_decay: args.weight_decay,
                beta1: args.beta1.unwrap_or(0.9),
                ..Default::default()
            }),
            args.lr.unwrap_or(1e-4),
        ),
        other => bail!("unknown optimizer {other:?}; expected adafactor or adamw"),
    })
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let (optimizer, lr) = optimizer_config(&args)?;
    let kind: ScheduleKind = args.schedule.parse()?;
    let length = match (args.steps, args.epochs) {
        (Some(s), _) => RunLength::Steps(s),
        (None, e) => RunLength::Epochs(e.unwrap_or(1)),
    };
    // The total is filled in (and the schedule validated) once the run length is known.
    let schedule = Schedule {
        kind,
        lr,
        warmup_steps: args.warmup_steps,
        total_steps: args.steps.unwrap_or(0),
    };
    let config = TrainConfig {
        optimizer,
        schedule,
        batch: job::batch_by(args.batch_size, args.max_tokens)?,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        z_loss: args.z_loss,
        seed: args.seed,
        total_steps: 0,
        log_every: args.log_every,
        eval_every: args.eval_every,
        checkpoint_every: Some(args.checkpoint_every).filter(|&n| n > 0),
        keep_checkpoints: args.keep_checkpoints,
    };
    let job = TrainJob {
        model_dir: args.model,
        train_files: args.train,
        valid_file: args.valid,
        out: args.out.clone(),
        tokenizer: args.tokenizer,
        mixture_cap: args.mixture_cap,
        mixture_temperature: args.mixture_temperature,
        max_input_len: args.max_input_len,
        max_target_len: args.max_target_len,
        dropout: args.dropout,
        length,
        valid_metrics: args.valid_metrics,
        valid_generate: args.valid_generate,
        resume: args.resume,
        stop_after: args.stop_after,
        config,
    };
    let summary = job::run_train(&job, &Device::flex(), false)?;
    if summary.stopped_early {
        eprintln!(
            "stopped after step {} (loss {:.4}); continue with --resume",
            summary.steps, summary.final_loss
        );
    } else {
        eprintln!(
            "trained {} steps in {:.1} s ({:.0} tokens/s), final loss {:.4}; model in {}",
            summary.steps,
            summary.seconds,
            summary.tokens_per_s,
            summary.final_loss,
            args.out.join("model").display()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (HF layout) to generate with.
    #[arg(long, required_unless_present = "predictions")]
    model: Option<PathBuf>,
    /// JSONL with `{"input", "target"}`: the references (targets) to score against.
    #[arg(long)]
    data: PathBuf,
    /// tokenizer.json (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Beam size (1 = greedy; beams use the GNMT length penalty, alpha 0.6).
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Also write `{"input","target","prediction"}` rows to this JSONL file.
    #[arg(long)]
    save_predictions: Option<PathBuf>,
    /// Score existing predictions instead of generating: a JSONL file with a
    /// `"prediction"` string per line, aligned with --data.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Comma-separated metrics: exact-match, accuracy, f1, macro-f1, mcc, pearson,
    /// spearman, bleu, rouge.
    #[arg(long, value_delimiter = ',', default_value = "exact-match")]
    metrics: Vec<String>,
    /// Class labels for class metrics, comma-separated (default: the distinct targets;
    /// with --task, the task's labels).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// A GLUE-style task whose label set and metrics to use.
    #[arg(long)]
    task: Option<String>,
    /// Write the metrics JSON here (atomically) as well as to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let (metric_names, labels) = resolve_metrics(&args)?;
    if let Some(model) = &args.model {
        let job = EvalJob {
            model_dir: model.clone(),
            data: args.data.clone(),
            tokenizer: args.tokenizer.clone(),
            metrics: metric_names,
            labels,
            decode: DecodeOptions {
                max_new_tokens: args.max_new_tokens,
                num_beams: args.num_beams,
                batch_size: args.batch_size,
            },
            predictions_out: args.save_predictions.clone(),
        };
        let scores = job::run_eval(&job, &Device::flex())?;
        return crate::emit_json(&scores, args.out.as_deref());
    }
    let examples = fisherkit_tasks::load_examples(&args.data)?;
    let Some(pred_path) = &args.predictions else {
        bail!("pass --model DIR or --predictions FILE");
    };
    let predictions = read_predictions(pred_path)?;
    if predictions.len() != examples.len() {
        bail!(
            "{} has {} predictions but {} has {} examples",
            pred_path.display(),
            predictions.len(),
            args.data.display(),
            examples.len()
        );
    }
    let references: Vec<String> = examples.into_iter().map(|e| e.target).collect();
    let scores = metrics::evaluate(&predictions, &references, &metric_names, labels.as_deref())?;
    crate::emit_json(&scores, args.out.as_deref())
}

fn read_predictions(path: &std::path::Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Row {
        prediction: String,
    }
    Ok(fisherkit_common::jsonl::read_all::<Row>(path)?
        .into_iter()
        .map(|r| r.value.prediction)
        .collect())
}

/// Metrics and labels from --metrics/--labels, defaulting to the task's when --task is given.
fn resolve_metrics(args: &EvalArgs) -> Result<(Vec<String>, Option<Vec<String>>)> {
    let task: Option<glue::Task> = args.task.as_deref().map(str::parse).transpose()?;
    let user_metrics = args.metrics != ["exact-match"];
    let metric_names = match task {
        Some(t) if !user_metrics => t.default_metrics().iter().map(|s| s.to_string()).collect(),
        _ => args.metrics.clone(),
    };
    let labels = args.labels.clone().or_else(|| {
        task.and_then(|t| t.labels())
            .map(|l| l.iter().map(|s| s.to_string()).collect())
    });
    Ok((metric_names, labels))
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(Subcommand, Debug)]
enum TokenizerCommand {
    /// Train a SentencePiece-Unigram tokenizer in the T5 convention (pad 0, eos 1, unk 2,
    /// 100 sentinels at the top of the vocabulary).
    Train {
        /// Text files (one text per line) or JSONL files (`text`, or `input`/`target`).
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Total vocabulary size, sentinels included.
        #[arg(long, default_value_t = 32100)]
        vocab_size: usize,
        #[arg(long, default_value_t = 16)]
        max_piece_length: usize,
        /// Output `tokenizer.json`.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn tokenizer(args: TokenizerArgs) -> anyhow::Result<()> {
    match args.command {
        TokenizerCommand::Train {
            input,
            vocab_size,
            max_piece_length,
            out,
        } => {
            let opts = tokenizer::TrainOptions {
                vocab_size,
                max_piece_length,
                show_progress: std::env::var_os("FISHERKIT_NO_PROGRESS").is_none(),
            };
            let n = tokenizer::train_files(&input, &opts, &out)?;
            if n < vocab_size {
                eprintln!("note: the corpus supports only {n} tokens (asked for {vocab_size})");
            }
            eprintln!(
                "wrote {} ({n} tokens, <extra_id_0> = {})",
                out.display(),
                n - 1
            );
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand, Debug)]
enum TasksCommand {
    /// Write the built-in synthetic task suite: DIR/<task>/{train,valid,test}.jsonl and
    /// DIR/suite.json.
    Synthetic {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Comma-separated subset of the tasks (default: all).
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        #[arg(long, default_value_t = 2000)]
        train_size: usize,
        #[arg(long, default_value_t = 100)]
        valid_size: usize,
        #[arg(long, default_value_t = 200)]
        test_size: usize,
        /// Replace an existing output directory.
        #[arg(long)]
        force: bool,
    },
    /// Turn raw GLUE-style rows into text-to-text `{"input", "target"}` examples.
    Format {
        /// cola, sst2, mnli, qnli, rte, mrpc, qqp, stsb, wnli, en-de, en-fr, en-ro, summarize.
        #[arg(long)]
        task: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Examples-proportional mixture of several JSONL files.
    Mix {
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Per-data-set size limit in the rates (T5's artificial limit K).
        #[arg(long)]
        cap: Option<usize>,
        /// Mixing temperature (1 = proportional).
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Number of examples to draw (default: sum of the capped sizes).
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// A text classification corpus stored one folder per class (DIR/<class>/*.txt, e.g.
    /// BBC News from scripts/fetch-real.sh) as a fixed, seeded, stratified split:
    /// OUT/{train,valid,test}.jsonl of {"text", "label", "file"}.
    Folders {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Share of each class held out for validation.
        #[arg(long, default_value_t = 0.1)]
        valid: f64,
        /// Share of each class held out for testing.
        #[arg(long, default_value_t = 0.2)]
        test: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep each text's first N characters (whitespace normalised first).
        #[arg(long)]
        max_chars: Option<usize>,
        /// Replace an existing output directory.
        #[arg(long)]
        force: bool,
    },
    /// List the synthetic tasks and their mechanisms.
    List,
}

pub fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    match args.command {
        TasksCommand::Synthetic {
            out,
            seed,
            tasks,
            train_size,
            valid_size,
            test_size,
            force,
        } => {
            let names: Vec<String> = tasks.unwrap_or_else(|| {
                synthetic::all_names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            });
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let sizes = synthetic::SplitSizes {
                train: train_size,
                valid: valid_size,
                test: test_size,
            };
            let staged = fisherkit_common::atomic::StagedDir::new(&out, force)?;
            let manifest = synthetic::write_suite(staged.path(), &names, sizes, seed)?;
            staged.commit()?;
            for t in &manifest.tasks {
                eprintln!(
                    "{:<8} {:<11} chance {:>5.1}%  {}",
                    t.name, t.metric, t.chance, t.description
                );
            }
            eprintln!("wrote {} tasks to {}", manifest.tasks.len(), out.display());
            Ok(())
        }
        TasksCommand::Folders {
            dir,
            out,
            valid,
            test,
            seed,
            max_chars,
            force,
        } => {
            use fisherkit_tasks::folders;
            let documents = folders::read_corpus(&dir, max_chars)?;
            let splits = folders::split(&documents, folders::Fractions { valid, test }, seed)?;
            let staged = fisherkit_common::atomic::StagedDir::new(&out, force)?;
            for (name, part) in ["train", "valid", "test"].iter().zip(&splits) {
                fisherkit_common::atomic::write_file(
                    &staged.path().join(format!("{name}.jsonl")),
                    |w| {
                        use std::io::Write;
                        for document in part {
                            writeln!(w, "{}", serde_json::to_string(document)?)?;
                        }
                        Ok(())
                    },
                )?;
            }
            staged.commit()?;
            eprintln!(
                "wrote {} train, {} valid, {} test documents to {}",
                splits[0].len(),
                splits[1].len(),
                splits[2].len(),
                out.display()
            );
            Ok(())
        }
        TasksCommand::Format { task, input, out } => {
            let task: glue::Task = task.parse()?;
            let (examples, unlabeled) = glue::format_file(task, &input)?;
            fisherkit_tasks::write_examples(&out, &examples)?;
            if unlabeled > 0 {
                eprintln!("note: {unlabeled} unlabeled rows (label -1) have an empty target");
            }
            eprintln!("wrote {} examples to {}", examples.len(), out.display());
            Ok(())
        }
        TasksCommand::Mix {
            input,
            cap,
            temperature,
            size,
            seed,
            out,
        } => {
            let sources = input
                .iter()
                .map(|p| fisherkit_tasks::load_examples(p))
                .collect::<Result<Vec<_>>>()?;
            let counts: Vec<usize> = sources.iter().map(Vec::len).collect();
            let rates = mixture::mixing_rates(&counts, cap, temperature)?;
            let size = size.unwrap_or_else(|| mixture::default_size(&sources, cap));
            let mixed = mixture::sample_mixture(&sources, size, cap, temperature, seed)?;
            fisherkit_tasks::write_examples(&out, &mixed)?;
            for ((p, n), r) in input.iter().zip(&counts).zip(&rates) {
                eprintln!("{:>7} examples  rate {:.4}  {}", n, r, p.display());
            }
            eprintln!("wrote {} examples to {}", mixed.len(), out.display());
            Ok(())
        }
        TasksCommand::List => {
            for t in synthetic::TASKS {
                println!(
                    "{:<8} skills: {:<40} {}",
                    t.name,
                    t.skills.join(","),
                    t.description
                );
            }
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output directory (data/, tokenizer.json, train/, results.json).
    #[arg(long, default_value = "quickstart-out")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().steps)]
    steps: u64,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().train_per_task)]
    train_per_task: usize,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().batch_size)]
    batch_size: usize,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().d_model)]
    d_model: usize,
    #[arg(long, default_value_t = qs::QuickstartOptions::default().layers)]
    layers: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

pub fn quickstart(args: QuickstartArgs) -> anyhow::Result<()> {
    let opts = qs::QuickstartOptions {
        out: args.out,
        seed: args.seed,
        steps: args.steps,
        train_per_task: args.train_per_task,
        batch_size: args.batch_size,
        lr: args.lr,
        d_model: args.d_model,
        layers: args.layers,
        force: args.force,
        ..Default::default()
    };
    let report = qs::run(&opts, &Device::flex(), &mut |line| eprintln!("{line}"))?;
    print!("{}", qs::table(&report, &opts.out));
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    shape: crate::t5::BenchShape,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Time Adafactor instead of AdamW.
    #[arg(long)]
    adafactor: bool,
    /// Put a classification head of this many classes on an encoder preset (bert-tiny,
    /// minilm-l6, ...): its step's target is one class per example.
    #[arg(long)]
    num_labels: Option<usize>,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let opts = train_bench::BenchOptions {
        preset: args.shape.preset,
        batch: args.shape.batch,
        input_len: args.shape.input_len,
        target_len: args.shape.target_len,
        warmup: args.warmup,
        steps: args.steps,
        adafactor: args.adafactor,
        num_labels: args.num_labels,
    };
    let report = train_bench::run(&opts, &Device::flex())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
