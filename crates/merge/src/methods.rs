//! Merge methods behind one small trait. A method sees one tensor at a time: an
//! optional whole-tensor pass (`begin_tensor`: TIES thresholds, DARE rescaling, SLERP
//! angle, Fisher norms) and then element chunks merged in parallel (`merge_chunk`).
//! Semantics follow mergekit (`generalized_task_arithmetic.py`, `sparsify.py`,
//! `slerp.py`, `linear.py`) and, for `fisher`, Matena & Raffel's reference code.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorRef};
use crate::recipe::TensorParams;

/// Elements per parallel work item: small enough to stay in cache, big enough to
/// amortise scheduling.
pub const CHUNK: usize = 1 << 16;

/// One input tensor: where it is and how to read it.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub checkpoint: &'a Checkpoint,
    pub tensor: &'a TensorRef,
}

impl Input<'_> {
    pub fn read(&self, offset: usize, out: &mut [f32]) {
        self.checkpoint.read_f32_range(self.tensor, offset, out);
    }
}

/// Decode `len` elements from `offset` of each input into the matching buffer.
pub fn load_chunk(which: &[Input<'_>], offset: usize, len: usize, bufs: &mut Vec<Vec<f32>>) {
    bufs.resize(which.len(), Vec::new());
    for (buf, input) in bufs.iter_mut().zip(which) {
        buf.resize(len, 0.0);
        input.read(offset, buf);
    }
}

/// Everything a method needs to merge one tensor.
pub struct TensorJob<'a> {
    pub name: &'a str,
    pub numel: usize,
    /// One input per model, in recipe order (the base model last if not listed).
    pub inputs: Vec<Input<'a>>,
    /// Fishers aligned with `inputs` (empty when the method takes none or, for `fisher`,
    /// when no Fisher covers this tensor).
    pub fishers: Vec<Input<'a>>,
    /// Index into `inputs` of the base / target model.
    pub base: usize,
    /// Per-input weights (the base's entry is unused by task-vector methods).
    pub weights: Vec<f64>,
    pub params: TensorParams<'a>,
    /// Index into `recipe.models` of each input (None for a base not listed there).
    pub recipe_index: Vec<Option<usize>>,
    /// Global L2 norm of each input's Fisher when `normalize_fishers` is on (else 1).
    pub fisher_norms: Vec<f64>,
    /// Seed mixed with the tensor name (random drops differ between tensors but not runs).
    pub seed: u64,
}

impl TensorJob<'_> {
    /// A per-model numeric parameter of input `i` (the default for an unlisted base).
    pub fn model_param(&self, i: usize, key: &str, default: f64) -> Result<f64> {
        match self.recipe_index[i] {
            Some(m) => self.params.model_f64(m, key, Some(default)),
            None => Ok(default),
        }
    }

    fn chunks(&self) -> usize {
        self.numel.div_ceil(CHUNK)
    }

    fn chunk_range(&self, c: usize) -> (usize, usize) {
        let start = c * CHUNK;
        (start, (start + CHUNK).min(self.numel))
    }

    /// Map every chunk of the listed inputs (decoded to f32), in parallel. Results come
    /// back in chunk order, so a caller's floating-point sums are reproducible.
    pub fn map_chunks<T, F>(&self, which: &[Input<'_>], map: F) -> Vec<T>
    where
        T: Send,
        F: Fn(usize, &[Vec<f32>]) -> T + Sync,
    {
        (0..self.chunks())
            .into_par_iter()
            .map_init(
                || vec![Vec::new(); which.len()],
                |bufs, c| {
                    let (start, end) = self.chunk_range(c);
                    load_chunk(which, start, end - start, bufs);
                    map(c, bufs)
                },
            )
            .collect()
    }
}

/// Per-tensor state of a method, merging chunks.
pub trait ChunkMerger: Sync {
    /// Merge chunk `chunk` (elements `chunk·CHUNK…`). `inputs[i]` and `fishers[i]` hold
    /// the same elements of input i (fishers empty when the job has none); `scratch` is
    /// per-thread working memory reused across chunks and tensors.
    fn merge_chunk(
        &self,
        chunk: usize,
        inputs: &[Vec<f32>],
        fishers: &[Vec<f32>],
        scratch: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    );
}

pub trait MergeMethod: Sync {
    fn name(&self) -> &'static str;
    /// Whether the method reads Fisher files.
    fn uses_fishers(&self) -> bool {
        false
    }
    /// Whether the method needs a base model (task vectors, SLERP).
    fn needs_base(&self) -> bool {
        false
    }
    /// Check the per-tensor weights before anything is written.
    fn check_weights(&self, job_weights: &[f64], base: usize) -> Result<()>;
    /// Prepare one tensor (whole-tensor passes happen here).
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>>;
}

/// The method called `name` (a mergekit name, or `fisher`).
pub fn method(name: &str) -> Result<Box<dyn MergeMethod>> {
    Ok(match name {
        "linear" => Box::new(Linear),
        "fisher" => Box::new(Fisher),
        "task_arithmetic" | "ties" | "dare_linear" | "dare_ties" => {
            Box::new(TaskVectors::named(name))
        }
        "slerp" => Box::new(Slerp),
        "passthrough" => Box::new(Passthrough),
        other => bail!("unknown merge method {other:?}"),
    })
}

/// Convex weights (linear, fisher): each ≥ 0, not all zero.
fn check_convex(weights: &[f64]) -> Result<()> {
    if let Some(w) = weights.iter().find(|w| **w < 0.0) {
        bail!("weight {w} is negative; this method averages with non-negative weights");
    }
    ensure!(
        weights.iter().any(|w| *w > 0.0),
        "all weights are zero; at least one must be positive"
    );
    Ok(())
}

// ---------------------------------------------------------------- linear

/// mergekit `linear`: Σ wᵢθᵢ, divided by Σ wᵢ when `normalize` (default true).
struct Linear;

struct LinearChunks {
    weights: Vec<f32>,
}

impl ChunkMerger for LinearChunks {
    fn merge_chunk(
        &self,
        _: usize,
        inputs: &[Vec<f32>],
        _: &[Vec<f32>],
        _: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    ) {
        weighted_sum(&self.weights, inputs, out);
    }
}

fn weighted_sum(weights: &[f32], inputs: &[Vec<f32>], out: &mut [f32]) {
    out.fill(0.0);
    for (w, x) in weights.iter().zip(inputs) {
        if *w != 0.0 {
            for (o, v) in out.iter_mut().zip(x) {
                *o += w * v;
            }
        }
    }
}

/// Normalised linear weights (also the Fisher merge's isotropic fallback).
fn linear_weights(job: &TensorJob<'_>, normalize: bool) -> Vec<f32> {
    let total: f64 = job.weights.iter().sum();
    let scale = if normalize { 1.0 / total } else { 1.0 };
    job.weights.iter().map(|w| (w * scale) as f32).collect()
}

impl MergeMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn check_weights(&self, weights: &[f64], _: usize) -> Result<()> {
        check_convex(weights)
    }
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>> {
        let normalize = job.params.global_bool("normalize", true)?;
        Ok(Box::new(LinearChunks {
            weights: linear_weights(job, normalize),
        }))
    }
}

// ---------------------------------------------------------------- fisher

/// Fisher-weighted averaging: θ* = Σ λᵢFᵢθᵢ / Σ λᵢFᵢ, per element. The target's Fisher
/// (input `base`) is floored at `fisher_floor` (all Fishers with `floor_all`), after
/// the optional division by each Fisher's global L2 norm (`normalize_fishers`).
/// Where the denominator still vanishes the target's value is kept.
struct Fisher;

struct FisherChunks {
    /// λᵢ / ‖Fᵢ‖ (or λᵢ without normalisation)
    scales: Vec<f32>,
    /// Floor applied to each input's (normalised) Fisher; 0 = none.
    floors: Vec<f32>,
    target: usize,
}

/// Make `scratch` hold exactly `count` buffers of `len` values, reusing their
/// allocations from chunk to chunk; their contents are whatever the last chunk left.
fn sized_buffers(scratch: &mut Vec<Vec<f32>>, count: usize, len: usize) {
    scratch.resize(count, Vec::new());
    for buf in scratch.iter_mut() {
        buf.resize(len, 0.0);
    }
}

/// [`sized_buffers`], all set to zero.
fn zeroed_buffers(scratch: &mut Vec<Vec<f32>>, count: usize, len: usize) {
    sized_buffers(scratch, count, len);
    for buf in scratch.iter_mut() {
        buf.fill(0.0);
    }
}

impl ChunkMerger for FisherChunks {
    fn merge_chunk(
        &self,
        _: usize,
        inputs: &[Vec<f32>],
        fishers: &[Vec<f32>],
        scratch: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    ) {
        let n = out.len();
        zeroed_buffers(scratch, 2, n);
        let [num, den] = &mut scratch[..] else {
            unreachable!("two buffers")
        };
        // One input at a time: simple loops the compiler vectorises.
        for ((x, f), (scale, floor)) in inputs
            .iter()
            .zip(fishers)
            .zip(self.scales.iter().zip(&self.floors))
        {
            for (((nu, de), x), f) in num.iter_mut().zip(den.iter_mut()).zip(x).zip(f) {
                let wf = scale * f.max(*floor);
                *nu += wf * x;
                *de += wf;
            }
        }
        let target = &inputs[self.target];
        for (((o, nu), de), t) in out.iter_mut().zip(num.iter()).zip(den.iter()).zip(target) {
            *o = if *de > 0.0 { nu / de } else { *t };
        }
    }
}

impl MergeMethod for Fisher {
    fn name(&self) -> &'static str {
        "fisher"
    }
    fn uses_fishers(&self) -> bool {
        true
    }
    fn check_weights(&self, weights: &[f64], _: usize) -> Result<()> {
        check_convex(weights)
    }
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>> {
        if job.fishers.is_empty() {
            // Isotropic fallback (reported by the engine).
            return Ok(Box::new(LinearChunks {
                weights: linear_weights(job, true),
            }));
        }
        let floor = job.params.global_f64("fisher_floor", Some(1e-6))?;
        ensure!(floor >= 0.0, "fisher_floor must be ≥ 0, got {floor}");
        let floor_all = job.params.global_bool("floor_all", false)?;
        let norms = &job.fisher_norms;
        let scales = job
            .weights
            .iter()
            .zip(norms.iter())
            .map(|(w, n)| if *n > 0.0 { (w / n) as f32 } else { *w as f32 })
            .collect();
        let floors = (0..job.inputs.len())
            .map(|i| {
                if floor_all || i == job.base {
                    floor as f32
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Box::new(FisherChunks {
            scales,
            floors,
            target: job.base,
        }))
    }
}

// ---------------------------------------------------------------- task vectors

#[derive(Clone, Copy, PartialEq)]
enum Sparsify {
    None,
    /// Keep the `density` fraction of largest |δ| (exactly k = ⌊density·n⌋ elements,
    /// ties broken by position).
    Magnitude,
    /// Keep each element with probability `density` (DARE).
    Random,
}

/// mergekit's generalized task arithmetic: task vectors δᵢ = θᵢ − θ_base, optionally
/// sparsified, weighted, optionally sign-elected (TIES), summed, optionally divided by
/// the (masked) weight sum, scaled by `lambda` and added to the base.
struct TaskVectors {
    name: &'static str,
    sparsify: Sparsify,
    consensus: bool,
    default_normalize: bool,
    default_rescale: bool,
    /// |δ| bit patterns of the tensor being sparsified, reused across tensors (a fresh
    /// multi-hundred-MB allocation per tensor costs more in page faults than the sort).
    magnitudes: std::sync::Mutex<Vec<u32>>,
}

impl TaskVectors {
    /// The mergekit method `name` (see mergekit's merge_methods/registry.py).
    fn named(name: &str) -> Self {
        let (name, sparsify, consensus, default_normalize, default_rescale) = match name {
            "task_arithmetic" => ("task_arithmetic", Sparsify::None, false, false, false),
            "ties" => ("ties", Sparsify::Magnitude, true, true, false),
            "dare_linear" => ("dare_linear", Sparsify::Random, false, false, true),
            "dare_ties" => ("dare_ties", Sparsify::Random, true, false, true),
            other => unreachable!("not a task-vector method: {other}"),
        };
        Self {
            name,
            sparsify,
            consensus,
            default_normalize,
            default_rescale,
            magnitudes: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// How one task vector is sparsified within a tensor.
#[derive(Clone)]
enum Keep {
    All,
    /// |δ| > threshold kept; |δ| == threshold kept while its rank among equals (in
    /// element order) is below `equal_quota`; `equal_before[c]` = equals in chunks < c
    /// (one entry per chunk plus the total).
    Top {
        threshold: f32,
        equal_quota: usize,
        equal_before: Vec<usize>,
    },
    Random {
        density: f64,
        stream: u64,
    },
    Nothing,
}

struct TaskVectorChunks {
    /// Per input: weight × rescale factor (0 for the base).
    weights: Vec<f32>,
    /// Per input: the raw weight, for the TIES divisor.
    divisor_weights: Vec<f32>,
    keeps: Vec<Keep>,
    base: usize,
    consensus: bool,
    normalize: bool,
    lambda: f32,
}

impl TaskVectorChunks {
    /// Sparsified task vector of input i over one chunk, written into `delta`.
    fn delta(&self, i: usize, chunk: usize, inputs: &[Vec<f32>], delta: &mut [f32]) {
        let base = &inputs[self.base];
        for ((d, x), b) in delta.iter_mut().zip(&inputs[i]).zip(base) {
            *d = x - b;
        }
        apply_keep(&self.keeps[i], chunk, delta);
    }
}

fn apply_keep(keep: &Keep, chunk: usize, delta: &mut [f32]) {
    match keep {
        Keep::All => {}
        Keep::Nothing => delta.fill(0.0),
        Keep::Top {
            threshold,
            equal_quota,
            equal_before,
        } => {
            let first_rank = equal_before[chunk];
            let last_rank = equal_before[chunk + 1];
            if last_rank <= *equal_quota || first_rank >= *equal_quota {
                // Every element equal to the threshold here is kept (or every one dropped).
                let keep_equal = last_rank <= *equal_quota;
                for d in delta.iter_mut() {
                    let a = d.abs();
                    // `|`/`&` rather than `||`/`&&`: no branches, so the loop vectorises.
                    let keep = (a > *threshold) | (keep_equal & (a == *threshold));
                    *d = if keep { *d } else { 0.0 };
                }
            } else {
                let mut rank = first_rank;
                for d in delta.iter_mut() {
                    let a = d.abs();
                    if a < *threshold {
                        *d = 0.0;
                    } else if a == *threshold {
                        if rank >= *equal_quota {
                            *d = 0.0;
                        }
                        rank += 1;
                    }
                }
            }
        }
        Keep::Random { density, stream } => {
            let cut = (density * 2f64.powi(64)).min(u64::MAX as f64) as u64;
            let first = (chunk * CHUNK) as u64;
            for (j, d) in delta.iter_mut().enumerate() {
                if splitmix(stream ^ splitmix(first + j as u64)) >= cut {
                    *d = 0.0;
                }
            }
        }
    }
}

impl ChunkMerger for TaskVectorChunks {
    fn merge_chunk(
        &self,
        chunk: usize,
        inputs: &[Vec<f32>],
        _: &[Vec<f32>],
        scratch: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    ) {
        let n = out.len();
        let base = &inputs[self.base][..n];
        let others: Vec<usize> = (0..inputs.len()).filter(|&i| i != self.base).collect();
        // The delta buffers are overwritten whole; only the three sums start at zero.
        sized_buffers(scratch, others.len() + 3, n);
        let (delta_bufs, sums) = scratch.split_at_mut(others.len());
        for sum in sums.iter_mut() {
            sum.fill(0.0);
        }
        let [mixed, agreed, divisor] = sums else {
            unreachable!("three sum buffers")
        };
        let (mixed, agreed, divisor) = (&mut mixed[..n], &mut agreed[..n], &mut divisor[..n]);
        // Weighted, sparsified task vectors, with the divisor weight of each. The loops
        // index slices of one known length and select instead of branching, so they
        // vectorise.
        let mut deltas: Vec<(&[f32], f32)> = Vec::with_capacity(others.len());
        for (&i, d) in others.iter().zip(delta_bufs.iter_mut()) {
            self.delta(i, chunk, inputs, d);
            let w = self.weights[i];
            let d = &mut d[..n];
            for j in 0..n {
                d[j] *= w;
                mixed[j] += d[j];
            }
            deltas.push((d, self.divisor_weights[i]));
        }
        if self.consensus {
            // mixed holds Σ wδ: its sign (≥ 0 → +) is the elected sign; sign 0 never agrees.
            for &(d, dw) in &deltas {
                for j in 0..n {
                    let agree = (d[j] > 0.0) & (mixed[j] >= 0.0) | (d[j] < 0.0) & (mixed[j] < 0.0);
                    agreed[j] += if agree { d[j] } else { 0.0 };
                    divisor[j] += if agree { dw } else { 0.0 };
                }
            }
            for j in 0..n {
                let v = if self.normalize && divisor[j] != 0.0 {
                    agreed[j] / divisor[j]
                } else {
                    agreed[j]
                };
                out[j] = base[j] + self.lambda * v;
            }
        } else {
            let total: f32 = deltas.iter().map(|(_, dw)| dw).sum();
            let scale = if self.normalize && total.abs() >= 1e-8 {
                self.lambda / total
            } else {
                self.lambda
            };
            for j in 0..n {
                out[j] = base[j] + scale * mixed[j];
            }
        }
    }
}

impl MergeMethod for TaskVectors {
    fn name(&self) -> &'static str {
        self.name
    }
    fn needs_base(&self) -> bool {
        true
    }
    fn check_weights(&self, weights: &[f64], base: usize) -> Result<()> {
        ensure!(
            weights
                .iter()
                .enumerate()
                .any(|(i, w)| i != base && *w != 0.0),
            "all task-vector weights are zero; the merge would return the base model"
        );
        Ok(())
    }
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>> {
        let p = &job.params;
        let normalize = p.global_bool("normalize", self.default_normalize)?;
        let rescale = p.global_bool("rescale", self.default_rescale)?;
        let lambda = p.global_f64("lambda", Some(1.0))? as f32;
        // `int8_mask` only saves memory in mergekit's torch code; it is accepted and
        // has no effect here (masks are never materialised).
        p.global_bool("int8_mask", false)?;
        let mut keeps = Vec::with_capacity(job.inputs.len());
        let mut weights = Vec::with_capacity(job.inputs.len());
        for i in 0..job.inputs.len() {
            if i == job.base {
                keeps.push(Keep::All);
                weights.push(0.0);
                continue;
            }
            let density = job.model_param(i, "density", 1.0)?;
            let keep = match self.sparsify {
                Sparsify::None => Keep::All,
                _ if density >= 1.0 => Keep::All,
                Sparsify::Magnitude => {
                    let mut bits = self.magnitudes.lock().unwrap_or_else(|e| e.into_inner());
                    top_k_keep(job, i, density, &mut bits)
                }
                Sparsify::Random => Keep::Random {
                    density,
                    stream: splitmix(job.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                },
            };
            // mergekit ≥ 0.1 rescales a sparsified task vector to keep its L1 norm.
            let factor = if rescale && !matches!(keep, Keep::All | Keep::Nothing) {
                l1_rescale(job, i, &keep)
            } else {
                1.0
            };
            weights.push(job.weights[i] as f32 * factor);
            keeps.push(keep);
        }
        Ok(Box::new(TaskVectorChunks {
            weights,
            divisor_weights: job.weights.iter().map(|w| *w as f32).collect(),
            keeps,
            base: job.base,
            consensus: self.consensus,
            normalize,
            lambda,
        }))
    }
}

/// ‖δ‖₁ / ‖kept δ‖₁ (1 when either is below mergekit's eps 1e-7).
fn l1_rescale(job: &TensorJob<'_>, i: usize, keep: &Keep) -> f32 {
    let pair = [job.inputs[i], job.inputs[job.base]];
    let sums = job.map_chunks(&pair, |c, bufs| {
        let mut delta: Vec<f32> = bufs[0].iter().zip(&bufs[1]).map(|(x, b)| x - b).collect();
        let before: f64 = delta.iter().map(|d| d.abs() as f64).sum();
        apply_keep(keep, c, &mut delta);
        let after: f64 = delta.iter().map(|d| d.abs() as f64).sum();
        (before, after)
    });
    let (before, after) = sums
        .into_iter()
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if before < 1e-7 || after < 1e-7 {
        1.0
    } else {
        (before / after) as f32
    }
}

/// Exact top-k selection of |δ|: the magnitudes' f32 bit patterns (non-negative floats
/// order like their bits) are computed once, a two-level radix histogram finds the k-th
/// largest, and per-chunk counts of elements equal to it let exactly k survive.
fn top_k_keep(job: &TensorJob<'_>, i: usize, density: f64, bits: &mut Vec<u32>) -> Keep {
    let k = (density * job.numel as f64) as usize;
    if k == 0 {
        return Keep::Nothing;
    }
    let pair = [job.inputs[i], job.inputs[job.base]];
    // Every element is overwritten, so a reused buffer is only grown, never cleared.
    if bits.len() < job.numel {
        bits.resize(job.numel, 0);
    }
    let bits = &mut bits[..job.numel];
    // |δ| bits and the level-1 histogram (top 16 of the 31 magnitude bits) in one pass;
    // level 2 below counts the low 15 bits inside the bucket holding the k-th largest.
    let hist_hi = sum_histograms(
        bits.par_chunks_mut(CHUNK)
            .enumerate()
            .with_min_len(histogram_min_len(job.numel))
            .fold(
                || (vec![Vec::new(); 2], vec![0u32; 1 << 16]),
                |(mut bufs, mut hist), (c, out)| {
                    load_chunk(&pair, c * CHUNK, out.len(), &mut bufs);
                    for ((o, x), b) in out.iter_mut().zip(&bufs[0]).zip(&bufs[1]) {
                        *o = (x - b).abs().to_bits();
                        hist[(*o >> 15) as usize] += 1;
                    }
                    (bufs, hist)
                },
            )
            .map(|(_, hist)| hist),
        1 << 16,
    );
    let (hi, above_hi) = find_bucket(&hist_hi, k);
    let bits = &*bits;
    let hist_lo = histogram(bits, 1 << 15, |b| {
        ((b >> 15) as usize == hi).then_some((b & 0x7FFF) as usize)
    });
    let (lo, above_lo) = find_bucket(&hist_lo, k - above_hi);
    let threshold = ((hi as u32) << 15) | lo as u32;
    let equal_counts: Vec<usize> = bits
        .par_chunks(CHUNK)
        .map(|c| c.iter().filter(|&&b| b == threshold).count())
        .collect();
    let mut equal_before = Vec::with_capacity(equal_counts.len() + 1);
    let mut acc = 0;
    equal_before.push(0);
    for c in equal_counts {
        acc += c;
        equal_before.push(acc);
    }
    Keep::Top {
        threshold: f32::from_bits(threshold),
        equal_quota: k - above_hi - above_lo,
        equal_before,
    }
}

/// Counts of `bucket(value)` over `bits`, one table per worker, summed.
fn histogram(bits: &[u32], bins: usize, bucket: impl Fn(u32) -> Option<usize> + Sync) -> Vec<u64> {
    sum_histograms(
        bits.par_chunks(CHUNK)
            .with_min_len(histogram_min_len(bits.len()))
            .fold(
                || vec![0u32; bins],
                |mut h, chunk| {
                    for &b in chunk {
                        if let Some(i) = bucket(b) {
                            h[i] += 1;
                        }
                    }
                    h
                },
            ),
        bins,
    )
}

/// Chunks per histogram table: a few tables per thread, not one per chunk (each table
/// is hundreds of KB to allocate, clear and add up).
fn histogram_min_len(numel: usize) -> usize {
    (numel.div_ceil(CHUNK) / (4 * rayon::current_num_threads())).max(1)
}

fn sum_histograms(tables: impl ParallelIterator<Item = Vec<u32>>, bins: usize) -> Vec<u64> {
    tables
        .map(|h| h.into_iter().map(u64::from).collect::<Vec<u64>>())
        .reduce(
            || vec![0u64; bins],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The bucket holding the k-th largest element (k ≥ 1) and the count above it.
fn find_bucket(hist: &[u64], k: usize) -> (usize, usize) {
    let mut above = 0usize;
    for b in (0..hist.len()).rev() {
        let here = hist[b] as usize;
        if above + here >= k {
            return (b, above);
        }
        above += here;
    }
    (0, above)
}

/// SplitMix64: a counter-based generator, so DARE's drops depend only on (seed, model,
/// tensor, element) and not on thread scheduling.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------- slerp

/// mergekit `slerp` between the base (t = 0) and the other model (t = 1), treating each
/// tensor as one vector; nearly colinear tensors (|cos| > 0.9995) are lerped.
struct Slerp;

struct SlerpChunks {
    s0: f32,
    s1: f32,
    base: usize,
    other: usize,
}

impl ChunkMerger for SlerpChunks {
    fn merge_chunk(
        &self,
        _: usize,
        inputs: &[Vec<f32>],
        _: &[Vec<f32>],
        _: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    ) {
        let (v0, v1) = (&inputs[self.base], &inputs[self.other]);
        for ((o, a), b) in out.iter_mut().zip(v0).zip(v1) {
            *o = self.s0 * a + self.s1 * b;
        }
    }
}

/// Interpolation coefficients (s0, s1) of mergekit's slerp for vectors with the given
/// dot product and squared norms.
pub fn slerp_coefficients(t: f64, dot: f64, norm0_sq: f64, norm1_sq: f64) -> (f64, f64) {
    const DOT_THRESHOLD: f64 = 0.9995;
    const EPS: f64 = 1e-8;
    let n0 = norm0_sq.sqrt();
    let n1 = norm1_sq.sqrt();
    let n0 = if n0 > EPS { n0 } else { 1.0 };
    let n1 = if n1 > EPS { n1 } else { 1.0 };
    let cos = dot / (n0 * n1);
    if cos.abs() > DOT_THRESHOLD {
        return (1.0 - t, t);
    }
    let theta0 = cos.acos();
    let sin0 = theta0.sin();
    let theta_t = theta0 * t;
    ((theta0 - theta_t).sin() / sin0, theta_t.sin() / sin0)
}

impl MergeMethod for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn needs_base(&self) -> bool {
        true
    }
    fn check_weights(&self, weights: &[f64], _: usize) -> Result<()> {
        ensure!(
            weights.len() == 2,
            "slerp merges exactly two models (the base and one other), got {}",
            weights.len()
        );
        Ok(())
    }
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>> {
        let t = job.params.global_f64("t", None)?;
        let other = 1 - job.base;
        let pair = [job.inputs[job.base], job.inputs[other]];
        let parts = job.map_chunks(&pair, |_, bufs| {
            let mut acc = [0f64; 3];
            for (a, b) in bufs[0].iter().zip(&bufs[1]) {
                let (a, b) = (*a as f64, *b as f64);
                acc[0] += a * b;
                acc[1] += a * a;
                acc[2] += b * b;
            }
            acc
        });
        let acc = parts
            .into_iter()
            .fold([0f64; 3], |s, p| [s[0] + p[0], s[1] + p[1], s[2] + p[2]]);
        let (s0, s1) = slerp_coefficients(t, acc[0], acc[1], acc[2]);
        Ok(Box::new(SlerpChunks {
            s0: s0 as f32,
            s1: s1 as f32,
            base: job.base,
            other,
        }))
    }
}

// ---------------------------------------------------------------- passthrough

/// mergekit `passthrough`: one model's tensors, times its optional `scale`.
struct Passthrough;

impl MergeMethod for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn check_weights(&self, weights: &[f64], _: usize) -> Result<()> {
        ensure!(
            weights.len() == 1,
            "passthrough takes exactly one model, got {}",
            weights.len()
        );
        Ok(())
    }
    fn begin_tensor<'j>(&'j self, job: &'j TensorJob<'j>) -> Result<Box<dyn ChunkMerger + 'j>> {
        let scale = job.model_param(0, "scale", 1.0)? as f32;
        Ok(Box::new(LinearChunks {
            weights: vec![scale],
        }))
    }
}
