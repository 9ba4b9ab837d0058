//! What every experiment does the same way: its output directory (refuse foreign
//! directories, resume with the same settings), the synthetic suite with its tokenizer,
//! training runs with the quickstart's recipe, and resumable phases.

use anyhow::{ensure, Context, Result};
use fisherkit_common::atomic::{write_json, StagedDir};
use fisherkit_fisher::job::{self, OutputsSpec, PefJob};
use fisherkit_fisher::ClassSelection;
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::Model;
use fisherkit_npeff::fit::{self, FitSettings, RunOptions as FitRun};
use fisherkit_npeff::pef::PefKind;
use fisherkit_tasks::{synthetic, tokenizer};
use fisherkit_train::quickstart;
use fisherkit_train::trainer::{self, RunOptions, TrainData};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

/// Refuse a directory that holds something else or another experiment's settings
/// (`experiment.json`); with `force`, start an experiment directory from scratch (a
/// directory that is not an experiment's is never deleted).
pub fn prepare_out_dir(out: &Path, force: bool, settings: &Value) -> Result<()> {
    let path = out.join("experiment.json");
    if out.exists() {
        ensure!(out.is_dir(), "--out {} is not a directory", out.display());
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        ensure!(
            empty || path.exists(),
            "--out {} exists and is not an experiment directory (no experiment.json); choose another --out",
            out.display()
        );
        if force {
            std::fs::remove_dir_all(out)
                .with_context(|| format!("removing {} (--force)", out.display()))?;
        } else if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let saved: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            ensure!(
                saved == *settings,
                "{} holds an experiment with other settings (see {}): use the same flags to resume, --force to start over, or another --out",
                out.display(),
                path.display()
            );
            return Ok(());
        }
    }
    write_json(&path, settings)
}

/// Rewrites a freshly generated suite directory before its tokenizer is trained (an
/// experiment's planted change to a task).
pub type SuiteEdit<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// Every task of the suite (train / 50 valid / `test` examples each), changed by `edit`,
/// and a tokenizer trained on all their training examples, in one atomically renamed
/// directory.
pub fn write_suite(
    dir: &Path,
    train: usize,
    test: usize,
    seed: u64,
    edit: Option<SuiteEdit<'_>>,
) -> Result<()> {
    let staged = StagedDir::new(dir, false)?;
    let sizes = synthetic::SplitSizes {
        train,
        valid: 50,
        test,
    };
    let names = synthetic::all_names();
    synthetic::write_suite(staged.path(), &names, sizes, seed)?;
    if let Some(edit) = edit {
        edit(staged.path())?;
    }
    let mut examples = Vec::new();
    for name in &names {
        examples.extend(load_split(staged.path(), name, "train")?);
    }
    tokenizer::save(
        &quickstart::suite_tokenizer(&examples)?,
        &staged.path().join("tokenizer.json"),
    )?;
    staged.commit()?;
    Ok(())
}

pub fn load_split(dir: &Path, task: &str, split: &str) -> Result<Vec<fisherkit_tasks::Example>> {
    fisherkit_tasks::load_examples(&dir.join(task).join(format!("{split}.jsonl")))
}

/// The optimisation settings of one training run.
pub struct Training {
    pub lr: f64,
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
}

/// Train `model` on the training splits of `tasks` in `data_dir` with the quickstart's
/// recipe, checkpointing so an interrupted run continues where it stopped.
pub fn train_on(
    model: Box<dyn Model>,
    tasks: &[&str],
    training: &Training,
    data_dir: &Path,
    tk: &Tokenizer,
    out: &Path,
) -> Result<()> {
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for task in tasks {
        train.extend(quickstart::encode(
            tk,
            &load_split(data_dir, task, "train")?,
        )?);
        valid.extend(quickstart::encode(
            tk,
            &load_split(data_dir, task, "valid")?,
        )?);
    }
    let mut config = quickstart::recipe(
        training.lr,
        training.steps,
        training.batch_size,
        training.seed,
    )?;
    config.checkpoint_every = Some((training.steps / 4).max(1));
    let tk_path = data_dir.join("tokenizer.json");
    trainer::train(
        model,
        TrainData {
            train: &train,
            valid: Some(&valid),
        },
        &config,
        RunOptions {
            out,
            resume: true,
            stop_after: None,
            tokenizer: Some(&tk_path),
            validator: None,
            quiet: true,
        },
    )?;
    Ok(())
}

/// A fresh quickstart-shaped model (`d_model`, `layers`) trained on every task of the
/// suite in `data_dir` (its tokenizer's vocabulary), into `out` (model in `out/model`).
pub fn train_on_suite(
    data_dir: &Path,
    d_model: usize,
    layers: usize,
    training: &Training,
    out: &Path,
) -> Result<()> {
    let tk = tokenizer::load(&data_dir.join("tokenizer.json"))?;
    let model = fisherkit_models::init(
        &quickstart::tiny_config(tk.get_vocab_size(true), d_model, layers),
        training.seed,
        &Device::flex().autodiff(),
    )?;
    train_on(model, &synthetic::all_names(), training, data_dir, &tk, out)
}

/// The phase that trains a fresh model on every task of the suite in `data_dir` into
/// `out/train` ([`train_on_suite`]); returns the model's directory.
pub fn train_phase(
    phases: &mut Phases<'_>,
    data_dir: &Path,
    d_model: usize,
    layers: usize,
    training: &Training,
    out: &Path,
) -> Result<std::path::PathBuf> {
    let train_dir = out.join("train");
    let model_dir = train_dir.join("model");
    phases.run("training on every task", model_dir.exists(), || {
        train_on_suite(data_dir, d_model, layers, training, &train_dir)
    })?;
    Ok(model_dir)
}

/// PEFs of `model` on `data` (resumable, as `fisherkit pefs`).
pub fn compute_pefs(
    model: &Path,
    data: &Path,
    out: &Path,
    outputs: OutputsSpec,
    kind: PefKind,
    top_k: usize,
    selection: ClassSelection,
) -> Result<()> {
    job::with_model_source(model, |source| {
        job::run_pefs(
            source,
            &PefJob {
                data: data.to_path_buf(),
                out: out.to_path_buf(),
                outputs: outputs.clone(),
                kind,
                top_k,
                selection: selection.clone(),
                examples: None,
                batch_size: 8,
                examples_per_shard: 256,
                overwrite: false,
                gradients: Default::default(),
            },
        )
    })?;
    Ok(())
}

/// An NPEFF fit run to the end in one go (no checkpoints: the phase reruns if cut).
pub fn fit_npeff(pefs: &Path, settings: &FitSettings, out: &Path) -> Result<()> {
    let run = FitRun {
        log_every: 10,
        checkpoint_every: 0,
        resume: false,
        stop_after: None,
    };
    fit::fit(pefs, settings, &run, out)?;
    Ok(())
}

/// Runs an experiment's phases in order: a phase whose output exists is skipped (so an
/// interrupted run resumes); each logs one line and its time.
pub struct Phases<'a> {
    log: &'a mut dyn FnMut(&str),
    /// Seconds per phase run by this invocation (None: skipped, its output existed).
    pub seconds: Vec<(String, Option<f64>)>,
}

impl<'a> Phases<'a> {
    pub fn new(log: &'a mut dyn FnMut(&str)) -> Self {
        Self {
            log,
            seconds: Vec::new(),
        }
    }

    pub fn run(&mut self, name: &str, done: bool, work: impl FnOnce() -> Result<()>) -> Result<()> {
        if done {
            (self.log)(&format!("{name}: output exists, skipped"));
            self.seconds.push((name.to_string(), None));
            return Ok(());
        }
        let start = Instant::now();
        work().with_context(|| format!("phase {name}"))?;
        let s = start.elapsed().as_secs_f64();
        (self.log)(&format!("{name}: done in {s:.1} s"));
        self.seconds.push((name.to_string(), Some(s)));
        Ok(())
    }
}
