//! Arguments of `fisherkit experiment`: paper experiments run end to end on built-in data.

use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use fisherkit_experiment::merge_synthetic::{self as ms, Options};
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
    }
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
