//! Arguments of `fisherkit merge` and `fisherkit bench merge`.

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use fisherkit_fisher::evaluate::{Metric, ModelEvaluator};
use fisherkit_fisher::{data, job};
use fisherkit_merge::recipe::{parse_param, ModelEntry, Recipe, Scalar, ScalarOrGradient, Setting};
use fisherkit_merge::{bench as merge_bench, engine, search, writer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// A mergekit-style YAML recipe (the `models:` form). Or use the flags below.
    #[arg(conflicts_with_all = ["method", "model"])]
    recipe: Option<PathBuf>,
    /// Output model directory (refused if it exists, unless --force). With --search: the
    /// best candidate's merge, plus search.json and search.csv (every candidate's score).
    #[arg(long, required_unless_present = "weights_grid")]
    out: Option<PathBuf>,
    /// Replace an existing output directory (only once the new one is complete).
    #[arg(long)]
    force: bool,
    /// Merge method: fisher, linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, passthrough.
    #[arg(long, requires = "model")]
    method: Option<String>,
    /// A model (directory or .safetensors file); repeat, in order. The first is the target
    /// unless --base is given.
    #[arg(long)]
    model: Vec<String>,
    /// Fisher file of the model at the same position (fisher method).
    #[arg(long)]
    fisher: Vec<String>,
    /// Weight of the model at the same position (default: equal weights).
    #[arg(long, allow_negative_numbers = true)]
    weight: Vec<f64>,
    /// Density of the model at the same position (ties, dare_*).
    #[arg(long)]
    density: Vec<f64>,
    /// Base model (task vectors are taken against it; it is the target for copies).
    #[arg(long)]
    base: Option<String>,
    /// Global method parameter, e.g. `--param lambda=0.8`, `--param normalize_fishers=true`,
    /// `--param fisher_floor=1e-6`, `--param t=0.5`. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    param: Vec<String>,
    /// Compute dtype as mergekit names it; also the output dtype unless --out-dtype.
    #[arg(long)]
    dtype: Option<String>,
    /// Output dtype (bfloat16, float16, float32); default: each tensor's target dtype.
    #[arg(long)]
    out_dtype: Option<String>,
    /// Regex of tensors kept from the target instead of merged (e.g. a classifier head). Repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Seed of dare_* random drops.
    #[arg(long)]
    seed: Option<u64>,
    /// Copy tensors that some models lack from the target instead of failing.
    #[arg(long)]
    allow_missing: bool,
    /// A sequence classifier's head: `target` keeps the target model's (the paper's
    /// choice: heads of different tasks are not averaged), `merge` merges it too.
    #[arg(long, value_enum, default_value = "target")]
    heads: HeadsArg,
    /// fsync the output before it is renamed into place (durable across power loss;
    /// runs at disk speed). Without it the output is still complete-or-absent.
    #[arg(long)]
    fsync: bool,
    /// Largest output shard (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Coefficient grid: the target's weight start:stop:step (two models). Alone it lists
    /// the candidates (one JSON line each) without merging; with --search grid it is the
    /// grid searched (default 1:0:0.02, the paper's 51 points).
    #[arg(long, value_name = "START:STOP:STEP")]
    weights_grid: Option<String>,
    /// Number of Dirichlet(1) weight samples: listed for more than two models, or
    /// searched with --search random.
    #[arg(long, default_value_t = 0)]
    weights_samples: usize,
    /// Search the merge coefficients: evaluate every candidate merge in memory with the
    /// target's model on --eval-data and write the best one to --out.
    #[arg(long, value_enum, requires = "eval_data")]
    search: Option<SearchKind>,
    /// Held-out JSONL the candidates are scored on (any architecture the loader registry
    /// knows; {"input", "target"} with tokenizer.json, or {"input_ids", "target_ids"}). Must not be the reported test data.
    #[arg(long, value_name = "FILE", requires = "search")]
    eval_data: Option<PathBuf>,
    /// Score of a candidate: accuracy (rank classification over --labels; the default with
    /// --labels) or logprob (mean log p(target | input); the default without).
    #[arg(long, value_enum, requires = "search")]
    metric: Option<MetricArg>,
    /// Label strings for rank classification, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "search")]
    labels: Vec<String>,
    /// Use the first N examples of --eval-data (and of --test-data).
    #[arg(long, value_name = "N", requires = "search")]
    eval_examples: Option<usize>,
    /// Examples per forward pass when scoring.
    #[arg(long, default_value_t = 8)]
    eval_batch_size: usize,
    /// Test data on which only the chosen merge is scored (refused if identical to --eval-data).
    #[arg(long, value_name = "FILE", requires = "search")]
    test_data: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SearchKind {
    /// The target weight over --weights-grid (two models).
    Grid,
    /// --weights-samples Dirichlet(1) draws of all models' weights (seeded by --seed).
    Random,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MetricArg {
    Accuracy,
    Logprob,
}

fn scalar(s: Scalar) -> Setting {
    Setting::Plain(ScalarOrGradient::Scalar(s))
}

/// The recipe the flag form stands for.
fn recipe_from_flags(args: &MergeArgs) -> Result<Recipe> {
    let method = args
        .method
        .clone()
        .context("give a RECIPE or --method with --model")?;
    let n = args.model.len();
    for (flag, len) in [
        ("--fisher", args.fisher.len()),
        ("--weight", args.weight.len()),
        ("--density", args.density.len()),
    ] {
        ensure!(
            len == 0 || len == n,
            "{flag} given {len} times for {n} --model(s); give one per model or none"
        );
    }
    let models = args
        .model
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parameters = BTreeMap::new();
            let weight = args.weight.get(i).copied().unwrap_or(1.0);
            parameters.insert("weight".into(), scalar(Scalar::Number(weight)));
            if let Some(f) = args.fisher.get(i) {
                parameters.insert("fisher".into(), scalar(Scalar::Text(f.clone())));
            }
            if let Some(d) = args.density.get(i) {
                parameters.insert("density".into(), scalar(Scalar::Number(*d)));
            }
            ModelEntry {
                model: m.clone(),
                parameters,
            }
        })
        .collect();
    let parameters = args
        .param
        .iter()
        .map(|p| parse_param(p))
        .collect::<Result<_>>()?;
    Ok(Recipe {
        merge_method: method,
        base_model: args.base.clone(),
        models,
        parameters,
        dtype: args.dtype.clone(),
        out_dtype: args.out_dtype.clone(),
        tokenizer_source: None,
        exclude: args.exclude.clone(),
        seed: args.seed,
        slices: None,
        modules: None,
    })
}

pub fn merge(args: MergeArgs) -> Result<()> {
    let (mut recipe, recipe_text) = match &args.recipe {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading recipe {}", path.display()))?;
            (Recipe::from_yaml(&text, path)?, Some(text))
        }
        None => (recipe_from_flags(&args)?, None),
    };
    if args.recipe.is_some() {
        // Flags that refine a recipe rather than replace it.
        recipe.exclude.extend(args.exclude.iter().cloned());
        if args.seed.is_some() {
            recipe.seed = args.seed;
        }
        for flag in [
            &args.fisher.is_empty(),
            &args.weight.is_empty(),
            &args.density.is_empty(),
        ] {
            if !flag {
                bail!(
                    "--fisher/--weight/--density belong to the flag form; set them in the recipe"
                );
            }
        }
    }
    let plan = engine::Plan::new(
        recipe,
        &engine::PlanOptions {
            allow_missing: args.allow_missing,
            heads: match args.heads {
                HeadsArg::Target => engine::Heads::Target,
                HeadsArg::Merge => engine::Heads::Merge,
            },
        },
    )?;
    if args.search.is_some() {
        return search_and_merge(&plan, &args, recipe_text);
    }
    if let Some(grid) = &args.weights_grid {
        return report_candidates(&plan, grid, args.weights_samples, args.seed.unwrap_or(0));
    }
    write_merge(&plan, &args, recipe_text, None)
}

/// Merge into --out (with `weights` replacing the recipe's) and print the report.
fn write_merge(
    plan: &engine::Plan,
    args: &MergeArgs,
    recipe_text: Option<String>,
    weights: Option<&[f64]>,
) -> Result<()> {
    let out = args.out.clone().context("--out DIR is required")?;
    let report = engine::merge_to_dir_weighted(
        plan,
        &engine::OutputOptions {
            out: out.clone(),
            force: args.force,
            max_shard_bytes: writer::parse_size(&args.max_shard_size)?,
            recipe_text,
            fsync: args.fsync,
        },
        weights,
    )?;
    println!("{}", report.summary());
    println!("wrote {}", out.display());
    Ok(())
}

/// `--search`: score every candidate weighting with the target's model on --eval-data,
/// write the best merge and the table of all candidates.
fn search_and_merge(
    plan: &engine::Plan,
    args: &MergeArgs,
    recipe_text: Option<String>,
) -> Result<()> {
    let out = args.out.clone().context("--search needs --out DIR")?;
    let eval_path = args
        .eval_data
        .as_ref()
        .context("--search needs --eval-data FILE")?;
    ensure!(
        args.eval_batch_size >= 1,
        "--eval-batch-size must be at least 1"
    );
    ensure!(
        args.eval_examples != Some(0),
        "--eval-examples must be at least 1"
    );
    if out.exists() && !args.force {
        bail!("{} exists (pass --force to replace it)", out.display());
    }
    let seed = args.seed.unwrap_or(0);
    let candidates = match args.search.expect("checked by the caller") {
        SearchKind::Grid => {
            ensure!(
                plan.num_inputs() == 2,
                "--search grid sweeps the target weight of two models; for {} models use --search random --weights-samples N",
                plan.num_inputs()
            );
            let points = search::parse_grid(args.weights_grid.as_deref().unwrap_or("1:0:0.02"))?;
            search::candidates(&points, 2, plan.target_index(), 0, seed)?
        }
        SearchKind::Random => search::dirichlet(plan.num_inputs(), args.weights_samples, seed)
            .context("--search random needs --weights-samples N")?,
    };

    let model_dir = plan.target_dir();
    let (model, tokenizer) = job::load_model(&model_dir, false)?;
    let encode = tokenizer
        .as_ref()
        .map(|tk| move |text: &str| tk.encode(text));
    let encoder = encode.as_ref().map(|f| f as data::Encoder<'_>);
    let outputs = if args.labels.is_empty() {
        fisherkit_fisher::model::Outputs::Tokens
    } else {
        data::label_outputs(&args.labels, encoder)?
    };
    let metric = match args.metric {
        Some(MetricArg::Accuracy) => Metric::Accuracy,
        Some(MetricArg::Logprob) => Metric::LogProb,
        None if args.labels.is_empty() => Metric::LogProb,
        None => Metric::Accuracy,
    };
    let vocab = fisherkit_model::LogProbModel::output_size(&model);
    let load = |path: &Path| data::load(path, encoder, vocab, &outputs, args.eval_examples);
    let eval = load(eval_path)?;
    let test = match &args.test_data {
        Some(path) => {
            let test = load(path)?;
            ensure!(
                test.hash != eval.hash,
                "--test-data {} has the same contents as --eval-data: coefficients must be selected on data other than the reported test data",
                path.display()
            );
            Some((path, test))
        }
        None => None,
    };
    let eval_examples = eval.items.len();
    let mut evaluator = ModelEvaluator::new(
        model,
        outputs.clone(),
        eval.items,
        metric,
        args.eval_batch_size,
    )?;
    eprintln!(
        "scoring {} candidate {} merges by {metric} on {eval_examples} examples of {}",
        candidates.len(),
        plan.method_name(),
        eval_path.display()
    );
    let scored = search::search(plan, &candidates, &mut evaluator)?;
    let best = search::best(&scored)
        .context("no candidates to search")?
        .clone();
    let test_score = match test {
        Some((path, test)) => {
            evaluator.replace_items(test.items);
            let score = search::search(plan, std::slice::from_ref(&best.weights), &mut evaluator)?;
            Some((path.clone(), test.hash, score[0].score))
        }
        None => None,
    };
    write_merge(plan, args, recipe_text, Some(&best.weights))?;

    let table = serde_json::json!({
        "method": plan.method_name(),
        "search": format!("{:?}", args.search.expect("checked")).to_lowercase(),
        "models": plan.input_names(),
        "target_index": plan.target_index(),
        "metric": metric.as_str(),
        "eval_data": eval_path.display().to_string(),
        "eval_data_hash": eval.hash,
        "eval_examples": eval_examples,
        "seed": seed,
        "best": &best,
        "test": test_score.as_ref().map(|(p, h, s)| serde_json::json!({
            "data": p.display().to_string(), "data_hash": h, "score": s,
        })),
        "candidates": &scored,
    });
    fisherkit_common::atomic::write_json(&out.join("search.json"), &table)?;
    let width = plan.num_inputs();
    let mut csv = (0..width)
        .map(|i| format!("weight_{i}"))
        .collect::<Vec<_>>()
        .join(",");
    csv.push_str(&format!(",{metric}\n"));
    for s in &scored {
        let weights: Vec<String> = s.weights.iter().map(f64::to_string).collect();
        csv.push_str(&format!("{},{}\n", weights.join(","), s.score));
    }
    fisherkit_common::atomic::write_bytes(&out.join("search.csv"), csv.as_bytes())?;
    println!(
        "best weights {:?}: {metric} {:.6} on the evaluation data{}",
        best.weights,
        best.score,
        test_score
            .map(|(p, _, s)| format!("; {metric} {s:.6} on {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HeadsArg {
    Target,
    Merge,
}

/// A dry run of a search: the candidates it would evaluate, one JSON object per line.
fn report_candidates(plan: &engine::Plan, grid: &str, samples: usize, seed: u64) -> Result<()> {
    let points = search::parse_grid(grid)?;
    let target = plan.target_index();
    let candidates = search::candidates(&points, plan.num_inputs(), target, samples, seed)?;
    eprintln!(
        "{} candidate weightings for {} ({} models); listed, not scored (add --search \
         grid|random --eval-data FILE to score them and write the best merge)",
        candidates.len(),
        plan.method_name(),
        plan.num_inputs()
    );
    for w in candidates {
        println!("{}", serde_json::json!({ "weights": w }));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Directory for the temporary checkpoints (~2.2 GB per model, 4.4 GB per Fisher)
    /// [default: the system temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Model counts to merge, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    models: Vec<usize>,
    /// Methods, comma-separated (linear, fisher, ties).
    #[arg(long, value_delimiter = ',', default_value = "linear,fisher,ties")]
    methods: Vec<String>,
    /// Decoder layers of the synthetic Llama (22 = 1.1B parameters).
    #[arg(long, default_value_t = 22)]
    layers: usize,
    /// Path of `mergekit-yaml` to run side by side on the same files.
    #[arg(long)]
    mergekit: Option<PathBuf>,
    /// Python with numpy, to run the numpy streaming-average peer.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Keep the generated checkpoints.
    #[arg(long)]
    keep: bool,
    /// Before every run (fisherkit's and each peer's): sync, drop the page cache (Linux,
    /// needs root) and read that run's inputs back in, so every tool starts with cached
    /// inputs and free memory for its output.
    #[arg(long)]
    drop_caches: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    merge_bench::run(&merge_bench::BenchOptions {
        dir: args.dir.unwrap_or_else(std::env::temp_dir),
        counts: args.models,
        methods: args.methods,
        layers: args.layers,
        mergekit: args.mergekit,
        python: args.python,
        keep: args.keep,
        drop_caches: args.drop_caches,
    })
}
