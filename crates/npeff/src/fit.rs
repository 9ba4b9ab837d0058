//! The `fit` and `coeffs` drivers: read PEFs, preprocess, iterate with progress,
//! checkpoints and loss logging, post-process and write safetensors outputs.

use crate::linalg::Csr;
use crate::pef::{PefDir, PefKind, PefMeta, PefRows};
use crate::prep::{prepare, project, Partitioned};
use crate::solve::{fit_coefficients, tr_xx, DiagSolver, DiagState, LrmSolver, LrmState};
use anyhow::{anyhow, bail, ensure, Context, Result};
use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Metadata key holding the JSON description of a decomposition or checkpoint.
const META_KEY: &str = "fisherkit.npeff";

/// Everything that determines a fit's result (stored in outputs and checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitSettings {
    pub components: usize,
    /// D: iterations; LRM: joint iterations (after the G-only warm-up).
    pub iters: usize,
    /// LRM only: G steps with W frozen before the joint iterations.
    pub g_only_iters: usize,
    /// LRM only: G gradient step size.
    pub lr: f32,
    /// LRM only: λ of λ‖GGᵀ − (2/r)I‖²_F.
    pub orth_reg: f32,
    pub min_nnz: usize,
    pub seed: u64,
    /// Columns per partition (the unit of parallel/distributed work).
    pub cols_per_partition: usize,
    /// D only: entries of the unit-norm H rows at or above this go into the sparse H.
    pub h_threshold: f32,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self {
            components: 32,
            iters: 100,
            g_only_iters: 50,
            lr: 1e-3,
            orth_reg: 0.0,
            min_nnz: 1,
            seed: 0,
            cols_per_partition: 8192,
            h_threshold: 1e-6,
        }
    }
}

/// How a fit runs (does not change the result).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Log the loss every this many iterations (progress bar and loss history).
    pub log_every: usize,
    /// Write a checkpoint every this many iterations (0 = never).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint beside the output if there is one.
    pub resume: bool,
    /// Stop after this many iterations in this run, leaving a checkpoint to resume
    /// from (for time-limited job slots).
    pub stop_after: Option<usize>,
}

/// Description stored in the output's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecompositionInfo {
    pub kind: PefKind,
    pub settings: FitSettings,
    pub n_examples: usize,
    pub n_parameters: u64,
    pub parameter_fingerprint: String,
    pub classes: usize,
    pub n_kept: usize,
    pub nnz: usize,
    pub empty_examples: usize,
    pub partitions: usize,
    /// Iterations done (LRM: G-only + joint).
    pub steps_done: usize,
    /// Last logged loss (None in checkpoints before the first log).
    pub final_loss: Option<f64>,
    /// What `loss_history` holds.
    pub loss_definition: String,
    /// Wall-clock seconds per iteration of the run that wrote this file.
    #[serde(default)]
    pub seconds_per_step: f64,
    /// Peak resident memory of that process (0 where unknown).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// CPU seconds (all threads) per iteration of that run.
    #[serde(default)]
    pub cpu_seconds_per_step: f64,
}

/// Summary of a finished fit.
#[derive(Clone, Debug)]
pub struct FitReport {
    pub info: DecompositionInfo,
    pub loss_history: Vec<(usize, f64)>,
    pub seconds_per_step: f64,
    /// None when the run stopped early (`stop_after`) and left a checkpoint instead.
    pub output: Option<PathBuf>,
}

pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    out.with_file_name(name)
}

fn f64_tensor(shape: Vec<usize>, values: &[f64]) -> OwnedTensor {
    OwnedTensor {
        dtype: Dtype::F64,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn history_tensor(history: &[(usize, f64)]) -> OwnedTensor {
    let flat: Vec<f64> = history.iter().flat_map(|(i, l)| [*i as f64, *l]).collect();
    f64_tensor(vec![history.len(), 2], &flat)
}

fn read_history(file: &MappedFile) -> Result<Vec<(usize, f64)>> {
    let st = file.tensors()?;
    let view = st
        .tensor("loss_history")
        .map_err(|_| anyhow!("{}: missing tensor `loss_history`", file.path().display()))?;
    ensure!(
        view.dtype() == Dtype::F64,
        "{}: `loss_history` must be f64",
        file.path().display()
    );
    let flat: Vec<f64> = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Ok(flat
        .chunks_exact(2)
        .map(|p| (p[0] as usize, p[1]))
        .collect())
}

fn info_of(file: &MappedFile) -> Result<DecompositionInfo> {
    let meta = file.metadata()?;
    let text = meta.get(META_KEY).ok_or_else(|| {
        anyhow!(
            "{}: not an NPEFF decomposition (no `{META_KEY}` metadata)",
            file.path().display()
        )
    })?;
    serde_json::from_str(text).map_err(|e| anyhow!("{}: metadata: {e}", file.path().display()))
}

fn read_matrix(file: &MappedFile, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
    let (shape, data) = file.read_f32(name)?;
    ensure!(
        shape == [rows, cols],
        "{}: tensor `{name}` has shape {shape:?}, expected [{rows}, {cols}]",
        file.path().display()
    );
    Ok(data)
}

/// Scale dictionary rows to unit L2 norm, rescaling W's columns by norm^power so the
/// model is unchanged (power 1 for WH, 2 for Σ W g gᵀ).
fn normalise_rows(dict: &mut [f32], w: &mut [f32], r: usize, power: i32) {
    let m = dict.len() / r;
    for j in 0..r {
        let row = &mut dict[j * m..(j + 1) * m];
        let norm = crate::linalg::dot(row, row).sqrt() as f32;
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
            w.chunks_exact_mut(r)
                .for_each(|wi| wi[j] *= norm.powi(power));
        }
    }
}

/// Dictionary rows as CSR of entries ≥ threshold (column = kept index).
fn sparse_rows(dict: &[f32], r: usize, threshold: f32) -> (Vec<i64>, Vec<i64>, Vec<f32>) {
    let m = dict.len() / r;
    let (mut offsets, mut cols, mut vals) = (vec![0i64], vec![], vec![]);
    for j in 0..r {
        for (c, &v) in dict[j * m..(j + 1) * m].iter().enumerate() {
            if v >= threshold && v > 0.0 {
                cols.push(c as i64);
                vals.push(v);
            }
        }
        offsets.push(cols.len() as i64);
    }
    (offsets, cols, vals)
}

enum State {
    Diag(DiagState),
    Lrm(LrmState),
}

/// Fit a decomposition of the PEFs in `pefs`, writing `out` (and checkpoints beside it).
pub fn fit(pefs: &Path, settings: &FitSettings, run: &RunOptions, out: &Path) -> Result<FitReport> {
    let dir = PefDir::open(pefs)?;
    let meta = dir.meta.clone();
    let rows = dir.read_all()?;
    let prepared = prepare(meta.kind, &rows, settings.min_nnz)
        .with_context(|| format!("preparing {}", pefs.display()))?;
    drop(rows);
    let r = settings.components;
    ensure!(r > 0, "--components must be positive");
    ensure!(
        r <= prepared.n_examples,
        "{r} components requested but {} holds only {} examples",
        pefs.display(),
        prepared.n_examples
    );
    ensure!(
        r <= prepared.kept.len(),
        "{r} components requested but only {} parameters are kept after pruning (min_nnz = {})",
        prepared.kept.len(),
        settings.min_nnz
    );
    if prepared.empty_examples > 0 {
        eprintln!(
            "warning: {} of {} examples have no non-zero in the kept parameters; they stay as zero rows",
            prepared.empty_examples, prepared.n_examples
        );
    }
    let x = Partitioned::new(&prepared.x, settings.cols_per_partition);
    let classes = prepared.rows_per_example;
    let mut info = DecompositionInfo {
        kind: meta.kind,
        settings: settings.clone(),
        n_examples: prepared.n_examples,
        n_parameters: meta.n_parameters,
        parameter_fingerprint: meta.parameter_fingerprint(),
        classes,
        n_kept: prepared.kept.len(),
        nnz: x.nnz(),
        empty_examples: prepared.empty_examples,
        partitions: x.parts.len(),
        steps_done: 0,
        final_loss: None,
        loss_definition: match meta.kind {
            PefKind::Diagonal => "‖A − WH‖_F after each logged iteration".into(),
            PefKind::LowRank => {
                "Σ_i ‖F_i − Σ_j W_ij g_j g_jᵀ‖²_F (+ orthogonality penalty) after each logged step"
                    .into()
            }
        },
        seconds_per_step: 0.0,
        peak_rss_bytes: 0,
        cpu_seconds_per_step: 0.0,
    };
    let diag = DiagSolver { x: &x, r };
    let lrm = LrmSolver {
        x: &x,
        n_examples: prepared.n_examples,
        classes,
        r,
        lr: settings.lr,
        orth_reg: settings.orth_reg,
        tr_xx: if meta.kind == PefKind::LowRank {
            tr_xx(&prepared.x, classes)
        } else {
            0.0
        },
    };
    drop(prepared.x);
    let total = match meta.kind {
        PefKind::Diagonal => settings.iters,
        PefKind::LowRank => settings.g_only_iters + settings.iters,
    };
    let ckpt = checkpoint_path(out);
    let mut history: Vec<(usize, f64)> = vec![];
    let mut state = if run.resume && ckpt.exists() {
        let file = MappedFile::open(&ckpt)?;
        let old = info_of(&file)?;
        let same = old.kind == info.kind
            && old.parameter_fingerprint == info.parameter_fingerprint
            && old.n_examples == info.n_examples
            && old.n_kept == info.n_kept
            && FitSettings {
                iters: settings.iters,
                g_only_iters: settings.g_only_iters,
                ..old.settings.clone()
            } == *settings;
        ensure!(
            same,
            "{}: the checkpoint was written for different PEFs or settings; remove it or drop --resume",
            ckpt.display()
        );
        ensure!(
            old.steps_done <= total,
            "{}: the checkpoint is at step {} but only {total} steps are requested",
            ckpt.display(),
            old.steps_done
        );
        if meta.kind == PefKind::LowRank {
            ensure!(
                old.settings.g_only_iters == settings.g_only_iters
                    || old.steps_done <= settings.g_only_iters.min(old.settings.g_only_iters),
                "{}: cannot change --g-only-iters after the warm-up has passed",
                ckpt.display()
            );
        }
        info.steps_done = old.steps_done;
        history = read_history(&file)?;
        let w = read_matrix(&file, "W", info.n_examples, r)?;
        let dict_name = if meta.kind == PefKind::Diagonal {
            "H"
        } else {
            "G"
        };
        let dict = read_matrix(&file, dict_name, r, info.n_kept)?;
        eprintln!(
            "resuming from {} at step {}",
            ckpt.display(),
            info.steps_done
        );
        match meta.kind {
            PefKind::Diagonal => State::Diag(DiagState {
                w,
                ht: x.split_transposed(&dict, r),
            }),
            PefKind::LowRank => State::Lrm(LrmState {
                w,
                gt: x.split_transposed(&dict, r),
            }),
        }
    } else {
        match meta.kind {
            PefKind::Diagonal => State::Diag(diag.init(settings.seed)),
            PefKind::LowRank => State::Lrm(lrm.init(settings.seed)),
        }
    };
    let pb = fisherkit_common::progress::bar(total as u64, "iters");
    pb.set_position(info.steps_done as u64);
    let log_every = run.log_every.max(1);
    let start = Instant::now();
    let cpu_start = crate::cpu_seconds();
    let first_step = info.steps_done;
    let mut diag_hh = match &state {
        State::Diag(st) => diag.hh(&st.ht),
        State::Lrm(_) => vec![],
    };
    while info.steps_done < total {
        let step = info.steps_done + 1;
        let logged = match &mut state {
            State::Diag(st) => {
                let (hh, loss_sq) = diag.iterate(st, &diag_hh);
                diag_hh = hh;
                loss_sq.max(0.0).sqrt()
            }
            State::Lrm(st) => {
                // The loss returned is that of the state before this step, i.e. after step-1.
                let before = lrm.iterate(st, step > settings.g_only_iters);
                if (step - 1).is_multiple_of(log_every) && step > 1 {
                    history.push((step - 1, before));
                    pb.set_message(format!("loss {before:.6e}"));
                }
                f64::NAN
            }
        };
        info.steps_done = step;
        let last = if logged.is_nan() {
            history.last().map(|h| h.1)
        } else {
            Some(logged)
        };
        if let Some(l) = last.filter(|l| !l.is_finite()) {
            bail!(
                "the fit diverged (loss {l}) by step {step}; lower --lr (now {})",
                settings.lr
            );
        }
        if matches!(state, State::Diag(_)) && (step.is_multiple_of(log_every) || step == total) {
            history.push((step, logged));
            pb.set_message(format!("loss {logged:.6e}"));
        }
        pb.set_position(step as u64);
        let stopping = run.stop_after.is_some_and(|s| step - first_step >= s);
        if step < total
            && (stopping || (run.checkpoint_every > 0 && step.is_multiple_of(run.checkpoint_every)))
        {
            write_result(&ckpt, &x, &state, &info, &history, &[], r, false)?;
            if stopping {
                pb.finish_and_clear();
                return Ok(FitReport {
                    seconds_per_step: start.elapsed().as_secs_f64() / (step - first_step) as f64,
                    info,
                    loss_history: history,
                    output: None,
                });
            }
        }
    }
    let steps_run = (info.steps_done - first_step).max(1) as f64;
    let seconds_per_step = start.elapsed().as_secs_f64() / steps_run;
    let cpu_per_step = (crate::cpu_seconds() - cpu_start) / steps_run;
    pb.finish_and_clear();
    if let State::Lrm(st) = &state {
        let final_loss = lrm.loss(&st.w, &lrm.products(&st.gt));
        if history.last().map(|h| h.0) != Some(total) {
            history.push((total, final_loss));
        }
    }
    info.final_loss = history.last().map(|h| h.1);
    info.seconds_per_step = seconds_per_step;
    info.cpu_seconds_per_step = cpu_per_step;
    info.peak_rss_bytes = crate::peak_rss_bytes();
    write_result(out, &x, &state, &info, &history, &prepared.kept, r, true)?;
    if ckpt.exists() {
        std::fs::remove_file(&ckpt).with_context(|| format!("removing {}", ckpt.display()))?;
    }
    Ok(FitReport {
        info,
        loss_history: history,
        seconds_per_step,
        output: Some(out.to_path_buf()),
    })
}

/// Write a checkpoint (raw state) or the final output (post-processed, with kept columns).
#[allow(clippy::too_many_arguments)]
fn write_result(
    path: &Path,
    x: &Partitioned,
    state: &State,
    info: &DecompositionInfo,
    history: &[(usize, f64)],
    kept: &[u64],
    r: usize,
    post_process: bool,
) -> Result<()> {
    let (mut w, mut dict, dict_name) = match state {
        State::Diag(st) => (st.w.clone(), x.gather_transposed(&st.ht, r), "H"),
        State::Lrm(st) => (st.w.clone(), x.gather_transposed(&st.gt, r), "G"),
    };
    let mut tensors = vec![];
    if post_process {
        let power = if info.kind == PefKind::Diagonal { 1 } else { 2 };
        normalise_rows(&mut dict, &mut w, r, power);
    }
    let n = w.len() / r;
    tensors.push(("W".to_string(), OwnedTensor::f32(vec![n, r], &w)));
    tensors.push((
        dict_name.to_string(),
        OwnedTensor::f32(vec![r, x.ncols], &dict),
    ));
    if post_process {
        let kept_i64: Vec<i64> = kept.iter().map(|&k| k as i64).collect();
        tensors.push((
            "kept_columns".into(),
            OwnedTensor::i64(vec![kept.len()], &kept_i64),
        ));
        if info.kind == PefKind::Diagonal {
            let (offsets, cols, vals) = sparse_rows(&dict, r, info.settings.h_threshold);
            tensors.push((
                "H_sparse_row_offsets".into(),
                OwnedTensor::i64(vec![r + 1], &offsets),
            ));
            tensors.push((
                "H_sparse_columns".into(),
                OwnedTensor::i64(vec![cols.len()], &cols),
            ));
            tensors.push((
                "H_sparse_values".into(),
                OwnedTensor::f32(vec![vals.len()], &vals),
            ));
        }
    }
    tensors.push(("loss_history".into(), history_tensor(history)));
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(info)?)]);
    st::write(path, &tensors, meta)
}

/// A fitted decomposition: what `coeffs` keeps fixed and the analyses read.
pub struct Decomposition {
    pub info: DecompositionInfo,
    /// The dictionary (H or G), r × n_kept row-major.
    pub dict: Vec<f32>,
    /// The flat parameter index of each dictionary column (ascending).
    pub kept: Vec<u64>,
    /// Coefficients of the fitted examples, examples × r row-major.
    pub w: Vec<f32>,
    /// (iteration, loss) as logged by the fit.
    pub loss_history: Vec<(usize, f64)>,
}

impl Decomposition {
    pub fn load(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let info = info_of(&file)?;
        let r = info.settings.components;
        let name = match info.kind {
            PefKind::Diagonal => "H",
            PefKind::LowRank => "G",
        };
        let dict = read_matrix(&file, name, r, info.n_kept)?;
        let st = file.tensors()?;
        let view = st
            .tensor("kept_columns")
            .map_err(|_| anyhow!("{}: missing tensor `kept_columns`", path.display()))?;
        let kept = st::to_indices(&view)
            .with_context(|| format!("{}: tensor `kept_columns`", path.display()))?;
        ensure!(
            kept.len() == info.n_kept
                && kept.windows(2).all(|w| w[0] < w[1])
                && kept.last().is_none_or(|&k| k < info.n_parameters),
            "{}: `kept_columns` must hold {} strictly ascending indices below {}",
            path.display(),
            info.n_kept,
            info.n_parameters
        );
        let (shape, w) = file.read_f32("W")?;
        ensure!(
            shape.len() == 2 && shape[1] == r,
            "{}: tensor `W` has shape {shape:?}, expected [examples, {r}]",
            path.display()
        );
        let loss_history = read_history(&file)?;
        Ok(Self {
            info,
            dict,
            kept,
            w,
            loss_history,
        })
    }

    /// Components r.
    pub fn components(&self) -> usize {
        self.info.settings.components
    }

    /// Save a decomposition given directly (e.g. a planted ground truth).
    pub fn save(&self, path: &Path) -> Result<()> {
        let w = &self.w;
        let r = self.info.settings.components;
        let name = if self.info.kind == PefKind::Diagonal {
            "H"
        } else {
            "G"
        };
        let kept_i64: Vec<i64> = self.kept.iter().map(|&k| k as i64).collect();
        let tensors = vec![
            ("W".to_string(), OwnedTensor::f32(vec![w.len() / r, r], w)),
            (
                name.to_string(),
                OwnedTensor::f32(vec![r, self.kept.len()], &self.dict),
            ),
            (
                "kept_columns".to_string(),
                OwnedTensor::i64(vec![self.kept.len()], &kept_i64),
            ),
            (
                "loss_history".to_string(),
                history_tensor(&self.loss_history),
            ),
        ];
        let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&self.info)?)]);
        st::write(path, &tensors, meta)
    }

    /// Refuse PEFs of another kind, parameter table or class count than the fit's.
    pub fn check_against(&self, meta: &PefMeta, pefs: &Path, path: &Path) -> Result<()> {
        if meta.kind != self.info.kind {
            bail!(
                "{} is a {} decomposition but {} holds {} PEFs",
                path.display(),
                self.info.kind,
                pefs.display(),
                meta.kind
            );
        }
        ensure!(
            meta.n_parameters == self.info.n_parameters
                && meta.parameter_fingerprint() == self.info.parameter_fingerprint,
            "{} was fitted on a different parameter table ({} parameters) than {} ({} parameters)",
            path.display(),
            self.info.n_parameters,
            pefs.display(),
            meta.n_parameters
        );
        ensure!(
            meta.rows_per_example() == self.info.classes,
            "{} was fitted with {} class columns per example but {} has {}",
            path.display(),
            self.info.classes,
            pefs.display(),
            meta.rows_per_example()
        );
        Ok(())
    }
}

impl PefRows {
    /// Examples `first..first+count` of these rows.
    pub fn examples(&self, first: usize, count: usize) -> PefRows {
        let c = self.rows_per_example;
        let (a, b) = (self.row_ptr[first * c], self.row_ptr[(first + count) * c]);
        PefRows {
            n_examples: count,
            rows_per_example: c,
            row_ptr: self.row_ptr[first * c..=(first + count) * c]
                .iter()
                .map(|p| p - a)
                .collect(),
            indices: self.indices[a..b].to_vec(),
            values: self.values[a..b].to_vec(),
            norms: self.norms[first..first + count].to_vec(),
            extras: self.extras[first..first + count].to_vec(),
        }
    }
}

/// Fit coefficients W of the examples in `pefs` against the fixed dictionary of
/// `decomposition`, streaming `chunk` examples at a time; writes `W` to `out`.
pub fn coeffs(
    pefs: &Path,
    decomposition: &Path,
    iters: usize,
    seed: u64,
    chunk: usize,
    out: &Path,
) -> Result<Vec<f32>> {
    let dec = Decomposition::load(decomposition)?;
    let dir = PefDir::open(pefs)?;
    dec.check_against(&dir.meta, pefs, decomposition)?;
    let r = dec.info.settings.components;
    let m = dec.kept.len();
    let mut dict_t = vec![0f32; m * r];
    for j in 0..r {
        for c in 0..m {
            dict_t[c * r + j] = dec.dict[j * m + c];
        }
    }
    let low_rank = dec.info.kind == PefKind::LowRank;
    let pb = fisherkit_common::progress::bar(dir.meta.n_examples as u64, "examples");
    let mut w = Vec::with_capacity(dir.meta.n_examples * r);
    let mut done = 0;
    for s in 0..dir.n_shards() {
        let rows = dir.read_shard(s, done)?;
        let mut first = 0;
        while first < rows.n_examples {
            let count = chunk.max(1).min(rows.n_examples - first);
            let part = project(dec.info.kind, &rows.examples(first, count), &dec.kept);
            let x: &Csr = &part.x;
            w.extend(fit_coefficients(
                x,
                low_rank.then_some(dec.info.classes),
                &dict_t,
                r,
                iters,
                seed,
                done + first,
            ));
            first += count;
            pb.inc(count as u64);
        }
        done += rows.n_examples;
    }
    pb.finish_and_clear();
    let n = done;
    let meta = HashMap::from([(
        META_KEY.to_string(),
        serde_json::json!({
            "decomposition": decomposition.display().to_string(),
            "pefs": pefs.display().to_string(),
            "kind": dec.info.kind,
            "iters": iters,
            "seed": seed,
        })
        .to_string(),
    )]);
    st::write(
        out,
        &[("W".to_string(), OwnedTensor::f32(vec![n, r], &w))],
        meta,
    )?;
    Ok(w)
}
