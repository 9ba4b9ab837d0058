//! Planning and streaming execution of a merge: which tensors are merged, copied or
//! skipped; validation of names, shapes, dtypes, weights and Fishers before anything
//! is written; then one tensor at a time from memory-mapped inputs to sharded output.

use anyhow::{anyhow, bail, ensure, Context, Result};
use rayon::prelude::*;
use regex::Regex;
use safetensors::tensor::Dtype;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::{
    decode_f32, dtype_name, dtype_width, encode_f32, is_float, parse_dtype, Checkpoint, TensorRef,
};
use crate::fisher_file::{valid_fisher_value, FisherFile};
use crate::methods::{self, Input, MergeMethod, TensorJob, CHUNK};
use crate::recipe::{Recipe, Resolver, Scalar, ScalarOrGradient, Setting};
use crate::writer::{ShardedWriter, TensorSpec};

/// Files copied from the base model's directory next to the merged weights.
const SIDE_FILES: [&str; 12] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
];

/// The name under which the recipe is saved in the output (mergekit's name).
pub const RECIPE_FILE: &str = "mergekit_config.yml";
pub const REPORT_FILE: &str = "merge_report.json";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Merged from every input (with Fishers when `fisher` is true).
    Merge { fisher: bool },
    /// The target's values, for the given reason.
    Copy { reason: String },
}

#[derive(Debug, Clone)]
struct PlannedTensor {
    name: String,
    action: Action,
    spec: TensorSpec,
    /// Per-input weights (merged tensors only).
    weights: Vec<f64>,
}

/// A validated merge, ready to execute (once for output, or many times for a search).
pub struct Plan {
    recipe: Recipe,
    method: Box<dyn MergeMethod>,
    inputs: Vec<Checkpoint>,
    input_names: Vec<String>,
    recipe_index: Vec<Option<usize>>,
    fishers: Vec<FisherFile>,
    fisher_norms: Vec<f64>,
    target: usize,
    tensors: Vec<PlannedTensor>,
    skipped: Vec<(String, String)>,
    seed: u64,
}

/// Options that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Copy tensors missing from some (not all) models from the target instead of failing.
    pub allow_missing: bool,
    /// What happens to a sequence classifier's task head.
    pub heads: Heads,
}

/// A sequence classifier's head (`--heads`): the Fisher-merging paper keeps the target
/// model's head — heads trained on different tasks score different classes, and
/// averaging them means nothing — and merges the encoders only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Heads {
    /// Copy the target's head (when its `config.json` names a `*ForSequenceClassification`).
    #[default]
    Target,
    /// Merge the head like every other tensor.
    Merge,
}

/// The task head's tensors of Hugging Face sequence classifiers: `classifier.*` (BERT,
/// RoBERTa and most encoders), `pre_classifier.*` (DistilBERT), `score.*` (decoder LMs).
pub const TASK_HEAD_PATTERN: &str = r"^(classifier|pre_classifier|score)\.";

/// Whether the `config.json` in `dir` describes a sequence classifier.
fn is_sequence_classifier(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| {
            config["architectures"].as_array().map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str())
                    .any(|n| n.ends_with("ForSequenceClassification"))
            })
        })
        .unwrap_or(false)
}

/// What a merge did, saved as `merge_report.json` and printed by the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub method: String,
    pub models: Vec<String>,
    pub target: String,
    pub merged: Vec<String>,
    pub copied: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    /// Tensors a `fisher` merge averaged isotropically because no Fisher covered them.
    pub isotropic_fallback: Vec<String>,
    pub shards: Vec<String>,
    pub output_bytes: u64,
    pub seconds: f64,
    /// Per-input weights that replaced the recipe's (a coefficient search's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
}

impl MergeReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: merged {} tensors, copied {} from the target ({}), skipped {}; {} shard(s), {:.2} GB in {:.2} s",
            self.method,
            self.merged.len(),
            self.copied.len(),
            self.target,
            self.skipped.len(),
            self.shards.len(),
            self.output_bytes as f64 / 1e9,
            self.seconds
        );
        if !self.isotropic_fallback.is_empty() {
            s += &format!(
                "\n  isotropic fallback (no Fisher) for {} tensors: {}",
                self.isotropic_fallback.len(),
                preview(&self.isotropic_fallback)
            );
        }
        for (name, why) in self.copied.iter().take(8) {
            s += &format!("\n  copied {name}: {why}");
        }
        if self.copied.len() > 8 {
            s += &format!("\n  … and {} more copied", self.copied.len() - 8);
        }
        for (name, why) in self.skipped.iter().take(8) {
            s += &format!("\n  skipped {name}: {why}");
        }
        s
    }
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s += &format!(", … ({} in all)", names.len());
    }
    s
}

fn scalar_text(setting: Option<&Setting>) -> Option<String> {
    match setting {
        Some(Setting::Plain(ScalarOrGradient::Scalar(Scalar::Text(t)))) => Some(t.clone()),
        _ => None,
    }
}

impl Plan {
    pub fn new(recipe: Recipe, options: &PlanOptions) -> Result<Self> {
        recipe.validate()?;
        let method = methods::method(&recipe.merge_method)?;
        let mut input_names: Vec<String> = recipe.models.iter().map(|m| m.model.clone()).collect();
        let mut recipe_index: Vec<Option<usize>> = (0..input_names.len()).map(Some).collect();
        let target = match &recipe.base_model {
            Some(base) => match input_names.iter().position(|n| n == base) {
                Some(i) => i,
                None => {
                    input_names.push(base.clone());
                    recipe_index.push(None);
                    input_names.len() - 1
                }
            },
            None if method.needs_base() => {
                bail!("merge_method {} needs a base_model", recipe.merge_method)
            }
            None => 0,
        };
        let inputs = input_names
            .iter()
            .map(|n| Checkpoint::open(Path::new(n)).with_context(|| format!("model {n}")))
            .collect::<Result<Vec<_>>>()?;
        let fishers = if method.uses_fishers() {
            open_fishers(&recipe, &recipe_index)?
        } else {
            Vec::new()
        };
        let seed = recipe.seed.unwrap_or(0);
        let mut plan = Plan {
            method,
            inputs,
            input_names,
            recipe_index,
            fishers,
            fisher_norms: Vec::new(),
            target,
            tensors: Vec::new(),
            skipped: Vec::new(),
            seed,
            recipe,
        };
        plan.plan_tensors(options)?;
        plan.resolve_weights()?;
        plan.fisher_norms = plan.compute_fisher_norms()?;
        Ok(plan)
    }

    pub fn method_name(&self) -> &str {
        self.method.name()
    }

    /// Index of the target (base) among the inputs.
    pub fn target_index(&self) -> usize {
        self.target
    }

    /// The input models (files or directories) in weight order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Directory of the target model (its config and tokenizer live there).
    pub fn target_dir(&self) -> PathBuf {
        self.inputs[self.target].dir()
    }

    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Per-input weights of the first merged tensor (the recipe's coefficients).
    pub fn base_weights(&self) -> Option<&[f64]> {
        self.tensors
            .iter()
            .find(|t| matches!(t.action, Action::Merge { .. }))
            .map(|t| t.weights.as_slice())
    }

    fn plan_tensors(&mut self, options: &PlanOptions) -> Result<()> {
        let mut exclude = self
            .recipe
            .exclude
            .iter()
            .map(|p| Regex::new(p).with_context(|| format!("exclude pattern {p:?}")))
            .collect::<Result<Vec<_>>>()?;
        let keep_head =
            options.heads == Heads::Target && is_sequence_classifier(&self.target_dir());
        if keep_head {
            exclude.push(Regex::new(TASK_HEAD_PATTERN).expect("a valid pattern"));
        }
        let out_dtype = match self
            .recipe
            .out_dtype
            .as_ref()
            .or(self.recipe.dtype.as_ref())
        {
            Some(d) => Some(parse_dtype(d)?),
            None => None,
        };
        let target = &self.inputs[self.target];
        let others: Vec<usize> = (0..self.inputs.len())
            .filter(|&i| i != self.target)
            .collect();
        let mut problems: Vec<String> = Vec::new();
        let mut missing_by_model: HashMap<usize, Vec<String>> = HashMap::new();
        for name in target.names() {
            let t = target.tensor(name).expect("listed");
            let dtype = match out_dtype {
                Some(d) if is_float(t.dtype) => d,
                _ => t.dtype,
            };
            let spec = TensorSpec {
                name: name.clone(),
                dtype,
                shape: t.shape.clone(),
            };
            let copy = |reason: String| Action::Copy { reason };
            let missing: Vec<usize> = others
                .iter()
                .copied()
                .filter(|&i| !self.inputs[i].contains(name))
                .collect();
            let action = if !is_float(t.dtype) {
                copy(format!("{:?} tensor (not merged)", t.dtype))
            } else if let Some(re) = exclude.iter().find(|re| re.is_match(name)) {
                if keep_head && re.as_str() == TASK_HEAD_PATTERN {
                    copy("the target's classification head (--heads target)".into())
                } else {
                    copy(format!("excluded by filter {:?}", re.as_str()))
                }
            } else if !others.is_empty() && missing.len() == others.len() {
                copy("only in the target".into())
            } else if !missing.is_empty() {
                let who: Vec<&str> = missing
                    .iter()
                    .map(|&i| self.input_names[i].as_str())
                    .collect();
                if options.allow_missing {
                    copy(format!("missing in {} (--allow-missing)", who.join(", ")))
                } else {
                    for &i in &missing {
                        missing_by_model.entry(i).or_default().push(name.clone());
                    }
                    continue;
                }
            } else {
                for &i in &others {
                    let o = self.inputs[i].tensor(name).expect("present");
                    if o.shape != t.shape {
                        problems.push(format!(
                            "tensor {name}: shape {:?} in {} but {:?} in {}",
                            t.shape, self.input_names[self.target], o.shape, self.input_names[i]
                        ));
                    } else if !is_float(o.dtype) {
                        problems.push(format!(
                            "tensor {name}: dtype {:?} in {} but {:?} in {}",
                            t.dtype, self.input_names[self.target], o.dtype, self.input_names[i]
                        ));
                    }
                }
                Action::Merge {
                    fisher: self.fisher_coverage(name, &t.shape, &mut problems),
                }
            };
            self.tensors.push(PlannedTensor {
                name: name.clone(),
                action,
                spec,
                weights: Vec::new(),
            });
        }
        for (i, names) in missing_by_model {
            problems.push(format!(
                "{} lacks {} tensor(s) the target has: {} (pass --allow-missing to copy them from the target)",
                self.input_names[i],
                names.len(),
                preview(&names)
            ));
        }
        for (i, fisher) in self.fishers.iter().enumerate() {
            let extra: Vec<String> = fisher
                .checkpoint
                .names()
                .iter()
                .filter(|n| !target.contains(n))
                .cloned()
                .collect();
            if !extra.is_empty() {
                problems.push(format!(
                    "Fisher {} does not match the model: {} tensor(s) not in {}: {}",
                    fisher.checkpoint.root().display(),
                    extra.len(),
                    self.input_names[i],
                    preview(&extra)
                ));
            }
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if i == self.target {
                continue;
            }
            for name in input.names() {
                if !target.contains(name) {
                    self.skipped
                        .push((name.clone(), format!("only in {}", self.input_names[i])));
                }
            }
        }
        if !problems.is_empty() {
            let shown = problems.len().min(10);
            let mut text = problems[..shown].join("\n  ");
            if problems.len() > shown {
                text += &format!("\n  … and {} more problems", problems.len() - shown);
            }
            bail!("cannot merge:\n  {text}");
        }
        Ok(())
    }

    /// Whether every Fisher covers `name` (true), none does (false: isotropic fallback);
    /// partial coverage or a shape mismatch is a problem.
    fn fisher_coverage(&self, name: &str, shape: &[usize], problems: &mut Vec<String>) -> bool {
        if self.fishers.is_empty() {
            return false;
        }
        let have: Vec<bool> = self
            .fishers
            .iter()
            .map(|f| f.checkpoint.contains(name))
            .collect();
        if have.iter().all(|h| !h) {
            return false;
        }
        for (f, h) in self.fishers.iter().zip(&have) {
            let path = f.checkpoint.root().display();
            match f.checkpoint.tensor(name) {
                None if !h => problems.push(format!(
                    "Fisher {path} has no tensor {name} while other Fishers do"
                )),
                Some(t) if t.shape != shape => problems.push(format!(
                    "Fisher {path}: tensor {name} has shape {:?}, the model {:?}",
                    t.shape, shape
                )),
                _ => {}
            }
        }
        true
    }

    fn resolve_weights(&mut self) -> Result<()> {
        let names: Vec<String> = self.inputs[self.target].names().to_vec();
        let resolver = Resolver::new(&self.recipe, &names);
        let required = !matches!(self.method.name(), "slerp" | "passthrough" | "fisher");
        let needs_base = self.method.needs_base();
        for t in &mut self.tensors {
            if !matches!(t.action, Action::Merge { .. }) {
                continue;
            }
            let params = resolver.for_tensor(&t.name);
            t.weights = self
                .recipe_index
                .iter()
                .enumerate()
                .map(|(i, ri)| match ri {
                    // The base of a task-vector merge has no task vector, hence no weight.
                    Some(m) if needs_base && i == self.target => {
                        params.model_f64(*m, "weight", Some(0.0))
                    }
                    Some(m) => params.model_f64(*m, "weight", (!required).then_some(1.0)),
                    None => Ok(0.0),
                })
                .collect::<Result<_>>()?;
            self.method
                .check_weights(&t.weights, self.target)
                .with_context(|| format!("tensor {}", t.name))?;
        }
        Ok(())
    }

    /// Each Fisher's L2 norm over all merged tensors, if `normalize_fishers` is set.
    fn compute_fisher_norms(&self) -> Result<Vec<f64>> {
        let resolver = Resolver::new(&self.recipe, &[]);
        let on = resolver
            .for_tensor("")
            .global_bool("normalize_fishers", false)?;
        if self.fishers.is_empty() || !on {
            return Ok(vec![1.0; self.inputs.len()]);
        }
        let mut norms = Vec::new();
        for f in &self.fishers {
            let ck = &f.checkpoint;
            let mut sum = 0f64;
            for t in &self.tensors {
                if t.action != (Action::Merge { fisher: true }) {
                    continue;
                }
                let r = ck.tensor(&t.name).expect("coverage checked");
                let bytes = ck.bytes(r);
                sum += bytes
                    .par_chunks(CHUNK * 4)
                    .map(|b| {
                        b.chunks_exact(4)
                            .map(|x| {
                                let v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64;
                                v * v
                            })
                            .sum::<f64>()
                    })
                    .collect::<Vec<_>>()
                    .iter()
                    .sum::<f64>();
                ck.release(r);
            }
            norms.push(sum.sqrt());
        }
        Ok(norms)
    }

    /// Output tensor specs in order.
    pub fn specs(&self) -> Vec<TensorSpec> {
        self.tensors.iter().map(|t| t.spec.clone()).collect()
    }

    /// Run the merge, handing each finished tensor (in output dtype) to `sink`.
    /// `weights` overrides every merged tensor's per-input weights (coefficient search).
    /// `sink` runs on its own thread, one tensor behind the merge, so writing a tensor
    /// overlaps merging the next one.
    pub fn execute(
        &self,
        weights: Option<&[f64]>,
        sink: &mut (dyn FnMut(&TensorSpec, &[u8]) -> Result<()> + Send),
        progress: &indicatif::ProgressBar,
    ) -> Result<MergeReport> {
        let start = Instant::now();
        if let Some(w) = weights {
            ensure!(
                w.len() == self.inputs.len(),
                "{} weights given for {} models",
                w.len(),
                self.inputs.len()
            );
            self.method.check_weights(w, self.target)?;
        }
        let mut report = MergeReport {
            method: self.method.name().into(),
            models: self.input_names.clone(),
            target: self.input_names[self.target].clone(),
            merged: Vec::new(),
            copied: Vec::new(),
            skipped: self.skipped.clone(),
            isotropic_fallback: Vec::new(),
            shards: Vec::new(),
            output_bytes: 0,
            seconds: 0.0,
            weights: weights.map(<[f64]>::to_vec),
        };
        std::thread::scope(|scope| -> Result<()> {
            // Two buffers circulate: one being merged into, one being written.
            let (to_sink, finished) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(1);
            let (give_back, free) = std::sync::mpsc::channel::<Vec<u8>>();
            for _ in 0..2 {
                give_back.send(Vec::new()).expect("receiver alive");
            }
            let sink_thread = scope.spawn(move || -> Result<()> {
                for (k, bytes) in finished {
                    sink(&self.tensors[k].spec, &bytes)?;
                    // The merge loop may have stopped already; the buffer is then dropped.
                    let _ = give_back.send(bytes);
                }
                Ok(())
            });
            let merged = self.merge_all(weights, &mut report, free, &to_sink, progress);
            drop(to_sink);
            let written = sink_thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            // A write error stops the merge loop too; report it rather than the
            // closed channel the loop saw.
            written.and(merged)
        })?;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The merge loop of [`Plan::execute`]: merge or copy each tensor into a free buffer
    /// and send it to the sink thread.
    fn merge_all(
        &self,
        weights: Option<&[f64]>,
        report: &mut MergeReport,
        free: std::sync::mpsc::Receiver<Vec<u8>>,
        to_sink: &std::sync::mpsc::SyncSender<(usize, Vec<u8>)>,
        progress: &indicatif::ProgressBar,
    ) -> Result<()> {
        let names: Vec<String> = self.inputs[self.target].names().to_vec();
        let resolver = Resolver::new(&self.recipe, &names);
        for (k, t) in self.tensors.iter().enumerate() {
            if let Some(next) = self.tensors.get(k + 1) {
                self.prefetch(next);
            }
            let spec = &t.spec;
            let mut out = free
                .recv()
                .map_err(|_| anyhow!("the output writer stopped"))?;
            // Every byte is overwritten below, so a reused buffer is not cleared first.
            out.resize(spec.byte_len(), 0u8);
            match &t.action {
                Action::Copy { reason } => {
                    self.copy_tensor(&t.name, spec, &mut out);
                    report.copied.push((t.name.clone(), reason.clone()));
                }
                Action::Merge { fisher } => {
                    let job = TensorJob {
                        name: &t.name,
                        numel: spec.shape.iter().product(),
                        inputs: self.job_inputs(&t.name),
                        fishers: if *fisher {
                            self.job_fishers(&t.name)
                        } else {
                            Vec::new()
                        },
                        base: self.target,
                        weights: weights.map_or_else(|| t.weights.clone(), <[f64]>::to_vec),
                        params: resolver.for_tensor(&t.name),
                        recipe_index: self.recipe_index.clone(),
                        fisher_norms: self.fisher_norms.clone(),
                        seed: self.seed ^ methods::splitmix(name_hash(&t.name)),
                    };
                    self.merge_tensor(&job, spec.dtype, &mut out)
                        .with_context(|| format!("tensor {}", t.name))?;
                    report.merged.push(t.name.clone());
                    if self.method.uses_fishers() && !fisher {
                        report.isotropic_fallback.push(t.name.clone());
                    }
                }
            }
            self.release(&t.name);
            report.output_bytes += out.len() as u64;
            progress.inc(out.len() as u64);
            to_sink
                .send((k, out))
                .map_err(|_| anyhow!("the output writer stopped"))?;
        }
        Ok(())
    }

    fn job_inputs(&self, name: &str) -> Vec<Input<'_>> {
        self.inputs
            .iter()
            .map(|c| Input {
                checkpoint: c,
                tensor: c.tensor(name).expect("planned tensor present"),
            })
            .collect()
    }

    fn job_fishers(&self, name: &str) -> Vec<Input<'_>> {
        self.fishers
            .iter()
            .map(|f| Input {
                checkpoint: &f.checkpoint,
                tensor: f.checkpoint.tensor(name).expect("coverage checked"),
            })
            .collect()
    }

    fn all_refs<'s>(&'s self, name: &str) -> Vec<(&'s Checkpoint, &'s TensorRef)> {
        self.inputs
            .iter()
            .chain(self.fishers.iter().map(|f| &f.checkpoint))
            .filter_map(|c| c.tensor(name).map(|t| (c, t)))
            .collect()
    }

    fn prefetch(&self, t: &PlannedTensor) {
        for (c, r) in self.all_refs(&t.name) {
            c.prefetch(r);
        }
    }

    fn release(&self, name: &str) {
        for (c, r) in self.all_refs(name) {
            c.release(r);
        }
    }

    fn copy_tensor(&self, name: &str, spec: &TensorSpec, out: &mut [u8]) {
        let ck = &self.inputs[self.target];
        let t = ck.tensor(name).expect("planned tensor present");
        let src = ck.bytes(t);
        if t.dtype == spec.dtype {
            out.copy_from_slice(src);
            return;
        }
        let (wi, wo) = (dtype_width(t.dtype), dtype_width(spec.dtype));
        out.par_chunks_mut(CHUNK * wo)
            .zip(src.par_chunks(CHUNK * wi))
            .for_each_init(Vec::new, |buf: &mut Vec<f32>, (o, s)| {
                buf.resize(s.len() / wi, 0.0);
                decode_f32(t.dtype, s, buf);
                encode_f32(spec.dtype, buf, o);
            });
    }

    fn merge_tensor(&self, job: &TensorJob<'_>, dtype: Dtype, out: &mut [u8]) -> Result<()> {
        let merger = self.method.begin_tensor(job)?;
        let width = dtype_width(dtype);
        let bad = out
            .par_chunks_mut(CHUNK * width)
            .enumerate()
            .map(|(c, o)| {
                BUFFERS.with_borrow_mut(|b| {
                    let n = o.len() / width;
                    methods::load_chunk(&job.inputs, c * CHUNK, n, &mut b.inputs);
                    methods::load_chunk(&job.fishers, c * CHUNK, n, &mut b.fishers);
                    b.merged.resize(n, 0.0);
                    merger.merge_chunk(c, &b.inputs, &b.fishers, &mut b.scratch, &mut b.merged);
                    encode_f32(dtype, &b.merged, o);
                    let bad_fisher = b
                        .fishers
                        .iter()
                        .any(|f| f.iter().any(|v| !valid_fisher_value(*v)));
                    (!b.merged.iter().all(|v| v.is_finite()) || bad_fisher).then_some(c)
                })
            })
            .find_any(Option::is_some)
            .flatten();
        match bad {
            None => Ok(()),
            Some(c) => Err(self.explain_non_finite(job, c)),
        }
    }

    /// Name the input responsible for a non-finite result in chunk `c`.
    fn explain_non_finite(&self, job: &TensorJob<'_>, c: usize) -> anyhow::Error {
        let start = c * CHUNK;
        let n = CHUNK.min(job.numel - start);
        let mut buf = vec![0f32; n];
        for (i, input) in job.inputs.iter().enumerate() {
            input.read(start, &mut buf);
            if let Some(v) = buf.iter().find(|v| !v.is_finite()) {
                return anyhow!(
                    "model {} holds a non-finite value ({v})",
                    self.input_names[i]
                );
            }
        }
        for (f, input) in self.fishers.iter().zip(&job.fishers) {
            input.read(start, &mut buf);
            if let Some(v) = buf.iter().find(|v| !valid_fisher_value(**v)) {
                return anyhow!(
                    "Fisher {} holds {v}; Fisher values must be finite and ≥ 0",
                    f.checkpoint.root().display()
                );
            }
        }
        anyhow!("the merge produced non-finite values (overflow in the output dtype or extreme weights)")
    }
}

/// Per-thread chunk buffers, kept for the whole run so large merges do not re-fault
/// fresh pages for every chunk.
#[derive(Default)]
struct ChunkBuffers {
    inputs: Vec<Vec<f32>>,
    fishers: Vec<Vec<f32>>,
    merged: Vec<f32>,
    scratch: Vec<Vec<f32>>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<ChunkBuffers> = std::cell::RefCell::default();
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms (std's hasher is randomly seeded).
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn open_fishers(recipe: &Recipe, recipe_index: &[Option<usize>]) -> Result<Vec<FisherFile>> {
    let mut out = Vec::new();
    let mut without = Vec::new();
    for ri in recipe_index {
        let Some(m) = ri else {
            bail!("the fisher method merges the listed models; base_model must be one of them");
        };
        let entry = &recipe.models[*m];
        match scalar_text(entry.parameters.get("fisher")) {
            Some(path) => out.push(
                FisherFile::open(Path::new(&path))
                    .with_context(|| format!("Fisher of model {}", entry.model))?,
            ),
            None => without.push(entry.model.clone()),
        }
    }
    if !without.is_empty() {
        bail!(
            "the fisher method needs a `fisher` file for every model; missing for {}",
            without.join(", ")
        );
    }
    Ok(out)
}

/// Merge into a new model directory: shards, index, config/tokenizer files copied from
/// the target, the recipe and a report. The directory appears only when complete.
pub struct OutputOptions {
    pub out: PathBuf,
    pub force: bool,
    pub max_shard_bytes: u64,
    /// The recipe text saved as `mergekit_config.yml` (the YAML of the plan if None).
    pub recipe_text: Option<String>,
    /// fsync the shards before the directory is renamed into place. Off by default, as
    /// in mergekit and `save_pretrained`: the staged rename already guarantees that a
    /// failed run leaves no complete-looking output; fsync adds power-loss durability
    /// at disk speed.
    pub fsync: bool,
}

pub fn merge_to_dir(plan: &Plan, opts: &OutputOptions) -> Result<MergeReport> {
    merge_to_dir_weighted(plan, opts, None)
}

/// [`merge_to_dir`] with every merged tensor's per-input weights replaced by `weights`
/// (the candidate a coefficient search chose); the report records them.
pub fn merge_to_dir_weighted(
    plan: &Plan,
    opts: &OutputOptions,
    weights: Option<&[f64]>,
) -> Result<MergeReport> {
    let staged = fisherkit_common::atomic::StagedDir::new(&opts.out, opts.force)?;
    let dir = staged.path().to_path_buf();
    let specs = plan.specs();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut writer = ShardedWriter::new(&dir, &specs, opts.max_shard_bytes, metadata, opts.fsync);
    let total: u64 = specs.iter().map(|s| s.byte_len() as u64).sum();
    let bar = fisherkit_common::progress::bar(total, "bytes");
    let mut report = plan.execute(
        weights,
        &mut |spec, bytes| writer.write_tensor(&spec.name, bytes),
        &bar,
    )?;
    bar.finish_and_clear();
    report.shards = writer.finish()?;
    copy_side_files(plan, &dir)?;
    let recipe_text = match &opts.recipe_text {
        Some(t) => t.clone(),
        None => plan.recipe.to_yaml()?,
    };
    fisherkit_common::atomic::write_bytes(&dir.join(RECIPE_FILE), recipe_text.as_bytes())?;
    fisherkit_common::atomic::write_json(&dir.join(REPORT_FILE), &report)?;
    staged.commit()?;
    Ok(report)
}

/// Copy config and tokenizer files from the target's directory (only when the target
/// was given as a directory), recording the output dtype in `config.json`.
fn copy_side_files(plan: &Plan, dir: &Path) -> Result<()> {
    let target = &plan.inputs[plan.target];
    if !target.root().is_dir() {
        return Ok(());
    }
    let out_dtype: BTreeSet<Dtype> = plan
        .tensors
        .iter()
        .filter(|t| is_float(t.spec.dtype))
        .map(|t| t.spec.dtype)
        .collect();
    for file in SIDE_FILES {
        let src = target.dir().join(file);
        if !src.is_file() {
            continue;
        }
        let dst = dir.join(file);
        if file == "config.json" && out_dtype.len() == 1 {
            let text = std::fs::read_to_string(&src)
                .with_context(|| format!("reading {}", src.display()))?;
            let mut json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", src.display()))?;
            if let Some(obj) = json.as_object_mut() {
                let d = *out_dtype.iter().next().expect("one dtype");
                obj.insert("torch_dtype".into(), dtype_name(d).into());
            }
            fisherkit_common::atomic::write_json(&dst, &json)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
