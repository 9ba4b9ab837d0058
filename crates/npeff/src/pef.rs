//! The PEF (per-example Fisher) directory format: a validated reader and a streaming,
//! resumable shard writer. This is the contract between the Fisher computation (which
//! writes PEFs from models) and the NPEFF decompositions (which read them).
//!
//! A PEF directory holds `pefs.json` ([`PefMeta`]) and shards `shard-NNNNN.safetensors`,
//! each holding a contiguous block of examples (see the README for the tensor layout).

use anyhow::{anyhow, bail, ensure, Context, Result};
use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Format tag written into every `pefs.json`.
pub const FORMAT: &str = "fisherkit-pef/1";
const META_FILE: &str = "pefs.json";

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum PefKind {
    Diagonal,
    LowRank,
}

impl std::fmt::Display for PefKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PefKind::Diagonal => "diagonal",
            PefKind::LowRank => "low-rank",
        })
    }
}

/// One model parameter tensor in the flat order the PEF indices refer to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ParameterEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardEntry {
    pub file: String,
    pub n_examples: usize,
}

/// What the writer needs to know before the first example.
#[derive(Clone, Debug)]
pub struct PefHeader {
    pub kind: PefKind,
    pub n_parameters: u64,
    /// The model's parameter table in flat order; may be empty for synthetic data.
    pub parameters: Vec<ParameterEntry>,
    pub top_k: usize,
    /// Low-rank only: number of class columns c per example.
    pub n_classes: Option<usize>,
    /// Free-form settings of the producer (model, task, min_prob, ...), kept verbatim.
    pub settings: serde_json::Value,
}

/// Contents of `pefs.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PefMeta {
    pub format: String,
    pub kind: PefKind,
    pub n_examples: usize,
    pub n_parameters: u64,
    #[serde(default)]
    pub parameters: Vec<ParameterEntry>,
    pub top_k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_classes: Option<usize>,
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Shards in example order; when absent, `*.safetensors` in name order.
    #[serde(default)]
    pub shards: Vec<ShardEntry>,
    /// False while a writer is still appending (the directory can be resumed).
    #[serde(default = "yes")]
    pub complete: bool,
}

fn yes() -> bool {
    true
}

impl PefMeta {
    /// Class columns per example: 1 for diagonal PEFs.
    pub fn rows_per_example(&self) -> usize {
        match self.kind {
            PefKind::Diagonal => 1,
            PefKind::LowRank => self.n_classes.unwrap_or(1),
        }
    }

    /// A stable fingerprint of the parameter space (size and table), used to refuse a
    /// decomposition fitted on a different model.
    pub fn parameter_fingerprint(&self) -> String {
        let table = serde_json::to_string(&self.parameters).expect("serialisable");
        let h = fisherkit_common::fnv1a64(
            self.n_parameters
                .to_le_bytes()
                .iter()
                .chain(table.as_bytes()),
        );
        format!("{h:016x}")
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let p = path.display();
        ensure!(
            self.format == FORMAT,
            "{p}: format {:?} is not {FORMAT:?}",
            self.format
        );
        ensure!(self.top_k > 0, "{p}: top_k must be positive");
        ensure!(self.n_parameters > 0, "{p}: n_parameters must be positive");
        if self.kind == PefKind::LowRank {
            ensure!(
                self.n_classes.is_some_and(|c| c > 0),
                "{p}: a low-rank PEF needs n_classes ≥ 1"
            );
        }
        if !self.parameters.is_empty() {
            let mut offset = 0u64;
            for entry in &self.parameters {
                ensure!(
                    entry.offset == offset,
                    "{p}: parameter {:?} has offset {} but the previous parameters end at {offset}",
                    entry.name,
                    entry.offset
                );
                offset += entry.shape.iter().product::<usize>() as u64;
            }
            ensure!(
                offset == self.n_parameters,
                "{p}: the parameter table covers {offset} parameters but n_parameters is {}",
                self.n_parameters
            );
        }
        Ok(())
    }
}

/// Where a model's PEFs came from: the keys of `settings` the analyses read back (the
/// producer may store more). Synthetic PEFs have none of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    /// The checkpoint directory the PEFs were computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The JSONL data file; examples' `source_line`s refer to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// `fnv1a64:<hex>` of the data file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// The outputs the Fisher was taken over: `labels:a,b,…` or `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<String>,
    /// Names of the label indices in `labels` / `predictions` / `logits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_names: Option<Vec<String>>,
}

impl Provenance {
    /// The provenance recorded in a PEF directory's settings (empty when it has none).
    pub fn of(meta: &PefMeta) -> Self {
        serde_json::from_value(meta.settings.clone()).unwrap_or_default()
    }

    /// These keys merged into a producer's other `settings`.
    pub fn with_settings(&self, mut settings: serde_json::Value) -> serde_json::Value {
        if let (Some(target), serde_json::Value::Object(mine)) = (
            settings.as_object_mut(),
            serde_json::to_value(self).expect("serialisable"),
        ) {
            target.extend(mine);
        }
        settings
    }
}

/// Optional per-example extras stored beside the Fisher: what the analyses show next to
/// an example (its label, the model's prediction and log-probabilities) and where it
/// came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExampleExtras {
    pub label: Option<i64>,
    pub prediction: Option<i64>,
    /// The model's log-probabilities of the outputs (labels) for this example.
    pub logits: Option<Vec<f32>>,
    /// 1-based line of the example in the data file named by the producer's settings
    /// (`settings.data`).
    pub source_line: Option<u64>,
}

/// A sparsified diagonal PEF: the top-k values (descending) with flat parameter indices.
#[derive(Clone, Debug, Default)]
pub struct DiagonalExample {
    pub values: Vec<f32>,
    pub indices: Vec<u64>,
    /// ‖f‖₂ of the dense diagonal before sparsification.
    pub norm: f32,
    pub extras: ExampleExtras,
}

impl DiagonalExample {
    /// Sparsify a dense diagonal Fisher: keep its `k` largest entries.
    pub fn from_dense(f: &[f32], k: usize) -> Self {
        let (indices, values): (Vec<u64>, Vec<f32>) = f
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, v)| (i as u64, *v))
            .unzip();
        Self::from_sparse(&indices, &values, k)
    }

    /// Sparsify a diagonal given as (index, value) pairs (all its non-zeros).
    pub fn from_sparse(indices: &[u64], values: &[f32], k: usize) -> Self {
        let norm = values
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt() as f32;
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        order.truncate(k);
        Self {
            values: order.iter().map(|&i| values[i]).collect(),
            indices: order.iter().map(|&i| indices[i]).collect(),
            norm,
            extras: ExampleExtras::default(),
        }
    }
}

/// One sparse class column of a low-rank factor A (ascending indices).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseColumn {
    pub indices: Vec<u64>,
    pub values: Vec<f32>,
}

/// A sparsified low-rank PEF F = AAᵀ: c class columns with k non-zeros jointly.
#[derive(Clone, Debug, Default)]
pub struct LowRankExample {
    pub columns: Vec<SparseColumn>,
    /// ‖AᵀA‖_F of the dense factor before sparsification.
    pub norm: f32,
    pub extras: ExampleExtras,
}

impl LowRankExample {
    /// Sparsify dense class columns (each of length n_parameters).
    pub fn from_dense_columns(columns: &[&[f32]], k: usize) -> Self {
        let sparse = columns
            .iter()
            .map(|col| {
                let (indices, values) = col
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, v)| (i as u64, *v))
                    .unzip();
                SparseColumn { indices, values }
            })
            .collect();
        Self::from_sparse_columns(sparse, k)
    }

    /// Sparsify class columns given with all their non-zeros (ascending indices):
    /// the norm is taken first, then the `k` entries of largest |value| over all columns
    /// are kept (signs kept).
    pub fn from_sparse_columns(columns: Vec<SparseColumn>, k: usize) -> Self {
        let norm = gram_frobenius(&columns) as f32;
        let mut all: Vec<(usize, usize)> = columns
            .iter()
            .enumerate()
            .flat_map(|(c, col)| (0..col.values.len()).map(move |e| (c, e)))
            .collect();
        if all.len() > k {
            all.sort_by(|&(c1, e1), &(c2, e2)| {
                columns[c2].values[e2]
                    .abs()
                    .total_cmp(&columns[c1].values[e1].abs())
                    .then((c1, e1).cmp(&(c2, e2)))
            });
            all.truncate(k);
            all.sort_unstable();
        }
        let mut kept = vec![SparseColumn::default(); columns.len()];
        for (c, e) in all {
            kept[c].indices.push(columns[c].indices[e]);
            kept[c].values.push(columns[c].values[e]);
        }
        Self {
            columns: kept,
            norm,
            extras: ExampleExtras::default(),
        }
    }
}

/// Dot product of two sparse vectors with ascending indices.
pub fn sparse_dot<I: Copy + Ord>(ai: &[I], av: &[f32], bi: &[I], bv: &[f32]) -> f64 {
    let (mut p, mut q, mut acc) = (0, 0, 0f64);
    while p < ai.len() && q < bi.len() {
        match ai[p].cmp(&bi[q]) {
            std::cmp::Ordering::Less => p += 1,
            std::cmp::Ordering::Greater => q += 1,
            std::cmp::Ordering::Equal => {
                acc += av[p] as f64 * bv[q] as f64;
                p += 1;
                q += 1;
            }
        }
    }
    acc
}

/// ‖AᵀA‖_F for sparse class columns (= ‖AAᵀ‖_F).
fn gram_frobenius(columns: &[SparseColumn]) -> f64 {
    let mut sq = 0f64;
    for (a, ca) in columns.iter().enumerate() {
        for (b, cb) in columns.iter().enumerate().skip(a) {
            let d = sparse_dot(&ca.indices, &ca.values, &cb.indices, &cb.values);
            sq += if a == b { d * d } else { 2.0 * d * d };
        }
    }
    sq.sqrt()
}

/// Options of [`PefWriter::create`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Examples buffered per shard before it is written.
    pub examples_per_shard: usize,
    /// Continue an unfinished directory (same header) instead of refusing it.
    pub resume: bool,
    /// Replace an existing directory (ignored when resuming an unfinished one).
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            examples_per_shard: 1024,
            resume: false,
            overwrite: false,
        }
    }
}

/// Streams examples into shards. `pefs.json` is rewritten (atomically, `complete: false`)
/// after every shard, so an interrupted producer can reopen the directory with
/// `resume: true`, skip [`examples_written`](Self::examples_written) examples and go on.
pub struct PefWriter {
    dir: PathBuf,
    meta: PefMeta,
    per_shard: usize,
    buffer: Buffer,
}

#[derive(Default)]
struct Buffer {
    n: usize,
    values: Vec<f32>,
    indices: Vec<u32>,
    indices_wide: Vec<i64>,
    col_offsets: Vec<i32>,
    norms: Vec<f32>,
    labels: Vec<i64>,
    predictions: Vec<i64>,
    logits: Vec<f32>,
    n_logits: Option<usize>,
    n_labels: usize,
    n_predictions: usize,
    source_lines: Vec<i64>,
}

impl PefWriter {
    pub fn create(dir: &Path, header: PefHeader, options: WriterOptions) -> Result<Self> {
        ensure!(
            options.examples_per_shard > 0,
            "examples_per_shard must be positive"
        );
        let meta = PefMeta {
            format: FORMAT.into(),
            kind: header.kind,
            n_examples: 0,
            n_parameters: header.n_parameters,
            parameters: header.parameters,
            top_k: header.top_k,
            n_classes: match header.kind {
                PefKind::Diagonal => None,
                PefKind::LowRank => Some(header.n_classes.unwrap_or(0)),
            },
            settings: header.settings,
            shards: vec![],
            complete: false,
        };
        meta.validate(&dir.join(META_FILE))?;
        let meta_path = dir.join(META_FILE);
        let meta = if meta_path.exists() {
            let old: PefMeta = read_meta(&meta_path)?;
            if options.resume && !old.complete {
                ensure!(
                    old.kind == meta.kind
                        && old.n_parameters == meta.n_parameters
                        && old.parameters == meta.parameters
                        && old.top_k == meta.top_k
                        && old.n_classes == meta.n_classes,
                    "{}: cannot resume: the existing header (kind, parameters, top_k, classes) differs",
                    meta_path.display()
                );
                old
            } else if options.overwrite {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                meta
            } else if old.complete {
                bail!(
                    "{} already holds a complete PEF directory (overwrite it explicitly)",
                    dir.display()
                )
            } else {
                bail!(
                    "{} holds an unfinished PEF directory (resume it or overwrite it)",
                    dir.display()
                )
            }
        } else {
            meta
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            per_shard: options.examples_per_shard,
            buffer: Buffer::default(),
        })
    }

    /// Examples already stored (in finished shards or buffered).
    pub fn examples_written(&self) -> usize {
        self.meta.n_examples + self.buffer.n
    }

    pub fn push_diagonal(&mut self, ex: &DiagonalExample) -> Result<()> {
        ensure!(
            self.meta.kind == PefKind::Diagonal,
            "this PEF directory is {}",
            self.meta.kind
        );
        ensure!(
            ex.values.len() == ex.indices.len(),
            "example {}: {} values but {} indices",
            self.examples_written(),
            ex.values.len(),
            ex.indices.len()
        );
        ensure!(
            ex.values.len() <= self.meta.top_k,
            "example {}: {} values exceed top_k = {}",
            self.examples_written(),
            ex.values.len(),
            self.meta.top_k
        );
        let row = self.examples_written();
        ensure!(
            ex.values.iter().all(|v| v.is_finite() && *v >= 0.0)
                && ex.values.windows(2).all(|w| w[0] >= w[1]),
            "example {row}: diagonal values must be finite, non-negative and descending \
             (DiagonalExample::from_sparse/from_dense produce that)"
        );
        let k = self.meta.top_k;
        self.push_entries(&ex.indices, &ex.values, k)?;
        self.buffer.norms.push(ex.norm);
        self.push_extras(&ex.extras)
    }

    pub fn push_low_rank(&mut self, ex: &LowRankExample) -> Result<()> {
        ensure!(
            self.meta.kind == PefKind::LowRank,
            "this PEF directory is {}",
            self.meta.kind
        );
        let c = self.meta.rows_per_example();
        let row = self.examples_written();
        ensure!(
            ex.columns.len() == c,
            "example {row}: {} class columns, expected {c}",
            ex.columns.len()
        );
        let total: usize = ex.columns.iter().map(|col| col.values.len()).sum();
        ensure!(
            total <= self.meta.top_k,
            "example {row}: {total} values exceed top_k = {}",
            self.meta.top_k
        );
        let mut offset = 0i32;
        self.buffer.col_offsets.push(0);
        for col in &ex.columns {
            ensure!(
                col.indices.len() == col.values.len(),
                "example {row}: a class column has {} indices but {} values",
                col.indices.len(),
                col.values.len()
            );
            ensure!(
                col.values.iter().all(|v| v.is_finite())
                    && col.indices.windows(2).all(|w| w[0] < w[1]),
                "example {row}: class column values must be finite and indices strictly ascending"
            );
            self.push_entries(&col.indices, &col.values, 0)?;
            offset += col.values.len() as i32;
            self.buffer.col_offsets.push(offset);
        }
        let pad = self.meta.top_k - total;
        self.push_entries(&[], &[], pad)?;
        self.buffer.norms.push(ex.norm);
        self.push_extras(&ex.extras)
    }

    /// Append entries and pad with zeros up to `width` entries.
    fn push_entries(&mut self, indices: &[u64], values: &[f32], width: usize) -> Result<()> {
        for &i in indices {
            ensure!(
                i < self.meta.n_parameters,
                "example {}: parameter index {i} ≥ n_parameters {}",
                self.examples_written(),
                self.meta.n_parameters
            );
        }
        let b = &mut self.buffer;
        b.values.extend_from_slice(values);
        if self.meta.n_parameters <= u32::MAX as u64 {
            b.indices.extend(indices.iter().map(|&i| i as u32));
            b.indices
                .resize(b.indices.len() + width.saturating_sub(values.len()), 0);
        } else {
            b.indices_wide.extend(indices.iter().map(|&i| i as i64));
            b.indices_wide
                .resize(b.indices_wide.len() + width.saturating_sub(values.len()), 0);
        }
        b.values
            .resize(b.values.len() + width.saturating_sub(values.len()), 0.0);
        Ok(())
    }

    fn push_extras(&mut self, extras: &ExampleExtras) -> Result<()> {
        let row = self.examples_written();
        let b = &mut self.buffer;
        if let Some(l) = extras.label {
            b.labels.push(l);
            b.n_labels += 1;
        }
        if let Some(p) = extras.prediction {
            b.predictions.push(p);
            b.n_predictions += 1;
        }
        if let Some(line) = extras.source_line {
            b.source_lines.push(line as i64);
        }
        if let Some(logits) = &extras.logits {
            let width = *b.n_logits.get_or_insert(logits.len());
            ensure!(
                logits.len() == width,
                "example {row}: {} logits, earlier examples had {width}",
                logits.len()
            );
            b.logits.extend_from_slice(logits);
        }
        b.n += 1;
        if b.n >= self.per_shard {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the buffered examples as one shard and update `pefs.json`.
    fn flush(&mut self) -> Result<()> {
        let b = std::mem::take(&mut self.buffer);
        if b.n == 0 {
            return Ok(());
        }
        let (n, k) = (b.n, self.meta.top_k);
        for (what, count) in [
            ("labels", b.n_labels),
            ("predictions", b.n_predictions),
            ("source lines", b.source_lines.len()),
        ] {
            ensure!(
                count == 0 || count == n,
                "{what} given for {count} of the {n} examples of a shard: give them for all or none"
            );
        }
        ensure!(
            b.logits.is_empty() || b.logits.len() == n * b.n_logits.unwrap_or(0),
            "logits given for only some examples of a shard"
        );
        let index_name = match self.meta.kind {
            PefKind::Diagonal => "indices",
            PefKind::LowRank => "row_indices",
        };
        let mut tensors = vec![(
            "values".to_string(),
            OwnedTensor::f32(vec![n, k], &b.values),
        )];
        tensors.push((
            index_name.to_string(),
            if b.indices_wide.is_empty() {
                OwnedTensor::u32(vec![n, k], &b.indices)
            } else {
                OwnedTensor::i64(vec![n, k], &b.indices_wide)
            },
        ));
        if self.meta.kind == PefKind::LowRank {
            let c = self.meta.rows_per_example();
            tensors.push((
                "col_offsets".into(),
                OwnedTensor::i32(vec![n, c + 1], &b.col_offsets),
            ));
        }
        tensors.push(("norms".into(), OwnedTensor::f32(vec![n], &b.norms)));
        if b.n_labels > 0 {
            tensors.push(("labels".into(), OwnedTensor::i64(vec![n], &b.labels)));
        }
        if b.n_predictions > 0 {
            tensors.push((
                "predictions".into(),
                OwnedTensor::i64(vec![n], &b.predictions),
            ));
        }
        if let Some(width) = b.n_logits {
            tensors.push(("logits".into(), OwnedTensor::f32(vec![n, width], &b.logits)));
        }
        if !b.source_lines.is_empty() {
            tensors.push((
                "source_lines".into(),
                OwnedTensor::i64(vec![n], &b.source_lines),
            ));
        }
        let file = format!("shard-{:05}.safetensors", self.meta.shards.len());
        st::write(&self.dir.join(&file), &tensors, HashMap::new())?;
        self.meta.shards.push(ShardEntry {
            file,
            n_examples: n,
        });
        self.meta.n_examples += n;
        fisherkit_common::atomic::write_json(&self.dir.join(META_FILE), &self.meta)
    }

    /// Write the last shard and mark the directory complete.
    pub fn finish(mut self) -> Result<PefMeta> {
        self.flush()?;
        ensure!(
            self.meta.n_examples > 0,
            "{}: no examples were written",
            self.dir.display()
        );
        self.meta.complete = true;
        fisherkit_common::atomic::write_json(&self.dir.join(META_FILE), &self.meta)?;
        Ok(self.meta)
    }
}

fn read_meta(path: &Path) -> Result<PefMeta> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Sparse rows of PEFs: one row per example (diagonal) or per (example, class) (low-rank),
/// zero entries dropped, indices in the flat parameter space.
#[derive(Clone, Debug, Default)]
pub struct PefRows {
    pub n_examples: usize,
    pub rows_per_example: usize,
    pub row_ptr: Vec<usize>,
    pub indices: Vec<u64>,
    pub values: Vec<f32>,
    /// Dense norms recorded by the producer, one per example.
    pub norms: Vec<f32>,
    /// What the producer stored beside each example (empty fields when it stored none).
    pub extras: Vec<ExampleExtras>,
}

impl PefRows {
    pub fn row(&self, r: usize) -> (&[u64], &[f32]) {
        let (a, b) = (self.row_ptr[r], self.row_ptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    fn append(&mut self, other: PefRows) {
        let base = self.values.len();
        if self.row_ptr.is_empty() {
            self.row_ptr.push(0);
        }
        self.row_ptr
            .extend(other.row_ptr.iter().skip(1).map(|p| p + base));
        self.indices.extend(other.indices);
        self.values.extend(other.values);
        self.norms.extend(other.norms);
        self.extras.extend(other.extras);
        self.n_examples += other.n_examples;
        self.rows_per_example = other.rows_per_example;
    }
}

/// An opened, header-validated PEF directory.
pub struct PefDir {
    pub dir: PathBuf,
    pub meta: PefMeta,
    shard_paths: Vec<PathBuf>,
}

impl PefDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        ensure!(
            meta_path.exists(),
            "{}: no {META_FILE} (is this a PEF directory?)",
            dir.display()
        );
        let mut meta = read_meta(&meta_path)?;
        meta.validate(&meta_path)?;
        ensure!(
            meta.complete,
            "{}: the PEF directory is unfinished (its writer stopped early; resume it)",
            dir.display()
        );
        let shard_paths: Vec<PathBuf> = if meta.shards.is_empty() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            found
        } else {
            let listed: usize = meta.shards.iter().map(|s| s.n_examples).sum();
            ensure!(
                listed == meta.n_examples,
                "{}: shards list {listed} examples but n_examples is {}",
                meta_path.display(),
                meta.n_examples
            );
            meta.shards.iter().map(|s| dir.join(&s.file)).collect()
        };
        ensure!(
            !shard_paths.is_empty(),
            "{}: no *.safetensors shards",
            dir.display()
        );
        if meta.shards.is_empty() {
            meta.shards = shard_paths
                .iter()
                .map(|p| ShardEntry {
                    file: p.file_name().unwrap().to_string_lossy().into_owned(),
                    n_examples: 0,
                })
                .collect();
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            shard_paths,
        })
    }

    pub fn n_shards(&self) -> usize {
        self.shard_paths.len()
    }

    /// Read and validate one shard; `first_example` is the global index of its first row
    /// (used in error messages).
    pub fn read_shard(&self, shard: usize, first_example: usize) -> Result<PefRows> {
        let path = &self.shard_paths[shard];
        let file = MappedFile::open(path)?;
        let rows = parse_shard(&file, &self.meta, first_example)?;
        let listed = self.meta.shards[shard].n_examples;
        ensure!(
            listed == 0 || listed == rows.n_examples,
            "{}: holds {} examples but pefs.json lists {listed}",
            path.display(),
            rows.n_examples
        );
        Ok(rows)
    }

    /// Read every shard (validated) into one set of rows.
    pub fn read_all(&self) -> Result<PefRows> {
        let mut all = PefRows::default();
        for s in 0..self.n_shards() {
            let rows = self.read_shard(s, all.n_examples)?;
            all.append(rows);
        }
        if self.meta.n_examples > 0 {
            ensure!(
                all.n_examples == self.meta.n_examples,
                "{}: shards hold {} examples but pefs.json says {}",
                self.dir.display(),
                all.n_examples,
                self.meta.n_examples
            );
        }
        Ok(all)
    }
}

/// Validate one shard and turn it into sparse rows. Errors name file, tensor and row.
fn parse_shard(file: &MappedFile, meta: &PefMeta, first_example: usize) -> Result<PefRows> {
    let p = file.path().display();
    let st = file.tensors()?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| anyhow!("{p}: missing tensor `{name}`"))
    };
    let float = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let v = get(name)?;
        let data = st::to_f32(&v).with_context(|| format!("{p}: tensor `{name}`"))?;
        Ok((v.shape().to_vec(), data))
    };
    let index_name = match meta.kind {
        PefKind::Diagonal => "indices",
        PefKind::LowRank => "row_indices",
    };
    let (vshape, values) = float("values")?;
    ensure!(
        vshape.len() == 2,
        "{p}: tensor `values` has shape {vshape:?}, expected [n, k]"
    );
    let (n, k) = (vshape[0], vshape[1]);
    ensure!(
        k == meta.top_k,
        "{p}: tensor `values` has {k} entries per row but top_k is {}",
        meta.top_k
    );
    let iview = get(index_name)?;
    ensure!(
        iview.shape() == [n, k],
        "{p}: tensor `{index_name}` has shape {:?} but `values` has [{n}, {k}]",
        iview.shape()
    );
    let indices = st::to_indices(&iview).with_context(|| format!("{p}: tensor `{index_name}`"))?;
    let (nshape, norms) = float("norms")?;
    ensure!(
        nshape == [n],
        "{p}: tensor `norms` has shape {nshape:?}, expected [{n}]"
    );
    for (r, v) in norms.iter().enumerate() {
        ensure!(
            v.is_finite() && *v >= 0.0,
            "{p}: tensor `norms` row {}: {v} is not a finite non-negative norm",
            first_example + r
        );
    }
    let extras = read_extras(&st, n, &p.to_string())?;
    let c = meta.rows_per_example();
    let offsets: Option<Vec<u64>> = if meta.kind == PefKind::LowRank {
        let v = get("col_offsets")?;
        ensure!(
            v.shape() == [n, c + 1],
            "{p}: tensor `col_offsets` has shape {:?}, expected [{n}, {}]",
            v.shape(),
            c + 1
        );
        Some(st::to_indices(&v).with_context(|| format!("{p}: tensor `col_offsets`"))?)
    } else {
        None
    };
    let mut rows = PefRows {
        n_examples: n,
        rows_per_example: c,
        row_ptr: Vec::with_capacity(n * c + 1),
        indices: Vec::with_capacity(n * k),
        values: Vec::with_capacity(n * k),
        norms,
        extras,
    };
    rows.row_ptr.push(0);
    let mut seen: Vec<u64> = Vec::new();
    for i in 0..n {
        let row = first_example + i;
        let (vals, idx) = (&values[i * k..(i + 1) * k], &indices[i * k..(i + 1) * k]);
        for (e, (&v, &j)) in vals.iter().zip(idx).enumerate() {
            ensure!(
                v.is_finite(),
                "{p}: tensor `values` row {row}: entry {e} is {v} (NaN/inf)"
            );
            ensure!(
                j < meta.n_parameters,
                "{p}: tensor `{index_name}` row {row}: index {j} is out of range (n_parameters = {})",
                meta.n_parameters
            );
        }
        match &offsets {
            None => {
                seen.clear();
                for (e, (&v, &j)) in vals.iter().zip(idx).enumerate() {
                    ensure!(
                        v >= 0.0,
                        "{p}: tensor `values` row {row}: entry {e} is negative ({v}); a diagonal Fisher is non-negative"
                    );
                    ensure!(
                        e == 0 || vals[e - 1] >= v,
                        "{p}: tensor `values` row {row}: values are not sorted in descending order (entry {e})"
                    );
                    if v != 0.0 {
                        rows.indices.push(j);
                        rows.values.push(v);
                        seen.push(j);
                    }
                }
                seen.sort_unstable();
                if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
                    bail!(
                        "{p}: tensor `{index_name}` row {row}: index {} appears twice",
                        w[0]
                    );
                }
                rows.row_ptr.push(rows.values.len());
            }
            Some(off) => {
                let o = &off[i * (c + 1)..(i + 1) * (c + 1)];
                ensure!(
                    o[0] == 0 && o.windows(2).all(|w| w[0] <= w[1]) && o[c] as usize <= k,
                    "{p}: tensor `col_offsets` row {row}: {o:?} is not a non-decreasing sequence from 0 to at most {k}"
                );
                for cls in 0..c {
                    let (a, b) = (o[cls] as usize, o[cls + 1] as usize);
                    for e in a..b {
                        ensure!(
                            e == a || idx[e - 1] < idx[e],
                            "{p}: tensor `row_indices` row {row}: class column {cls} is not sorted ascending (entry {e})"
                        );
                        if vals[e] != 0.0 {
                            rows.indices.push(idx[e]);
                            rows.values.push(vals[e]);
                        }
                    }
                    rows.row_ptr.push(rows.values.len());
                }
            }
        }
    }
    Ok(rows)
}

/// The optional per-example tensors of a shard (`labels`, `predictions`, `logits`,
/// `source_lines`), validated against its `n` examples.
fn read_extras(st: &safetensors::SafeTensors<'_>, n: usize, p: &str) -> Result<Vec<ExampleExtras>> {
    let integers = |name: &str| -> Result<Option<Vec<i64>>> {
        let Ok(v) = st.tensor(name) else {
            return Ok(None);
        };
        ensure!(
            v.shape() == [n] && matches!(v.dtype(), Dtype::I64 | Dtype::I32),
            "{p}: tensor `{name}` has shape {:?} / dtype {:?}, expected [{n}] integers",
            v.shape(),
            v.dtype()
        );
        let values = st::to_i64(&v).with_context(|| format!("{p}: tensor `{name}`"))?;
        Ok(Some(values))
    };
    let labels = integers("labels")?;
    let predictions = integers("predictions")?;
    let source_lines = integers("source_lines")?;
    if let Some(lines) = &source_lines {
        if let Some(r) = lines.iter().position(|&l| l < 1) {
            bail!(
                "{p}: tensor `source_lines` row {r}: {} is not a 1-based line number",
                lines[r]
            );
        }
    }
    let logits = match st.tensor("logits") {
        Ok(v) => {
            ensure!(
                v.shape().len() == 2 && v.shape()[0] == n,
                "{p}: tensor `logits` has shape {:?}, expected [{n}, C] floats",
                v.shape()
            );
            let width = v.shape()[1];
            let data = st::to_f32(&v).with_context(|| format!("{p}: tensor `logits`"))?;
            Some((width, data))
        }
        Err(_) => None,
    };
    Ok((0..n)
        .map(|i| ExampleExtras {
            label: labels.as_ref().map(|l| l[i]),
            prediction: predictions.as_ref().map(|l| l[i]),
            logits: logits
                .as_ref()
                .map(|(w, data)| data[i * w..(i + 1) * w].to_vec()),
            source_line: source_lines.as_ref().map(|l| l[i] as u64),
        })
        .collect())
}
