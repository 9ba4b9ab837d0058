//! The `fisherkit fisher` and `fisherkit pefs` jobs: load a model and data, compute,
//! write the Fisher file (merge's format) or the PEF directory (npeff's format).

use crate::data::{self, Dataset};
use crate::model::{GradientRoute, ModelGradients, Outputs};
use crate::{
    dataset_fisher, example_classes_given, example_diagonal_streamed, predictions, top_k_diagonal,
    top_k_low_rank, ClassSelection, FisherRun, GradientModel, Mode, SparseDiagonal,
};
use anyhow::{bail, ensure, Context, Result};
use fisherkit_common::progress;
use fisherkit_merge::fisher_file::{write_fisher, FisherMeta, FisherMode};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{LogProbModel, Model, TextTokenizer};
use fisherkit_npeff::pef::{
    DiagonalExample, ExampleExtras, LowRankExample, ParameterEntry, PefHeader, PefKind, PefWriter,
    Provenance, SparseColumn, WriterOptions,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A checkpoint directory (any architecture of the loader registry) loaded in eval mode
/// (dropout off) on the CPU, recording gradients when `autodiff`, with the directory's
/// tokenizer if it has one.
pub fn load_model(dir: &Path, autodiff: bool) -> Result<(Box<dyn Model>, Option<TextTokenizer>)> {
    let device = if autodiff {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    let mut model = fisherkit_models::load(dir, &device)?;
    model.set_training(false);
    let tokenizer = model.tokenizer_in(dir)?;
    Ok((model, tokenizer))
}

/// Load the model in `model_dir` (with autodiff) and its tokenizer, and run `work` on
/// them.
pub fn with_model_source<R>(
    model_dir: &Path,
    work: impl FnOnce(&ModelSource<'_, Box<dyn Model>>) -> Result<R>,
) -> Result<R> {
    with_model_source_on(model_dir, true, work)
}

/// [`with_model_source`], recording gradients only when `autodiff`.
pub fn with_model_source_on<R>(
    model_dir: &Path,
    autodiff: bool,
    work: impl FnOnce(&ModelSource<'_, Box<dyn Model>>) -> Result<R>,
) -> Result<R> {
    let (model, tokenizer) = load_model(model_dir, autodiff)?;
    let encode = tokenizer
        .as_ref()
        .map(|tk| move |text: &str| tk.encode(text));
    let source = ModelSource {
        model: &model,
        encoder: encode.as_ref().map(|f| f as data::Encoder<'_>),
        tokenizer: tokenizer.as_ref(),
        classes: model.class_labels().to_vec(),
        dir: model_dir,
    };
    work(&source)
}

/// Which outputs the Fisher is taken over, as given on the command line.
#[derive(Debug, Clone)]
pub enum OutputsSpec {
    /// Label strings; none: the classes of the model's classification head.
    Labels(Vec<String>),
    Tokens,
}

/// A model ready for per-example gradients (autodiff device, eval mode), the tokenizer
/// of its directory (if any) and where it came from.
pub struct ModelSource<'a, M> {
    pub model: &'a M,
    pub encoder: Option<data::Encoder<'a>>,
    pub tokenizer: Option<&'a TextTokenizer>,
    /// The classes of the model's classification head (empty for token outputs).
    pub classes: Vec<String>,
    pub dir: &'a Path,
}

/// The outputs and up to `limit` examples of `data_path` for `source`.
pub fn load_data<M: LogProbModel>(
    source: &ModelSource<'_, M>,
    data_path: &Path,
    spec: &OutputsSpec,
    limit: Option<usize>,
) -> Result<(Outputs, Dataset)> {
    let outputs = match spec {
        OutputsSpec::Labels(names) if !source.classes.is_empty() => {
            ensure!(
                names.is_empty() || *names == source.classes,
                "the model's classification head has the classes {}; --labels must be omitted or name exactly them",
                source.classes.join(",")
            );
            return data::load_classification(data_path, source.tokenizer, &source.classes, limit);
        }
        OutputsSpec::Labels(names) if names.is_empty() => {
            bail!("--outputs labels needs --labels a,b,... (the model has no classification head)")
        }
        OutputsSpec::Labels(names) => data::label_outputs(names, source.encoder)?,
        OutputsSpec::Tokens => {
            ensure!(
                source.classes.is_empty(),
                "the model is a classifier: its outputs are its classes (--outputs labels)"
            );
            Outputs::Tokens
        }
    };
    let data = data::load(
        data_path,
        source.encoder,
        source.model.output_size(),
        &outputs,
        limit,
    )?;
    Ok((outputs, data))
}

/// Settings of `fisherkit fisher`.
#[derive(Debug, Clone)]
pub struct FisherJob {
    pub data: PathBuf,
    pub out: PathBuf,
    pub outputs: OutputsSpec,
    pub top_k_classes: Option<usize>,
    pub mode: Mode,
    pub examples: Option<usize>,
    pub batch_size: usize,
    pub seed: u64,
    pub gradients: GradientRoute,
}

/// Examples used when `--examples` is not given (the reference's default is
/// min(train size, 4096)).
pub const DEFAULT_EXAMPLES: usize = 4096;

/// Summary of a finished Fisher job.
#[derive(Debug)]
pub struct FisherSummary {
    pub examples: usize,
    pub skipped_nonfinite: usize,
    pub seconds: f64,
}

pub fn run_fisher<M: LogProbModel>(
    source: &ModelSource<'_, M>,
    job: &FisherJob,
) -> Result<FisherSummary> {
    let (outputs, dataset) = load_data(
        source,
        &job.data,
        &job.outputs,
        Some(job.examples.unwrap_or(DEFAULT_EXAMPLES)),
    )?;
    let grads = ModelGradients::with_route(source.model, outputs.clone(), job.gradients)?;
    let selection = ClassSelection {
        top_k_per_position: job.top_k_classes,
        ..Default::default()
    };
    let run = FisherRun {
        mode: job.mode,
        selection,
        seed: job.seed,
        batch_size: job.batch_size,
    };
    let items = &dataset.items;
    let bar = progress::bar(items.len() as u64, "examples");
    let start = std::time::Instant::now();
    let fisher = dataset_fisher(&grads, items, &run, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let mean = fisher.mean()?;
    let mut tensors = Vec::new();
    let mut offset = 0;
    for p in grads.params() {
        let n = p.numel();
        tensors.push((
            p.name.clone(),
            p.shape.clone(),
            mean[offset..offset + n].to_vec(),
        ));
        offset += n;
    }
    let mut extra = BTreeMap::new();
    extra.insert("outputs".into(), outputs_description(&outputs));
    if let Some(k) = job.top_k_classes {
        extra.insert("top_k_classes".into(), k.to_string());
    }
    extra.insert(
        "skipped_nonfinite".into(),
        fisher.skipped_nonfinite.to_string(),
    );
    extra.insert("data".into(), job.data.display().to_string());
    let meta = FisherMeta {
        examples: fisher.examples as u64,
        mode: match job.mode {
            Mode::Exact => FisherMode::Exact,
            Mode::Sampled => FisherMode::Sampled,
            Mode::Empirical => FisherMode::Empirical,
        },
        data_hash: dataset.hash.clone(),
        seed: job.seed,
        model: Some(source.dir.display().to_string()),
        extra,
    };
    write_fisher(&job.out, &tensors, &meta)?;
    Ok(FisherSummary {
        examples: fisher.examples,
        skipped_nonfinite: fisher.skipped_nonfinite,
        seconds,
    })
}

fn outputs_description(outputs: &Outputs) -> String {
    match outputs {
        Outputs::Labels { names, .. } => format!("labels:{}", names.join(",")),
        Outputs::Tokens => "tokens".into(),
    }
}

/// The outputs a description of [`outputs_description`] names (as recorded in Fisher
/// and PEF metadata), or `None` when it is not one.
pub fn outputs_spec(description: &str) -> Option<OutputsSpec> {
    match description.strip_prefix("labels:") {
        Some(names) => Some(OutputsSpec::Labels(
            names.split(',').map(str::to_string).collect(),
        )),
        None => (description == "tokens").then_some(OutputsSpec::Tokens),
    }
}

/// Settings of `fisherkit pefs`.
#[derive(Debug, Clone)]
pub struct PefJob {
    pub data: PathBuf,
    pub out: PathBuf,
    pub outputs: OutputsSpec,
    pub kind: PefKind,
    pub top_k: usize,
    pub selection: ClassSelection,
    pub examples: Option<usize>,
    pub batch_size: usize,
    pub examples_per_shard: usize,
    pub overwrite: bool,
    pub gradients: GradientRoute,
}

/// Summary of a finished PEF job.
#[derive(Debug)]
pub struct PefSummary {
    pub written: usize,
    pub resumed_from: usize,
    pub skipped_nonfinite: usize,
}

pub fn run_pefs<M: LogProbModel>(source: &ModelSource<'_, M>, job: &PefJob) -> Result<PefSummary> {
    job.selection.validate()?;
    let (outputs, dataset) = load_data(source, &job.data, &job.outputs, job.examples)?;
    let grads = ModelGradients::with_route(source.model, outputs.clone(), job.gradients)?;
    let n_params = crate::param_count(grads.params());
    ensure!(
        job.top_k <= n_params,
        "--top-k {} is larger than the model's parameter count {n_params}",
        job.top_k
    );
    let n_classes = match job.kind {
        PefKind::Diagonal => None,
        PefKind::LowRank => Some(max_columns(
            &outputs,
            &dataset,
            source.model.output_size(),
            &job.selection,
        )),
    };
    let mut parameters = Vec::new();
    let mut offset = 0u64;
    for p in grads.params() {
        parameters.push(ParameterEntry {
            name: p.name.clone(),
            shape: p.shape.clone(),
            offset,
        });
        offset += p.numel() as u64;
    }
    let provenance = Provenance {
        model: Some(source.dir.display().to_string()),
        data: Some(job.data.display().to_string()),
        data_hash: Some(dataset.hash.clone()),
        outputs: Some(outputs_description(&outputs)),
        label_names: match &outputs {
            Outputs::Labels { names, .. } => Some(names.clone()),
            Outputs::Tokens => None,
        },
    };
    let settings = provenance.with_settings(serde_json::json!({
        "top_k_classes": job.selection.top_k_per_position,
        "min_prob": job.selection.min_prob,
        "max_classes": job.selection.max_classes,
        "nonfinite_policy": "examples with non-finite gradients are written as empty PEFs with norm 0 and listed in skipped_nonfinite.json",
    }));
    let header = PefHeader {
        kind: job.kind,
        n_parameters: n_params as u64,
        parameters,
        top_k: job.top_k,
        n_classes,
        settings,
    };
    let mut writer = PefWriter::create(
        &job.out,
        header,
        WriterOptions {
            examples_per_shard: job.examples_per_shard,
            resume: true,
            overwrite: job.overwrite,
        },
    )
    .with_context(|| {
        format!(
            "opening the PEF directory {} (a directory written for another model, data or settings cannot be resumed)",
            job.out.display()
        )
    })?;
    let resumed_from = writer.examples_written();
    let items = &dataset.items;
    ensure!(
        resumed_from <= items.len(),
        "{} already holds {resumed_from} examples but the data has only {}",
        job.out.display(),
        items.len()
    );
    let bar = progress::bar(items.len() as u64, "examples");
    bar.set_position(resumed_from as u64);
    let mut skipped = Vec::new();
    let todo = &items[resumed_from..];
    for (batch_no, batch) in todo.chunks(job.batch_size.max(1)).enumerate() {
        let first = resumed_from + batch_no * job.batch_size.max(1);
        let log_probs = grads
            .log_probs_batch(batch)
            .with_context(|| format!("examples {}..{}", first + 1, first + batch.len()))?;
        for ((i, item), log_probs) in batch.iter().enumerate().zip(log_probs) {
            let index = first + i;
            let extras = ExampleExtras {
                label: item.label.map(|l| l as i64),
                prediction: match outputs {
                    Outputs::Labels { .. } => predictions(&log_probs).first().map(|&p| p as i64),
                    Outputs::Tokens => None,
                },
                logits: match outputs {
                    Outputs::Labels { .. } => log_probs.first().cloned(),
                    Outputs::Tokens => None,
                },
                source_line: Some(dataset.lines[index] as u64),
            };
            let context = || format!("example {}", index + 1);
            match job.kind {
                PefKind::Diagonal => {
                    let diagonal =
                        example_diagonal_streamed(&grads, item, &log_probs, &job.selection)
                            .with_context(context)?;
                    let ex = match diagonal {
                        Some(diagonal) => {
                            diagonal_pef(top_k_diagonal(&diagonal, job.top_k)?, extras)
                        }
                        None => {
                            skipped.push(index);
                            DiagonalExample {
                                extras,
                                ..Default::default()
                            }
                        }
                    };
                    writer.push_diagonal(&ex)?;
                }
                PefKind::LowRank => {
                    let fisher = example_classes_given(&grads, item, log_probs, &job.selection)
                        .with_context(context)?;
                    let finite = fisher.is_finite();
                    if !finite {
                        skipped.push(index);
                    }
                    let width = n_classes.unwrap_or(0);
                    let mut columns = vec![SparseColumn::default(); width];
                    let mut norm = 0.0;
                    if finite && !fisher.classes.is_empty() {
                        let sparse = top_k_low_rank(&fisher.low_rank(), job.top_k)?;
                        ensure!(
                            sparse.columns.len() <= width,
                            "example {}: {} class columns exceed the {width} of the directory",
                            index + 1,
                            sparse.columns.len()
                        );
                        for (slot, (rows, values)) in columns.iter_mut().zip(sparse.columns) {
                            slot.indices = rows.into_iter().map(u64::from).collect();
                            slot.values = values;
                        }
                        norm = sparse.dense_norm;
                    }
                    writer.push_low_rank(&LowRankExample {
                        columns,
                        norm: norm as f32,
                        extras,
                    })?;
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let written = writer.examples_written();
    writer.finish()?;
    if !skipped.is_empty() {
        fisherkit_common::atomic::write_json(&job.out.join("skipped_nonfinite.json"), &skipped)?;
    }
    Ok(PefSummary {
        written,
        resumed_from,
        skipped_nonfinite: skipped.len(),
    })
}

/// The largest number of class columns any example can have under `selection`.
fn max_columns(
    outputs: &Outputs,
    dataset: &Dataset,
    vocab: usize,
    selection: &ClassSelection,
) -> usize {
    let per_example = match outputs {
        Outputs::Labels { names, .. } => names.len(),
        Outputs::Tokens => {
            let longest = dataset
                .items
                .iter()
                .map(|i| i.example.target_ids.len())
                .max()
                .unwrap_or(1);
            longest * selection.top_k_per_position.unwrap_or(vocab).min(vocab)
        }
    };
    selection
        .max_classes
        .map_or(per_example, |m| m.min(per_example))
}

/// Refuse a Fisher mode the outputs cannot support.
pub fn check_mode(mode: Mode, outputs: &OutputsSpec, top_k_classes: Option<usize>) -> Result<()> {
    if let (Mode::Exact, OutputsSpec::Tokens, None) = (mode, outputs, top_k_classes) {
        bail!("--outputs tokens with --mode exact needs --top-k-classes K (the exact expectation over the whole vocabulary costs one backward pass per token)");
    }
    Ok(())
}

/// A sparse diagonal PEF as npeff stores it: kept values in descending order.
fn diagonal_pef(sparse: SparseDiagonal, extras: ExampleExtras) -> DiagonalExample {
    let mut order: Vec<usize> = (0..sparse.values.len()).collect();
    order.sort_by(|&a, &b| {
        sparse.values[b]
            .total_cmp(&sparse.values[a])
            .then(a.cmp(&b))
    });
    DiagonalExample {
        values: order.iter().map(|&j| sparse.values[j]).collect(),
        indices: order
            .iter()
            .map(|&j| u64::from(sparse.indices[j]))
            .collect(),
        norm: sparse.dense_norm as f32,
        extras,
    }
}
