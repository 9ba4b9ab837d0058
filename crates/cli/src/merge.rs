//! Arguments of `fisherkit merge` and `fisherkit bench merge`.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use fisherkit_merge::recipe::{parse_param, ModelEntry, Recipe, Scalar, ScalarOrGradient, Setting};
use fisherkit_merge::{bench as merge_bench, engine, search, writer};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// A mergekit-style YAML recipe (the `models:` form). Or use the flags below.
    #[arg(conflicts_with_all = ["method", "model"])]
    recipe: Option<PathBuf>,
    /// Output model directory (refused if it exists, unless --force).
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
    /// fsync the output before it is renamed into place (durable across power loss;
    /// runs at disk speed). Without it the output is still complete-or-absent.
    #[arg(long)]
    fsync: bool,
    /// Largest output shard (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Coefficient search instead of a merge: target weight start:stop:step (two models).
    /// Writes nothing; each candidate goes to an evaluator.
    #[arg(long, value_name = "START:STOP:STEP")]
    weights_grid: Option<String>,
    /// For more than two models: number of Dirichlet(1) weight samples to search.
    #[arg(long, default_value_t = 0)]
    weights_samples: usize,
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
        },
    )?;
    if let Some(grid) = &args.weights_grid {
        return report_candidates(&plan, grid, args.weights_samples, args.seed.unwrap_or(0));
    }
    let out = args
        .out
        .clone()
        .expect("clap requires --out without --weights-grid");
    let report = engine::merge_to_dir(
        &plan,
        &engine::OutputOptions {
            out: out.clone(),
            force: args.force,
            max_shard_bytes: writer::parse_size(&args.max_shard_size)?,
            recipe_text,
            fsync: args.fsync,
        },
    )?;
    println!("{}", report.summary());
    println!("wrote {}", out.display());
    Ok(())
}

/// Without a model-based evaluator (it arrives with the Fisher computation), the CLI
/// lists the candidates a search would evaluate, one JSON object per line.
fn report_candidates(plan: &engine::Plan, grid: &str, samples: usize, seed: u64) -> Result<()> {
    let points = search::parse_grid(grid)?;
    let target = plan.target_index();
    let candidates = search::candidates(&points, plan.num_inputs(), target, samples, seed)?;
    eprintln!(
        "{} candidate weightings for {} ({} models, target first weight); no evaluator is \
         available from the command line yet, so candidates are listed, not scored",
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
    /// Directory for the temporary checkpoints (~2.2 GB per model, 4.4 GB per Fisher).
    #[arg(long, default_value = "/work/tmp")]
    dir: PathBuf,
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
}

pub fn bench(args: BenchArgs) -> Result<()> {
    merge_bench::run(&merge_bench::BenchOptions {
        dir: args.dir,
        counts: args.models,
        methods: args.methods,
        layers: args.layers,
        mergekit: args.mergekit,
        python: args.python,
        keep: args.keep,
    })
}
