//! Arguments of the `fisher`, `pefs` and `bench fisher` commands.
//! `fisher inspect` belongs to the Fisher file format in `fisherkit-merge`; computing
//! Fishers and PEFs lives in `fisherkit-fisher`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use fisherkit_fisher::job::{self, FisherJob, OutputsSpec, PefJob};
use fisherkit_fisher::model::GradientRoute;
use fisherkit_fisher::{ClassSelection, Mode};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FisherArgs {
    #[command(subcommand)]
    command: Option<FisherCommand>,
    #[command(flatten)]
    compute: ComputeArgs,
}

#[derive(Subcommand, Debug)]
enum FisherCommand {
    /// Summarise a Fisher file: metadata, per-tensor and global statistics.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Fisher safetensors file (or sharded directory).
    file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputsKind {
    /// Classification by label strings (give them with --labels).
    Labels,
    /// Teacher-forced next-token distributions over the vocabulary.
    Tokens,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Σ_c p_c (∇ log p_c)² over the model's output distribution.
    Exact,
    /// (∇ log p_y)² with y drawn from the model.
    Sampled,
    /// (∇ log p_y)² with y the observed target ("empirical Fisher").
    Empirical,
}

/// The model, the data and the output distribution, shared by `fisher` and `pefs`.
#[derive(Args, Debug)]
struct SourceArgs {
    /// Model directory (Hugging Face layout: config.json, model.safetensors[, tokenizer.json]).
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL data: {"input": .., "target": ..} (needs tokenizer.json) or {"input_ids": [..], "target_ids": [..]}.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The output distribution the Fisher is taken over.
    #[arg(long, value_enum, default_value = "tokens")]
    outputs: OutputsKind,
    /// Label strings for --outputs labels, comma-separated (e.g. positive,negative).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Keep the K most probable tokens per target position (--outputs tokens).
    #[arg(long, value_name = "K")]
    top_k_classes: Option<usize>,
    /// Use at most N examples (first N of the file).
    #[arg(long, value_name = "N")]
    examples: Option<usize>,
    /// Examples whose output distributions come from one forward pass (gradients are
    /// always taken one example at a time).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where per-example gradients come from: the model parts' hand-written backward
    /// pass (fast), burn's autodiff, or fast where the model allows it (auto) — the two
    /// agree, so this is for cross-checking and for devices the fast pass does not cover.
    #[arg(long, value_enum, default_value = "auto")]
    gradients: GradientsArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GradientsArg {
    Auto,
    Fast,
    Autodiff,
}

impl From<GradientsArg> for GradientRoute {
    fn from(arg: GradientsArg) -> Self {
        match arg {
            GradientsArg::Auto => GradientRoute::Auto,
            GradientsArg::Fast => GradientRoute::Fast,
            GradientsArg::Autodiff => GradientRoute::Autodiff,
        }
    }
}

#[derive(Args, Debug)]
struct ComputeArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output Fisher file (safetensors, f32, name-keyed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How the expectation over outputs is taken.
    #[arg(long, value_enum, default_value = "exact")]
    mode: ModeArg,
    /// Seed of the sampled mode (each example's draw depends only on seed and position).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SourceArgs {
    fn outputs(&self) -> anyhow::Result<OutputsSpec> {
        Ok(match self.outputs {
            // Without --labels: the classes of the model's classification head.
            OutputsKind::Labels => OutputsSpec::Labels(self.labels.clone()),
            OutputsKind::Tokens => {
                if !self.labels.is_empty() {
                    bail!("--labels is only used with --outputs labels");
                }
                OutputsSpec::Tokens
            }
        })
    }

    fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let model = self.model.clone().context("--model DIR is required")?;
        let data = self.data.clone().context("--data FILE.jsonl is required")?;
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.examples == Some(0) {
            bail!("--examples must be at least 1");
        }
        Ok((model, data))
    }
}

pub fn fisher(args: FisherArgs) -> anyhow::Result<()> {
    match args.command {
        Some(FisherCommand::Inspect(a)) => {
            let summary = fisherkit_merge::inspect(&a.file)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(())
        }
        None => compute_fisher(args.compute),
    }
}

fn compute_fisher(args: ComputeArgs) -> anyhow::Result<()> {
    let (model_dir, data) = args.source.paths()?;
    let out = args
        .out
        .clone()
        .context("--out FILE.safetensors is required")?;
    let outputs = args.source.outputs()?;
    let mode = match args.mode {
        ModeArg::Exact => Mode::Exact,
        ModeArg::Sampled => Mode::Sampled,
        ModeArg::Empirical => Mode::Empirical,
    };
    job::check_mode(mode, &outputs, args.source.top_k_classes)?;
    let summary = job::with_model_source(&model_dir, |source| {
        job::run_fisher(
            source,
            &FisherJob {
                data,
                out: out.clone(),
                outputs,
                top_k_classes: args.source.top_k_classes,
                mode,
                examples: args.source.examples,
                batch_size: args.source.batch_size,
                seed: args.seed,
                gradients: args.source.gradients.into(),
            },
        )
    })?;
    eprintln!(
        "wrote {} ({} Fisher over {} examples, {:.2} examples/s{})",
        out.display(),
        mode,
        summary.examples,
        summary.examples as f64 / summary.seconds.max(1e-9),
        if summary.skipped_nonfinite > 0 {
            format!(
                "; {} examples skipped for non-finite gradients",
                summary.skipped_nonfinite
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PefKindArg {
    /// f(x) = Σ_c p_c g_c², top-k values.
    Diagonal,
    /// F(x) = A Aᵀ with columns sqrt(p_c) g_c, top-k entries of A.
    LowRank,
}

#[derive(Args, Debug)]
pub struct PefsArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output PEF directory (resumed when it holds an unfinished run of the same model and settings).
    #[arg(long)]
    out: PathBuf,
    /// Diagonal or low-rank per-example Fishers.
    #[arg(long, value_enum)]
    kind: PefKindArg,
    /// Values kept per example (diagonal: largest values; low-rank: largest |entries| of A).
    #[arg(long, value_name = "K")]
    top_k: usize,
    /// Skip classes with probability below P (no renormalisation).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    min_prob: f32,
    /// Keep at most C classes per example, most probable first.
    #[arg(long, value_name = "C")]
    max_classes: Option<usize>,
    /// Examples per shard file.
    #[arg(long, default_value_t = 256)]
    examples_per_shard: usize,
    /// Replace an existing PEF directory instead of resuming or refusing it.
    #[arg(long)]
    force: bool,
}

pub fn pefs(args: PefsArgs) -> anyhow::Result<()> {
    let (model_dir, data) = args.source.paths()?;
    let outputs = args.source.outputs()?;
    let kind = match args.kind {
        PefKindArg::Diagonal => fisherkit_npeff::pef::PefKind::Diagonal,
        PefKindArg::LowRank => fisherkit_npeff::pef::PefKind::LowRank,
    };
    if matches!(outputs, OutputsSpec::Tokens)
        && args.source.top_k_classes.is_none()
        && args.max_classes.is_none()
    {
        bail!("--outputs tokens needs --top-k-classes K and/or --max-classes C (one backward pass per kept class)");
    }
    let summary = job::with_model_source(&model_dir, |source| {
        job::run_pefs(
            source,
            &PefJob {
                data,
                out: args.out.clone(),
                outputs,
                kind,
                top_k: args.top_k,
                selection: ClassSelection {
                    top_k_per_position: args.source.top_k_classes,
                    min_prob: args.min_prob,
                    max_classes: args.max_classes,
                },
                examples: args.source.examples,
                batch_size: args.source.batch_size,
                examples_per_shard: args.examples_per_shard,
                overwrite: args.force,
                gradients: args.source.gradients.into(),
            },
        )
    })?;
    eprintln!(
        "wrote {} PEFs to {}{}{}",
        summary.written,
        args.out.display(),
        if summary.resumed_from > 0 {
            format!(" (resumed after {})", summary.resumed_from)
        } else {
            String::new()
        },
        if summary.skipped_nonfinite > 0 {
            format!(
                "; {} examples had non-finite gradients (empty PEFs, listed in skipped_nonfinite.json)",
                summary.skipped_nonfinite
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// T5 shape (a preset of `fisherkit init`), randomly initialised.
    #[arg(long, default_value = "t5-small")]
    preset: String,
    /// Input tokens per example.
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Target tokens per example.
    #[arg(long, default_value_t = 32)]
    target_len: usize,
    /// Examples timed for each measurement.
    #[arg(long, default_value_t = 8)]
    examples: usize,
    /// Values kept per diagonal PEF.
    #[arg(long, default_value_t = 65536)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.examples == 0 {
        bail!("--examples must be at least 1");
    }
    let report = fisherkit_fisher::bench::run(&fisherkit_fisher::bench::BenchOptions {
        preset: args.preset,
        input_len: args.input_len,
        target_len: args.target_len,
        examples: args.examples,
        top_k: args.top_k,
        seed: args.seed,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({} parameters), inputs {}, targets {}, {} examples:\n  squared per-example gradients/s: {:.3}",
            report.preset,
            report.parameters,
            report.input_len,
            report.target_len,
            report.examples,
            report.gradients_per_second,
        );
        if let Some(autodiff) = report.autodiff_gradients_per_second {
            println!("  the same through burn autodiff: {autodiff:.3}");
        }
        println!(
            "  diagonal PEFs/s (2 labels): {:.3}",
            report.diagonal_pefs_per_second
        );
    }
    Ok(())
}
