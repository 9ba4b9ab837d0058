//! `fisherkit bench npeff`: D-NPEFF against scikit-learn's multiplicative-update NMF on
//! the same planted PEF directory, and LRM-NPEFF seconds per joint iteration, peak memory
//! and achieved SpMM throughput against the isolated SpMM kernel's measured rate.
//!
//! Fits run as child processes (`fisherkit npeff fit`) so each one's peak memory is its own.

use crate::fit::Decomposition;
use crate::pef::{PefDir, PefKind};
use crate::prep::{prepare, Partitioned};
use crate::synth::{synth, SynthSpec};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Benchmark configuration.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub dir: PathBuf,
    pub d_iters: usize,
    pub lrm_iters: usize,
    /// The scikit-learn peer script, or None to skip it.
    pub peer: Option<PathBuf>,
    pub threads: Option<usize>,
}

/// Shapes of the benchmark sets.
fn diagonal_spec() -> SynthSpec {
    SynthSpec {
        kind: PefKind::Diagonal,
        examples: 4096,
        parameters: 262_144,
        components: 64,
        top_k: 4096,
        classes: 1,
        support: None,
        max_active: 3,
        seed: 0,
        first_example: 0,
        examples_per_shard: 1024,
    }
}

fn low_rank_spec() -> SynthSpec {
    SynthSpec {
        kind: PefKind::LowRank,
        examples: 2048,
        top_k: 8192,
        classes: 3,
        ..diagonal_spec()
    }
}

fn ensure_set(spec: &SynthSpec, dir: &Path) -> Result<()> {
    if PefDir::open(dir).is_ok() {
        eprintln!("reusing planted PEFs in {}", dir.display());
        return Ok(());
    }
    let t = Instant::now();
    synth(spec, dir, true)?;
    eprintln!(
        "planted {} PEFs in {} ({:.1} s)",
        spec.kind,
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Run `fisherkit npeff fit` as a child and read back its decomposition's metadata.
fn child_fit(
    pefs: &Path,
    out: &Path,
    extra: &[String],
    threads: Option<usize>,
) -> Result<Decomposition> {
    let exe = std::env::current_exe().context("locating the fisherkit binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["npeff", "fit", "--pefs"])
        .arg(pefs)
        .arg("--out")
        .arg(out)
        .args(["--components", "64", "--checkpoint-every", "0"])
        .args(extra);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let status = cmd.status().context("running the NPEFF fit")?;
    ensure!(
        status.success(),
        "the NPEFF fit on {} failed",
        pefs.display()
    );
    Decomposition::load(out)
}

/// Rate of the isolated SpMM kernels (X·B and Xᵀ·B over all partitions) in GFLOP/s,
/// best of `reps`, counting 2·nnz·r flops per product.
fn spmm_rate(x: &Partitioned, r: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let bt: Vec<Vec<f32>> = x
        .parts
        .iter()
        .map(|p| (0..p.ncols * r).map(|i| (i % 7) as f32 * 0.1).collect())
        .collect();
    let w: Vec<f32> = (0..x.nrows * r).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let _: Vec<Vec<f32>> = x
            .parts
            .par_iter()
            .zip(&bt)
            .map(|(p, b)| {
                let mut out = vec![0f32; x.nrows * r];
                p.by_row.mul_dense(b, r, &mut out);
                out
            })
            .collect();
        let _: Vec<Vec<f32>> = x
            .parts
            .par_iter()
            .map(|p| {
                let mut out = vec![0f32; p.ncols * r];
                p.by_col.mul_dense(&w, r, &mut out);
                out
            })
            .collect();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * 2.0 * x.nnz() as f64 * r as f64 / best / 1e9
}

fn measure_spmm(pefs: &Path, threads: Option<usize>) -> Result<(usize, f64)> {
    let dir = PefDir::open(pefs)?;
    let prepared = prepare(dir.meta.kind, &dir.read_all()?, 1)?;
    let x = Partitioned::new(&prepared.x, 8192);
    let rate = crate::with_threads(threads, || spmm_rate(&x, 64, 5))?;
    Ok((x.nnz(), rate))
}

/// Run the peer script; returns its JSON output and the CPU seconds of the whole peer
/// process (loading included), read from the wrapping shell's children times.
fn peer(script: &Path, pefs: &Path, iters: usize) -> Result<(serde_json::Value, f64)> {
    let out = Command::new("sh")
        .args([
            "-c",
            "python3 \"$@\"; s=$?; cat /proc/$$/stat >&2; exit $s",
            "sh",
        ])
        .arg(script)
        .arg(pefs)
        .args(["--components", "64", "--iters", &iters.to_string()])
        .output()
        .with_context(|| format!("running python3 {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} failed: {stderr}",
        script.display()
    );
    let cpu = stderr
        .lines()
        .last()
        .and_then(crate::parse_cpu_ticks)
        .map_or(f64::NAN, |t| t as f64 / 100.0);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let json = serde_json::from_str(line)
        .with_context(|| format!("parsing the peer's output {line:?}"))?;
    Ok((json, cpu))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn run(cfg: &BenchConfig) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "machine: {cpu}, {} threads available, threads used: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cfg.threads.map_or("all".to_string(), |t| t.to_string())
    );
    println!("load average at start: {}", load_average());
    let diag_dir = cfg.dir.join("diagonal");
    ensure_set(&diagonal_spec(), &diag_dir)?;
    let iters = cfg.d_iters.to_string();
    let d = child_fit(
        &diag_dir,
        &cfg.dir.join("diagonal-fit.safetensors"),
        &["--iters".into(), iters.clone()],
        cfg.threads,
    )?;
    let ours = d.info.seconds_per_step;
    println!(
        "D-NPEFF  {} × {} kept, nnz {}, r 64, {} iterations: {:.3} s/iter wall, {:.3} CPU-s/iter, final ‖A−WH‖_F {:.5}, peak RSS {:.0} MiB",
        d.info.n_examples,
        d.info.n_kept,
        d.info.nnz,
        cfg.d_iters,
        ours,
        d.info.cpu_seconds_per_step,
        d.info.final_loss.unwrap_or(f64::NAN),
        d.info.peak_rss_bytes as f64 / 1048576.0
    );
    if let Some(script) = &cfg.peer {
        let (p, cpu) = peer(script, &diag_dir, cfg.d_iters)?;
        let theirs = p["seconds_per_iter"].as_f64().unwrap_or(f64::NAN);
        let loss = p["loss_frobenius"].as_f64().unwrap_or(f64::NAN);
        let cpu_per_iter = cpu / cfg.d_iters as f64;
        println!(
            "peer     {}: shape {}, nnz {}, {theirs:.3} s/iter wall, final loss {loss:.5}; \
             whole process (incl. loading) {cpu:.1} CPU-s = ≤ {cpu_per_iter:.3} CPU-s/iter",
            p["peer"], p["shape"], p["nnz"],
        );
        println!(
            "speed-up vs peer per iteration: {:.2}× wall; CPU time: ≤ {:.2}×",
            theirs / ours,
            cpu_per_iter / d.info.cpu_seconds_per_step
        );
    }
    let (d_nnz, d_rate) = measure_spmm(&diag_dir, cfg.threads)?;
    println!("SpMM kernel on the D set (nnz {d_nnz}, r 64, X·B + Xᵀ·B): {d_rate:.2} GFLOP/s");
    let lrm_dir = cfg.dir.join("low-rank");
    ensure_set(&low_rank_spec(), &lrm_dir)?;
    let l = child_fit(
        &lrm_dir,
        &cfg.dir.join("low-rank-fit.safetensors"),
        &[
            "--iters".into(),
            cfg.lrm_iters.to_string(),
            "--g-only-iters".into(),
            "0".into(),
        ],
        cfg.threads,
    )?;
    let (l_nnz, l_rate) = measure_spmm(&lrm_dir, cfg.threads)?;
    let flops = 2.0 * l_nnz as f64 * 64.0 * 2.0;
    let achieved = flops / l.info.seconds_per_step / 1e9;
    println!(
        "LRM-NPEFF {} examples × 3 classes × {} kept, nnz {}, r 64, {} joint iterations: {:.3} s/iter wall, {:.3} CPU-s/iter, peak RSS {:.0} MiB",
        l.info.n_examples,
        l.info.n_kept,
        l.info.nnz,
        cfg.lrm_iters,
        l.info.seconds_per_step,
        l.info.cpu_seconds_per_step,
        l.info.peak_rss_bytes as f64 / 1048576.0
    );
    println!(
        "roofline: 2·nnz·r·2 = {:.2} GFLOP/step → {achieved:.2} GFLOP/s achieved; isolated SpMM rate {l_rate:.2} GFLOP/s → {:.0} % of it",
        flops / 1e9,
        100.0 * achieved / l_rate
    );
    println!("load average at end: {}", load_average());
    Ok(())
}
