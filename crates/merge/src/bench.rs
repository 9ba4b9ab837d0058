//! `fisherkit bench merge`: synthetic bf16 checkpoints in the HF Llama layout of a
//! 1.1B-parameter model (TinyLlama shapes), merged with linear, fisher (f32 Fishers) and
//! TIES; seconds and peak RSS per merge, optionally side by side with peers (mergekit,
//! a numpy streaming average) run on the same files.

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::checkpoint::{dtype_width, encode_f32};
use crate::engine::{merge_to_dir, OutputOptions, Plan, PlanOptions};
use crate::fisher_file::{FisherMeta, FisherMode};
use crate::methods::splitmix;
use crate::recipe::Recipe;
use crate::writer::{StreamWriter, TensorSpec};

/// Bench settings (the CLI maps its flags onto these).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the temporary checkpoints go (needs ~2.2 GB per model, 4.4 GB per Fisher).
    pub dir: PathBuf,
    /// Model counts to merge (each ≥ 2).
    pub counts: Vec<usize>,
    /// Methods among linear, fisher, ties.
    pub methods: Vec<String>,
    /// Decoder layers (22 gives 1.1B parameters).
    pub layers: usize,
    /// `mergekit-yaml` executable to run side by side (skipped if None).
    pub mergekit: Option<PathBuf>,
    /// Python with numpy, to run the numpy streaming average peer (skipped if None).
    pub python: Option<PathBuf>,
    /// Keep the generated files (for running other peers by hand).
    pub keep: bool,
    /// Drop the page cache and re-read the inputs before every run (see
    /// [`settle_page_cache`]).
    pub drop_caches: bool,
}

/// One timed run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub tool: String,
    pub method: String,
    pub models: usize,
    pub seconds: f64,
    /// User + system CPU seconds: comparable across runs on a shared, loaded machine.
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// 1-minute load average when the run started (the machine has 2 cores).
    pub load: f64,
}

/// TinyLlama-1.1B tensor names and shapes, in the order HF writes them.
pub fn llama_specs(layers: usize) -> Vec<(String, Vec<usize>)> {
    let (hidden, inter, kv, vocab) = (2048, 5632, 256, 32000);
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]),
            (format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![hidden]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, hidden]),
            (format!("{p}.self_attn.o_proj.weight"), vec![hidden, hidden]),
            (format!("{p}.self_attn.q_proj.weight"), vec![hidden, hidden]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, hidden]),
        ]);
    }
    specs.push(("model.norm.weight".into(), vec![hidden]));
    specs.push(("lm_head.weight".into(), vec![vocab, hidden]));
    specs
}

fn llama_config(layers: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16"
    })
}

/// Uniform in [-1, 1) from a counter.
fn unit(x: u64) -> f32 {
    (splitmix(x) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Write one synthetic tensor file. `value(tensor_index, element)` gives each value.
fn write_synthetic(
    path: &Path,
    specs: &[(String, Vec<usize>)],
    dtype: Dtype,
    metadata: &HashMap<String, String>,
    value: impl Fn(u64, u64) -> f32 + Sync,
) -> Result<()> {
    let tensor_specs = specs
        .iter()
        .map(|(n, s)| TensorSpec {
            name: n.clone(),
            dtype,
            shape: s.clone(),
        })
        .collect();
    let mut w = StreamWriter::create(path, tensor_specs, metadata, false)?;
    let width = dtype_width(dtype);
    let mut bytes = Vec::new();
    for (ti, (name, shape)) in specs.iter().enumerate() {
        let n: usize = shape.iter().product();
        bytes.resize(n * width, 0);
        bytes
            .par_chunks_mut(1 << 20)
            .enumerate()
            .for_each(|(c, out)| {
                let first = (c << 20) / width;
                let vals: Vec<f32> = (0..out.len() / width)
                    .map(|j| value(ti as u64, (first + j) as u64))
                    .collect();
                encode_f32(dtype, &vals, out);
            });
        w.write_tensor(name, &bytes)?;
    }
    w.finish()
}

/// Synthetic model k: a shared "pretrained" value plus a model-specific fine-tuning
/// delta (norm weights near 1), like real fine-tunes of one base.
fn generate_model(dir: &Path, k: usize, layers: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let specs = llama_specs(layers);
    let norms: Vec<bool> = specs.iter().map(|(n, _)| n.contains("norm")).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_synthetic(
        &dir.join("model.safetensors"),
        &specs,
        Dtype::BF16,
        &meta,
        |t, j| {
            let key = (t << 40) ^ j;
            let shared = if norms[t as usize] {
                1.0
            } else {
                0.02 * unit(key)
            };
            shared + 0.002 * unit(key ^ ((k as u64 + 1) << 58))
        },
    )?;
    fisherkit_common::atomic::write_json(&dir.join("config.json"), &llama_config(layers))
}

fn generate_fisher(path: &Path, k: usize, layers: usize) -> Result<()> {
    let meta = FisherMeta {
        examples: 4096,
        mode: FisherMode::Sampled,
        data_hash: "synthetic".into(),
        seed: k as u64,
        model: Some(format!("synthetic-{k}")),
        extra: BTreeMap::new(),
    };
    // Through the validated writer's metadata, streamed (4.4 GB does not fit a Vec here).
    let header = crate::fisher_file::header_for(&meta)?;
    write_synthetic(path, &llama_specs(layers), Dtype::F32, &header, |t, j| {
        let u = unit((t << 40) ^ j ^ ((k as u64 + 7) << 56));
        1e-4 * u * u
    })
}

/// User + system CPU seconds of this process so far (Linux /proc, 100 Hz ticks).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Reset this process's peak-RSS counter (Linux: writing 5 to clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process since the last reset, in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The same starting point for every tool: dirty pages written back, the page cache
/// emptied (so the output's pages come from free memory, not from reclaiming other
/// files' pages mid-run), then the inputs read back in (so no run waits on the disk).
fn settle_page_cache(inputs: &[PathBuf]) -> Result<()> {
    let synced = Command::new("sync").status().context("running sync")?;
    ensure!(synced.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "1")
        .context("--drop-caches: writing /proc/sys/vm/drop_caches (Linux, needs root)")?;
    for path in inputs {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut file, &mut std::io::sink())
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(())
}

fn recipe_for(method: &str, models: &[PathBuf], fishers: &[PathBuf]) -> Result<String> {
    let n = models.len();
    let mut text = format!("merge_method: {method}\n");
    if method == "ties" {
        text += &format!("base_model: {}\n", models[0].display());
    }
    text += "dtype: bfloat16\nmodels:\n";
    for (i, m) in models.iter().enumerate() {
        text += &format!("  - model: {}\n    parameters:\n", m.display());
        text += &format!("      weight: {}\n", 1.0 / n as f64);
        if method == "ties" {
            text += "      density: 0.5\n";
        }
        if method == "fisher" {
            text += &format!("      fisher: {}\n", fishers[i].display());
        }
    }
    Ok(text)
}

/// Run a peer under /usr/bin/time, returning (wall s, CPU s, peak RSS MB).
fn run_peer(mut cmd: Command) -> Result<(f64, f64, f64)> {
    let out = cmd.output().context("starting the peer")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "peer failed: {}",
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    let last = stderr.lines().last().unwrap_or_default();
    let mut parts = last.split_whitespace();
    let mut field = |what: &str| -> Result<f64> {
        parts
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("peer {what} in {last:?}"))
    };
    let (secs, user, sys, kb) = (field("wall")?, field("user")?, field("sys")?, field("RSS")?);
    Ok((secs, user + sys, kb / 1024.0))
}

fn timed(program: &Path) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f").arg("%e %U %S %M").arg(program);
    c
}

/// Time a peer and record it (a failing peer is reported, not fatal).
fn peer_row(rows: &mut Vec<BenchRow>, tool: &str, method: &str, models: usize, cmd: Command) {
    let load = load_average();
    match run_peer(cmd) {
        Ok((seconds, cpu_seconds, peak_rss_mb)) => {
            let row = BenchRow {
                tool: tool.into(),
                method: method.into(),
                models,
                seconds,
                cpu_seconds,
                peak_rss_mb,
                load,
            };
            eprintln!("{row:?}");
            rows.push(row);
        }
        Err(e) => eprintln!("{tool} {method} ×{models}: {e:#}"),
    }
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    let max_models = opts.counts.iter().copied().max().unwrap_or(2);
    if opts.counts.iter().any(|&c| c < 2) {
        bail!("model counts must be at least 2");
    }
    std::fs::create_dir_all(&opts.dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("fisherkit-bench-merge.")
        .tempdir_in(&opts.dir)
        .with_context(|| format!("creating a temporary directory in {}", opts.dir.display()))?;
    let root = tmp.path().to_path_buf();
    let params: usize = llama_specs(opts.layers)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    eprintln!(
        "generating {max_models} bf16 checkpoints of {:.3}B parameters in {}",
        params as f64 / 1e9,
        root.display()
    );
    let models: Vec<PathBuf> = (0..max_models)
        .map(|k| root.join(format!("model_{k}")))
        .collect();
    let fishers: Vec<PathBuf> = (0..max_models)
        .map(|k| root.join(format!("fisher_{k}.safetensors")))
        .collect();
    let t = Instant::now();
    for (k, m) in models.iter().enumerate() {
        generate_model(m, k, opts.layers)?;
        if opts.methods.iter().any(|x| x == "fisher") {
            generate_fisher(&fishers[k], k, opts.layers)?;
        }
    }
    eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
    let mut rows = Vec::new();
    for &n in &opts.counts {
        for method in &opts.methods {
            let text = recipe_for(method, &models[..n], &fishers[..n])?;
            let recipe_path = root.join(format!("{method}_{n}.yml"));
            std::fs::write(&recipe_path, &text)?;
            let out = root.join(format!("out_{method}_{n}"));
            let mut inputs: Vec<PathBuf> = models[..n]
                .iter()
                .map(|m| m.join("model.safetensors"))
                .collect();
            if method == "fisher" {
                inputs.extend_from_slice(&fishers[..n]);
            }
            let settle = || -> Result<()> {
                if opts.drop_caches {
                    settle_page_cache(&inputs)?;
                }
                Ok(())
            };
            settle()?;
            reset_peak_rss();
            let load = load_average();
            let (start, cpu0) = (Instant::now(), cpu_seconds());
            let plan = Plan::new(
                Recipe::from_yaml(&text, &recipe_path)?,
                &PlanOptions::default(),
            )?;
            merge_to_dir(
                &plan,
                &OutputOptions {
                    out: out.clone(),
                    force: false,
                    max_shard_bytes: 5_000_000_000,
                    recipe_text: Some(text.clone()),
                    fsync: false,
                },
            )?;
            let row = BenchRow {
                tool: "fisherkit".into(),
                method: method.clone(),
                models: n,
                seconds: start.elapsed().as_secs_f64(),
                cpu_seconds: cpu_seconds() - cpu0,
                peak_rss_mb: peak_rss_mb(),
                load,
            };
            eprintln!("{row:?}");
            rows.push(row);
            std::fs::remove_dir_all(&out).ok();
            if let Some(mk) = opts.mergekit.as_ref().filter(|_| method != "fisher") {
                settle()?;
                let mut c = timed(mk);
                c.arg(&recipe_path).arg(&out);
                peer_row(&mut rows, "mergekit", method, n, c);
                std::fs::remove_dir_all(&out).ok();
            }
            if let (Some(py), "linear") = (&opts.python, method.as_str()) {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/numpy_weighted_average.py");
                settle()?;
                let mut c = timed(py);
                c.arg(script).arg(&out);
                for m in &models[..n] {
                    c.arg(m.join("model.safetensors"));
                }
                peer_row(&mut rows, "numpy streaming average", method, n, c);
                std::fs::remove_dir_all(&out).ok();
            }
        }
    }
    println!("| tool | method | models | wall s | CPU s | peak RSS (MB) | load |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.1} |",
            r.tool, r.method, r.models, r.seconds, r.cpu_seconds, r.peak_rss_mb, r.load
        );
    }
    if opts.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    Ok(())
}
