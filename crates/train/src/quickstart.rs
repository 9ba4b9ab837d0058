//! The main job: build the synthetic suite, train a tokenizer and a tiny T5 on all
//! tasks at once, evaluate it per task and report against each task's chance level.

use crate::data::BatchBy;
use crate::evaluate::{predict, DecodeOptions};
use crate::optim::{AdamWConfig, OptimizerConfig};
use crate::schedule::{Schedule, ScheduleKind};
use crate::trainer::{self, RunOptions, TrainConfig, TrainData};
use fisherkit_common::atomic::{write_json, StagedDir};
use fisherkit_common::{ensure, Result};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, Model, ParamAccess};
use fisherkit_tasks::{metrics, synthetic, tokenizer};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub train_per_task: usize,
    pub test_per_task: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub d_model: usize,
    pub layers: usize,
    pub force: bool,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("quickstart-out"),
            seed: 0,
            train_per_task: 4000,
            test_per_task: 200,
            steps: 2500,
            batch_size: 64,
            lr: 2e-3,
            d_model: 128,
            layers: 2,
            force: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub metric: String,
    pub score: f64,
    pub chance: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuickstartReport {
    pub tasks: Vec<TaskResult>,
    pub parameters: usize,
    pub vocab_size: usize,
    pub train_steps: u64,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub tokens_per_s: f64,
}

/// The `config.json` of the quickstart's tiny model, for the loader registry: a T5
/// v1.1-style shape (gated-GELU, untied head), no dropout; other keys take the
/// architecture's defaults.
pub fn tiny_config(vocab_size: usize, d_model: usize, layers: usize) -> Value {
    json!({
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": 32,
        "d_ff": 2 * d_model,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": (d_model / 32).max(1),
        "relative_attention_num_buckets": 16,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false,
        "scale_decoder_outputs": false,
    })
}

/// Tokenise text examples for the model (EOS appended to input and target).
pub fn encode(
    tk: &tokenizers::Tokenizer,
    examples: &[fisherkit_tasks::Example],
) -> Result<Vec<Example>> {
    examples
        .iter()
        .map(|e| {
            Ok(Example::new(
                tokenizer::encode(tk, &e.input)?,
                tokenizer::encode(tk, &e.target)?,
            ))
        })
        .collect()
}

/// The quickstart's training recipe: AdamW (weight decay 0.01), `lr` with 5 % linear
/// warm-up and linear decay over `steps`, batches of `batch_size` examples,
/// gradient-norm clipping 1.0, validation five times per run.
pub fn recipe(lr: f64, steps: u64, batch_size: usize, seed: u64) -> Result<TrainConfig> {
    Ok(TrainConfig {
        optimizer: OptimizerConfig::Adamw(AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        }),
        schedule: Schedule::new(ScheduleKind::LinearDecay, lr, steps / 20, steps)?,
        batch: BatchBy::Examples(batch_size),
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        z_loss: 0.0,
        seed,
        total_steps: steps,
        log_every: 10,
        eval_every: Some((steps / 5).max(1)),
        checkpoint_every: None,
        keep_checkpoints: 1,
    })
}

/// The quickstart's tokenizer: SentencePiece-Unigram with 256 pieces, trained on the
/// inputs and targets of `examples`.
pub fn suite_tokenizer(examples: &[fisherkit_tasks::Example]) -> Result<tokenizers::Tokenizer> {
    let corpus: Vec<String> = examples
        .iter()
        .flat_map(|e| [e.input.clone(), e.target.clone()])
        .collect();
    tokenizer::train(
        &corpus,
        &tokenizer::TrainOptions {
            vocab_size: 256,
            ..Default::default()
        },
    )
}

/// Greedy predictions of `model` for the inputs of `examples`, in order.
pub fn greedy_predictions(
    model: &dyn Model,
    tk: &tokenizers::Tokenizer,
    examples: &[fisherkit_tasks::Example],
) -> Result<Vec<String>> {
    let inputs: Vec<String> = examples.iter().map(|e| e.input.clone()).collect();
    // Room for the longest reference (EOS included) and a few tokens more, so a
    // prediction that runs on is seen as wrong rather than cut to a right answer.
    let longest = encode(tk, examples)?
        .iter()
        .map(|e| e.target_ids.len())
        .max()
        .unwrap_or(1);
    let decode = DecodeOptions {
        max_new_tokens: longest + 4,
        num_beams: 1,
        batch_size: 100,
    };
    predict(model, tk, &inputs, &decode)
}

/// Run the quickstart; `log` receives one line per phase.
pub fn run(
    opts: &QuickstartOptions,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<QuickstartReport> {
    let started = Instant::now();
    ensure!(
        opts.steps > 0 && opts.batch_size > 0,
        "steps and batch size must be positive"
    );
    let staged = StagedDir::new(&opts.out, opts.force)?;
    let dir = staged.path().to_path_buf();

    let names = synthetic::all_names();
    let sizes = synthetic::SplitSizes {
        train: opts.train_per_task,
        valid: 50,
        test: opts.test_per_task,
    };
    let manifest = synthetic::write_suite(&dir.join("data"), &names, sizes, opts.seed)?;
    log(&format!(
        "1/4 synthetic suite: {} tasks × {} training examples → data/",
        names.len(),
        opts.train_per_task
    ));

    let mut train_text = Vec::new();
    let mut valid_text = Vec::new();
    let mut test_sets = Vec::new();
    for t in &manifest.tasks {
        let d = dir.join("data").join(&t.name);
        train_text.extend(fisherkit_tasks::load_examples(&d.join("train.jsonl"))?);
        valid_text.extend(fisherkit_tasks::load_examples(&d.join("valid.jsonl"))?);
        test_sets.push(fisherkit_tasks::load_examples(&d.join("test.jsonl"))?);
    }
    let tk = suite_tokenizer(&train_text)?;
    let tk_path = dir.join("tokenizer.json");
    tokenizer::save(&tk, &tk_path)?;
    let vocab_size = tk.get_vocab_size(true);
    log(&format!(
        "2/4 tokenizer: {vocab_size} tokens (Unigram, T5 convention) → tokenizer.json"
    ));

    let config = tiny_config(vocab_size, opts.d_model, opts.layers);
    let model = fisherkit_models::init(&config, opts.seed, &device.clone().autodiff())?;
    let parameters = model.num_params();
    let train = encode(&tk, &train_text)?;
    let valid = encode(&tk, &valid_text)?;
    let train_config = recipe(opts.lr, opts.steps, opts.batch_size, opts.seed)?;
    log(&format!(
        "3/4 training a T5 of {parameters} parameters ({} layers, d_model {}) for {} steps of {} examples",
        opts.layers, opts.d_model, opts.steps, opts.batch_size
    ));
    let (model, summary) = trainer::train(
        model,
        TrainData {
            train: &train,
            valid: Some(&valid),
        },
        &train_config,
        RunOptions {
            out: &dir.join("train"),
            resume: false,
            stop_after: None,
            tokenizer: Some(&tk_path),
            validator: None,
            quiet: false,
        },
    )?;

    let eval_model = model.without_autodiff();
    let mut results = Vec::new();
    for (t, test) in manifest.tasks.iter().zip(&test_sets) {
        let refs: Vec<String> = test.iter().map(|e| e.target.clone()).collect();
        let preds = greedy_predictions(&*eval_model, &tk, test)?;
        let scores = metrics::evaluate(
            &preds,
            &refs,
            std::slice::from_ref(&t.metric),
            t.labels.as_deref(),
        )?;
        results.push(TaskResult {
            task: t.name.clone(),
            metric: t.metric.clone(),
            score: scores.metrics[&t.metric],
            chance: t.chance,
        });
    }
    log("4/4 evaluated every task on its test split");
    let report = QuickstartReport {
        tasks: results,
        parameters,
        vocab_size,
        train_steps: summary.steps,
        final_loss: summary.final_loss,
        train_seconds: summary.seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        tokens_per_s: summary.tokens_per_s,
    };
    write_json(&dir.join("results.json"), &report)?;
    staged.commit()?;
    Ok(report)
}

/// The report as a plain-text table.
pub fn table(report: &QuickstartReport, out: &Path) -> String {
    let mut s = format!(
        "{:<8} {:<12} {:>7} {:>8}\n",
        "task", "metric", "score", "chance"
    );
    for r in &report.tasks {
        s.push_str(&format!(
            "{:<8} {:<12} {:>6.1}% {:>7.1}%\n",
            r.task, r.metric, r.score, r.chance
        ));
    }
    s.push_str(&format!(
        "{} parameters, {} steps in {:.0} s ({:.0} tokens/s), final loss {:.3}; total {:.0} s. Outputs in {}\n",
        report.parameters,
        report.train_steps,
        report.train_seconds,
        report.tokens_per_s,
        report.final_loss,
        report.total_seconds,
        out.display()
    ));
    s
}
