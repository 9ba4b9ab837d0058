//! Arguments of `fisherkit experiment`: paper experiments run end to end on built-in data.

use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use fisherkit_experiment::merge_synthetic::{self as ms, Options};
use fisherkit_experiment::npeff_heuristic as nh;
use fisherkit_experiment::npeff_synthetic as ns;
use fisherkit_merge::search;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    command: ExperimentCommand,
}

#[derive(Subcommand, Debug)]
enum ExperimentCommand {
    /// Isotropic vs Fisher merging of two fine-tunes of one pre-trained tiny T5 across
    /// the coefficient grid, on the synthetic suite (results.jsonl, summary.json, SVG plot).
    MergeSynthetic(MergeSyntheticArgs),
    /// NPEFF against known mechanisms: a multi-task tiny T5 on the synthetic suite, PEFs
    /// of held-out examples of every task, D- and LRM-NPEFF, alignment of components with
    /// tasks and skills, perturbation ratios, and controls that should fail (summary.json,
    /// HTML reports).
    NpeffSynthetic(NpeffSyntheticArgs),
    /// NPEFF on a flawed heuristic: a planted shortcut (a hint that is the answer in 95 %
    /// of one task's training examples), LRM-NPEFF of the misclassified held-out examples,
    /// which component follows the hint, and whether moving along it repairs the
    /// counter-examples (summary.json).
    NpeffHeuristic(NpeffHeuristicArgs),
}

#[derive(Args, Debug)]
pub struct NpeffHeuristicArgs {
    /// Output directory; a rerun with the same settings resumes, skipping finished phases.
    #[arg(long, default_value = "npeff-heuristic-out")]
    out: PathBuf,
    /// Delete an existing output directory of this experiment and start over.
    #[arg(long)]
    force: bool,
    /// The small profile (a minute or two) instead of the full one.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The labelled task the shortcut is planted in.
    #[arg(long, default_value = "count")]
    task: String,
    /// Fraction of its training examples whose hint is the answer.
    #[arg(long, default_value_t = 0.95)]
    shortcut_rate: f64,
    /// Training steps [full: 1500, quick: 200].
    #[arg(long)]
    steps: Option<u64>,
    /// Held-out examples of the task [full: 200, quick: 40].
    #[arg(long)]
    eval_examples: Option<usize>,
    /// LRM-NPEFF components [full: 6, quick: 3].
    #[arg(long)]
    components: Option<usize>,
}

#[derive(Args, Debug)]
pub struct NpeffSyntheticArgs {
    /// Output directory; a rerun with the same settings resumes, skipping finished phases.
    #[arg(long, default_value = "npeff-synthetic-out")]
    out: PathBuf,
    /// Delete an existing output directory of this experiment and start over.
    #[arg(long)]
    force: bool,
    /// The small profile (a couple of minutes; noisier numbers) instead of the full one.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training examples per task [full: 1000, quick: 200].
    #[arg(long)]
    train_per_task: Option<usize>,
    /// Training steps of the multi-task model [full: 1500, quick: 150].
    #[arg(long)]
    steps: Option<u64>,
    /// [full: 64, quick: 32]
    #[arg(long)]
    d_model: Option<usize>,
    /// [full: 2, quick: 1]
    #[arg(long)]
    layers: Option<usize>,
    /// Held-out examples per task the PEFs are computed on [full: 40, quick: 8].
    #[arg(long)]
    pef_examples_per_task: Option<usize>,
    /// NPEFF components r [full: 16, quick: 8].
    #[arg(long)]
    components: Option<usize>,
    /// Top examples per component for purity and perturbations [full: 16, quick: 4].
    #[arg(long)]
    top: Option<usize>,
    /// Baseline examples per component [full: 64, quick: 16].
    #[arg(long)]
    baseline: Option<usize>,
    /// Baseline KL the perturbation size is tuned to, per component [0.01].
    #[arg(long)]
    target_kl: Option<f64>,
}

#[derive(Args, Debug)]
pub struct MergeSyntheticArgs {
    /// Output directory; a rerun with the same settings resumes, skipping finished phases.
    #[arg(long, default_value = "merge-synthetic-out")]
    out: PathBuf,
    /// Delete an existing output directory and start over.
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The two tasks A,B (A is the target: weight λ). See `fisherkit tasks list`.
    #[arg(long, default_value = "count,parity", value_name = "A,B")]
    tasks: String,
    /// Training examples per task (pre-training uses every task but A and B).
    #[arg(long, default_value_t = Options::default().train_per_task)]
    train_per_task: usize,
    /// Held-out test examples per task every merge is scored on.
    #[arg(long, default_value_t = Options::default().eval_per_task)]
    eval_per_task: usize,
    #[arg(long, default_value_t = Options::default().pretrain_steps)]
    pretrain_steps: u64,
    #[arg(long, default_value_t = Options::default().finetune_steps)]
    finetune_steps: u64,
    #[arg(long, default_value_t = Options::default().batch_size)]
    batch_size: usize,
    #[arg(long, default_value_t = Options::default().pretrain_lr)]
    pretrain_lr: f64,
    #[arg(long, default_value_t = Options::default().finetune_lr)]
    finetune_lr: f64,
    #[arg(long, default_value_t = Options::default().d_model)]
    d_model: usize,
    #[arg(long, default_value_t = Options::default().layers)]
    layers: usize,
    /// Training examples of its own task each fine-tune's Fisher is taken over.
    #[arg(long, default_value_t = Options::default().fisher_examples)]
    fisher_examples: usize,
    /// exact (the top --top-k-classes tokens per target position) or sampled.
    #[arg(long, default_value = "exact")]
    fisher_mode: String,
    /// Most probable tokens per target position in the exact Fisher (0: every token).
    #[arg(long, default_value_t = 3)]
    top_k_classes: usize,
    /// Divide each Fisher by its global L2 norm before merging.
    #[arg(long)]
    normalize_fishers: bool,
    /// The target's weight λ: start:stop:step within [0, 1].
    #[arg(long, default_value = "0:1:0.05", value_name = "START:STOP:STEP")]
    grid: String,
}

pub fn experiment(args: ExperimentArgs) -> Result<()> {
    match args.command {
        ExperimentCommand::MergeSynthetic(a) => merge_synthetic(a),
        ExperimentCommand::NpeffSynthetic(a) => npeff_synthetic(a),
        ExperimentCommand::NpeffHeuristic(a) => npeff_heuristic(a),
    }
}

fn npeff_heuristic(a: NpeffHeuristicArgs) -> Result<()> {
    let base = if a.quick {
        nh::Options::quick()
    } else {
        nh::Options::default()
    };
    let opts = nh::Options {
        out: a.out,
        force: a.force,
        seed: a.seed,
        task: a.task,
        shortcut_rate: a.shortcut_rate,
        steps: a.steps.unwrap_or(base.steps),
        eval_examples: a.eval_examples.unwrap_or(base.eval_examples),
        components: a.components.unwrap_or(base.components),
        ..base
    };
    let summary = nh::run(&opts, &mut |line| eprintln!("{line}"))?;
    print!("{}", nh::table(&summary, &opts.out));
    Ok(())
}

fn npeff_synthetic(a: NpeffSyntheticArgs) -> Result<()> {
    let base = if a.quick {
        ns::Options::quick()
    } else {
        ns::Options::default()
    };
    let opts = ns::Options {
        out: a.out,
        force: a.force,
        seed: a.seed,
        train_per_task: a.train_per_task.unwrap_or(base.train_per_task),
        steps: a.steps.unwrap_or(base.steps),
        d_model: a.d_model.unwrap_or(base.d_model),
        layers: a.layers.unwrap_or(base.layers),
        pef_examples_per_task: a
            .pef_examples_per_task
            .unwrap_or(base.pef_examples_per_task),
        components: a.components.unwrap_or(base.components),
        top: a.top.unwrap_or(base.top),
        baseline: a.baseline.unwrap_or(base.baseline),
        target_kl: a.target_kl.unwrap_or(base.target_kl),
        ..base
    };
    let summary = ns::run(&opts, &mut |line| eprintln!("{line}"))?;
    print!("{}", ns::table(&summary, &opts.out));
    Ok(())
}

fn merge_synthetic(args: MergeSyntheticArgs) -> Result<()> {
    let tasks: Vec<String> = args
        .tasks
        .split(',')
        .map(|t| t.trim().to_string())
        .collect();
    ensure!(
        tasks.len() == 2,
        "--tasks takes exactly two task names, e.g. count,parity (got {:?})",
        args.tasks
    );
    let opts = Options {
        out: args.out,
        force: args.force,
        seed: args.seed,
        tasks: [tasks[0].clone(), tasks[1].clone()],
        train_per_task: args.train_per_task,
        eval_per_task: args.eval_per_task,
        pretrain_steps: args.pretrain_steps,
        finetune_steps: args.finetune_steps,
        batch_size: args.batch_size,
        pretrain_lr: args.pretrain_lr,
        finetune_lr: args.finetune_lr,
        d_model: args.d_model,
        layers: args.layers,
        fisher_examples: args.fisher_examples,
        fisher_mode: args.fisher_mode,
        top_k_classes: (args.top_k_classes > 0).then_some(args.top_k_classes),
        normalize_fishers: args.normalize_fishers,
        grid: search::parse_grid(&args.grid)?,
    };
    let summary = ms::run(&opts, &mut |line| eprintln!("{line}"))?;
    let rows = ms::load_results(&opts.out)?;
    print!("{}", ms::table(&opts, &rows, &summary));
    println!("outputs in {}", opts.out.display());
    Ok(())
}
