//! Arguments of the `npeff` commands: fit, coeffs, synth, and the NPEFF benchmark.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fisherkit_npeff::analysis::{Analysed, TopOptions};
use fisherkit_npeff::fit::{self, FitSettings, RunOptions};
use fisherkit_npeff::pef::PefKind;
use fisherkit_npeff::perturb::{
    DirectionSettings, Epsilon, PerturbReport, PerturbSettings, Rejection,
};
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
    /// Per component: its top examples (text, label, prediction, coefficient), their
    /// label and correctness fractions, and its parameter attribution, as JSON.
    Top(TopArgs),
    /// The perturbation test: move the model's parameters along each component and
    /// compare the change of its top examples' predictions with a random baseline set.
    Perturb(PerturbArgs),
    /// One self-contained HTML page: fit, summary table, and per component its top
    /// examples, attribution chart and perturbation results.
    Report(ReportArgs),
}

/// The decomposition and the PEFs it is read against.
#[derive(Args, Debug)]
struct AnalysedArgs {
    /// Output of `npeff fit`.
    #[arg(long)]
    decomposition: PathBuf,
    /// The PEF directory whose examples are shown (the one fitted, or another one with
    /// --coeffs).
    #[arg(long)]
    pefs: PathBuf,
    /// Coefficients of --pefs' examples from `npeff coeffs` [default: the
    /// decomposition's own W, which must then be --pefs' examples].
    #[arg(long)]
    coeffs: Option<PathBuf>,
    /// Components to report, e.g. `0,3,7` [default: all].
    #[arg(long, value_parser = parse_components)]
    components: Option<ComponentList>,
    /// Read example texts from this file instead of the data file the PEFs record (it
    /// must be the same file: its hash is checked).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// `--components 0,3,7`.
#[derive(Clone, Debug)]
struct ComponentList(Vec<usize>);

fn parse_components(list: &str) -> Result<ComponentList, String> {
    fisherkit_npeff::analysis::parse_components(list)
        .map(ComponentList)
        .map_err(|e| format!("{e:#}"))
}

impl AnalysedArgs {
    fn components(&self) -> Vec<usize> {
        self.components.clone().map(|c| c.0).unwrap_or_default()
    }

    fn open(&self) -> Result<Analysed> {
        Analysed::open(&self.decomposition, &self.pefs, self.coeffs.as_deref())
    }

    fn top_options(&self, top: usize) -> TopOptions {
        TopOptions {
            top,
            components: self.components(),
            data: self.data.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct TopArgs {
    #[command(flatten)]
    analysed: AnalysedArgs,
    /// Top examples per component.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Also write the JSON report here (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RejectionArg {
    Span,
    Sequential,
    None,
}

#[derive(Args, Debug)]
struct PerturbArgs {
    #[command(flatten)]
    analysed: AnalysedArgs,
    /// The checkpoint [default: the one the PEFs record].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Top examples per component.
    #[arg(long, default_value_t = 32)]
    top: usize,
    /// Baseline examples per component: a seeded random sample of the other examples.
    #[arg(long, default_value_t = 128)]
    baseline: usize,
    /// Perturbation size ε (L2 norm in parameter space) [default: found per component by
    /// --target-kl].
    #[arg(long, conflicts_with = "target_kl")]
    epsilon: Option<f64>,
    /// Find ε per component so that the mean baseline KL(p_θ± ‖ p_θ) over both signs is
    /// this (within 5 %).
    #[arg(long, default_value_t = 0.01)]
    target_kl: f64,
    /// τ: other components with |cos| ≤ τ to a component are removed from its direction.
    #[arg(long, default_value_t = 0.3)]
    max_cos: f64,
    /// How their overlap is removed (LRM): project out their span, the reference's
    /// one-at-a-time loop, or not at all.
    #[arg(long, value_enum, default_value_t = RejectionArg::Span)]
    rejection: RejectionArg,
    /// Also perturb along a random direction of the same norm (the control).
    #[arg(long)]
    random_control: bool,
    /// Seeds the baseline sample, D-NPEFF signs and random directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Also write the JSON report here (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    analysed: AnalysedArgs,
    /// Top examples shown per component.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Output of `npeff perturb --out` to include.
    #[arg(long)]
    perturbations: Option<PathBuf>,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
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
        NpeffCommand::Top(a) => {
            let an = a.analysed.open()?;
            let report = an.top(
                &a.analysed.top_options(a.top),
                &a.analysed.decomposition,
                &a.analysed.pefs,
            )?;
            crate::emit_json(&report, a.out.as_deref())
        }
        NpeffCommand::Perturb(a) => {
            let report = run_perturb(&a)?;
            eprintln!(
                "median ratio of the KL on top examples to the baseline KL: {:.3}{}",
                report.median_ratio,
                report
                    .median_random_ratio
                    .map(|r| format!(" (random directions: {r:.3})"))
                    .unwrap_or_default()
            );
            crate::emit_json(&report, a.out.as_deref())
        }
        NpeffCommand::Report(a) => {
            let an = a.analysed.open()?;
            let top = an.top(
                &a.analysed.top_options(a.top),
                &a.analysed.decomposition,
                &a.analysed.pefs,
            )?;
            let perturbations: Option<PerturbReport> = match &a.perturbations {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(serde_json::from_str(&text).map_err(|e| {
                        anyhow::anyhow!("{}: not an `npeff perturb` report: {e}", path.display())
                    })?)
                }
                None => None,
            };
            let html = fisherkit_npeff::report::render(
                &top,
                &an.decomposition.info,
                &an.decomposition.loss_history,
                perturbations.as_ref(),
            );
            fisherkit_common::atomic::write_bytes(&a.out, html.as_bytes())?;
            eprintln!(
                "wrote {} ({} components)",
                a.out.display(),
                top.per_component.len()
            );
            Ok(())
        }
    }
}

fn run_perturb(a: &PerturbArgs) -> Result<PerturbReport> {
    let an = a.analysed.open()?;
    let settings = PerturbSettings {
        components: a.analysed.components(),
        top: a.top,
        baseline: a.baseline,
        epsilon: match a.epsilon {
            Some(e) => Epsilon::Fixed(e),
            None => Epsilon::TargetKl(a.target_kl),
        },
        direction: DirectionSettings {
            max_cos: a.max_cos,
            rejection: match a.rejection {
                RejectionArg::Span => Rejection::Span,
                RejectionArg::Sequential => Rejection::Sequential,
                RejectionArg::None => Rejection::None,
            },
            seed: a.seed,
        },
        random_control: a.random_control,
    };
    let count = an.select_components(&settings.components)?.len();
    let bar = fisherkit_common::progress::bar(count as u64, "components");
    let sources = fisherkit_fisher::perturb::PerturbSources {
        model: a.model.clone(),
        data: a.analysed.data.clone(),
        batch_size: a.batch_size,
    };
    let report = fisherkit_fisher::perturb::run_perturb(&an, &sources, &settings, |_| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(report)
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
