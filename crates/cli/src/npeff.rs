//! Arguments of the `npeff` commands: fit, coeffs, synth, and the NPEFF benchmark.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use fisherkit_npeff::fit::{self, FitSettings, RunOptions};
use fisherkit_npeff::pef::PefKind;
use fisherkit_npeff::synth::{synth as plant, SynthSpec};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct NpeffArgs {
    #[command(subcommand)]
    command: NpeffCommand,
}

#[derive(Subcommand, Debug)]
enum NpeffCommand {
    /// Fit a D-NPEFF (diagonal PEFs) or LRM-NPEFF (low-rank PEFs) decomposition.
    Fit(FitArgs),
    /// Fit coefficients W of (new) examples against a fixed decomposition.
    Coeffs(CoeffsArgs),
    /// Write planted PEFs from known W* and components, with the ground truth.
    Synth(SynthArgs),
}

#[derive(Args, Debug)]
struct FitArgs {
    /// PEF directory (pefs.json + shards).
    #[arg(long)]
    pefs: PathBuf,
    /// Number of components r.
    #[arg(long)]
    components: usize,
    /// D: iterations; LRM: joint (W and G) iterations.
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// LRM: G-only warm-up steps with W frozen.
    #[arg(long, default_value_t = 50)]
    g_only_iters: usize,
    /// LRM: step size of the G gradient step.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// LRM: weight λ of the orthogonality regulariser λ‖GGᵀ − (2/r)I‖²_F.
    #[arg(long, default_value_t = 0.0)]
    orth_reg: f32,
    /// Drop parameters with fewer non-zeros than this across examples.
    #[arg(long, default_value_t = 1)]
    min_nnz: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (results do not depend on it).
    #[arg(long)]
    threads: Option<usize>,
    /// Columns per partition (the unit of parallel work; changes rounding, not the method).
    #[arg(long, default_value_t = 8192)]
    partition_columns: usize,
    /// Log the loss every K iterations.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Write a checkpoint (OUT.checkpoint) every N iterations; 0 = never.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from OUT.checkpoint if it exists.
    #[arg(long)]
    resume: bool,
    /// Stop after N iterations in this run, leaving OUT.checkpoint for --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// D: entries of unit-norm H rows at or above this go into the sparse H.
    #[arg(long, default_value_t = 1e-6)]
    h_threshold: f32,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct CoeffsArgs {
    #[arg(long)]
    pefs: PathBuf,
    /// Output of `npeff fit` (its H or G stays fixed).
    #[arg(long)]
    decomposition: PathBuf,
    #[arg(long, default_value_t = 200)]
    iters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Examples processed per chunk (memory bound).
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Kind {
    Diagonal,
    LowRank,
}

#[derive(Args, Debug)]
struct SynthArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long)]
    examples: usize,
    #[arg(long)]
    parameters: usize,
    #[arg(long)]
    components: usize,
    #[arg(long)]
    top_k: usize,
    /// Low-rank: class columns per example.
    #[arg(long, default_value_t = 3)]
    classes: usize,
    /// Parameters per component support [default: 2·parameters/components].
    #[arg(long)]
    support: Option<usize>,
    /// Diagonal: most components active in one example.
    #[arg(long, default_value_t = 3)]
    max_active: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Index of the first example (a later range of the same seed = held-out examples).
    #[arg(long, default_value_t = 0)]
    first_example: usize,
    #[arg(long, default_value_t = 1024)]
    examples_per_shard: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    out: PathBuf,
}

impl SynthArgs {
    fn spec(&self) -> SynthSpec {
        SynthSpec {
            kind: match self.kind {
                Kind::Diagonal => PefKind::Diagonal,
                Kind::LowRank => PefKind::LowRank,
            },
            examples: self.examples,
            parameters: self.parameters,
            components: self.components,
            top_k: self.top_k,
            classes: self.classes,
            support: self.support,
            max_active: self.max_active,
            seed: self.seed,
            first_example: self.first_example,
            examples_per_shard: self.examples_per_shard,
        }
    }
}

fn run_fit(a: &FitArgs) -> Result<fit::FitReport> {
    let settings = FitSettings {
        components: a.components,
        iters: a.iters,
        g_only_iters: a.g_only_iters,
        lr: a.lr,
        orth_reg: a.orth_reg,
        min_nnz: a.min_nnz,
        seed: a.seed,
        cols_per_partition: a.partition_columns,
        h_threshold: a.h_threshold,
    };
    let run = RunOptions {
        log_every: a.log_every,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        stop_after: a.stop_after,
    };
    fisherkit_npeff::with_threads(a.threads, || fit::fit(&a.pefs, &settings, &run, &a.out))?
}

pub fn npeff(args: NpeffArgs) -> Result<()> {
    match args.command {
        NpeffCommand::Fit(a) => {
            let report = run_fit(&a)?;
            let i = &report.info;
            let Some(output) = &report.output else {
                eprintln!(
                    "stopped after step {} of the fit; resume with --resume (checkpoint {})",
                    i.steps_done,
                    fit::checkpoint_path(&a.out).display()
                );
                return Ok(());
            };
            eprintln!(
                "{} NPEFF: {} examples × {} kept parameters ({} nnz, {} partitions), r = {}; \
                 final loss {:.6e}; {:.3} s/iteration; wrote {}",
                i.kind,
                i.n_examples,
                i.n_kept,
                i.nnz,
                i.partitions,
                i.settings.components,
                i.final_loss.unwrap_or(f64::NAN),
                report.seconds_per_step,
                output.display()
            );
            Ok(())
        }
        NpeffCommand::Coeffs(a) => {
            let w = fisherkit_npeff::with_threads(a.threads, || {
                fit::coeffs(&a.pefs, &a.decomposition, a.iters, a.seed, a.chunk, &a.out)
            })??;
            eprintln!(
                "wrote {} coefficients (W: examples × components) to {}",
                w.len(),
                a.out.display()
            );
            Ok(())
        }
        NpeffCommand::Synth(a) => {
            plant(&a.spec(), &a.out, a.force)?;
            eprintln!("wrote planted PEFs to {}", a.out.display());
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Working directory for the planted PEF sets (reused when present).
    #[arg(long, default_value = "target/npeff-bench")]
    dir: PathBuf,
    /// D-NPEFF iterations.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// LRM-NPEFF joint iterations.
    #[arg(long, default_value_t = 10)]
    lrm_iters: usize,
    /// Skip the scikit-learn peer run.
    #[arg(long)]
    no_peer: bool,
    /// The peer script.
    #[arg(long, default_value = "scripts/peers/nmf_sklearn_peer.py")]
    peer: PathBuf,
    #[arg(long)]
    threads: Option<usize>,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    fisherkit_npeff::bench::run(&fisherkit_npeff::bench::BenchConfig {
        dir: args.dir,
        d_iters: args.iters,
        lrm_iters: args.lrm_iters,
        peer: (!args.no_peer).then_some(args.peer),
        threads: args.threads,
    })
}
