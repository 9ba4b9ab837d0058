//! `fisherkit bench c4`: throughput of `clean_page` alone, of the other per-page steps,
//! and of the whole pipeline on the real WET files and on a larger generated corpus,
//! for each requested worker count. Prints a Markdown table for BENCHMARKS.md.

use crate::badwords::Badwords;
use crate::clean::{clean_page, CleanConfig};
use crate::counters::{Counter, Counters};
use crate::pipeline::{run as run_pipeline, Options, RunConfig};
use crate::wet::{self, Item, Record};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

pub struct BenchConfig {
    pub inputs: Vec<PathBuf>,
    pub badwords: Badwords,
    /// Size of the generated corpus (MB of WET text).
    pub generated_mb: u64,
    pub workers: Vec<usize>,
}

/// All conversion records of `paths`.
pub fn read_records(paths: &[PathBuf]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for p in paths {
        let reader = wet::open(p, Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)))?;
        for item in reader {
            if let Item::Record(r) = item {
                if r.warc_type == "conversion" {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// Time `f` over all `texts` repeatedly for at least `min_secs`; (pages/s, MB/s, seconds).
fn time_per_page(texts: &[String], min_secs: f64, mut f: impl FnMut(&str)) -> (f64, f64, f64) {
    let bytes: usize = texts.iter().map(String::len).sum();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed().as_secs_f64() < min_secs {
        texts.iter().for_each(|t| f(t));
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    (
        (texts.len() * rounds) as f64 / secs,
        (bytes * rounds) as f64 / 1e6 / secs,
        secs,
    )
}

/// A larger corpus made from the real pages: every copy gets its own URL and a copy tag
/// in front of every line, so URL and line de-duplication do not collapse it.
fn generate(records: &[Record], dir: &Path, target_mb: u64) -> Result<Vec<PathBuf>> {
    let per_copy: usize = records.iter().map(|r| r.body.len()).sum();
    let copies = ((target_mb as usize) << 20)
        .div_ceil(per_copy.max(1))
        .max(1);
    let files = copies.clamp(1, 16);
    let mut paths = Vec::new();
    for f in 0..files {
        let path = dir.join(format!("gen-{f:05}.warc.wet.gz"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for copy in (f..copies).step_by(files) {
            let batch: Vec<Record> = records
                .iter()
                .map(|r| {
                    let text = String::from_utf8_lossy(&r.body);
                    let body: Vec<String> = text
                        .split('\n')
                        .map(|l| {
                            if l.trim().is_empty() {
                                l.to_string()
                            } else {
                                format!("c{copy} {l}")
                            }
                        })
                        .collect();
                    Record {
                        warc_type: r.warc_type.clone(),
                        url: r.url.as_ref().map(|u| format!("{u}#copy{copy}")),
                        date: r.date.clone(),
                        body: body.join("\n").into_bytes(),
                    }
                })
                .collect();
            wet::write_wet(&mut out, &batch)?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// CPU seconds (user + system) this process has used so far, from /proc (Linux); the
/// machine may be shared, so per-core rates are reported per CPU-second as well.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn whole(
    label: &str,
    inputs: &[PathBuf],
    badwords: &Badwords,
    workers: usize,
    scratch: &Path,
) -> Result<()> {
    let out = scratch.join(format!("out-{label}-{workers}"));
    let cfg = RunConfig {
        inputs: inputs.to_vec(),
        out: out.clone(),
        options: Options::default(),
        badwords: Some(Badwords::new(badwords.words())?),
        workers,
        memory_mb: 1024,
        force: true,
        max_files: None,
    };
    let cpu_before = cpu_seconds();
    let s = run_pipeline(&cfg)?;
    let cpu = (cpu_seconds() - cpu_before).max(0.01);
    std::fs::remove_dir_all(&out).ok();
    let pages = s.counters.get(Counter::PagesIn) as f64;
    let mb = s.counters.get(Counter::BytesIn) as f64 / 1e6;
    println!(
        "| whole pipeline, {label} | {workers} | {pages} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} |",
        s.pages_per_second,
        s.mb_per_second,
        s.pages_per_second / workers as f64,
        s.mb_per_second / workers as f64,
        pages / cpu,
        mb / cpu,
    );
    Ok(())
}

pub fn run(cfg: &BenchConfig) -> Result<()> {
    let records = read_records(&cfg.inputs)?;
    anyhow::ensure!(
        !records.is_empty(),
        "no conversion records in the bench inputs"
    );
    let texts: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    let mb: f64 = texts.iter().map(String::len).sum::<usize>() as f64 / 1e6;
    println!(
        "{} real pages, {mb:.1} MB of WET text; {} cores available",
        texts.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| what | workers | pages | pages/s (wall) | MB/s (wall) | pages/s per worker | MB/s per worker | pages per CPU-s | MB per CPU-s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut sink = Counters::default();
    let cleaned: Vec<String> = texts
        .iter()
        .filter_map(|t| clean_page(t, &CleanConfig::TFDS, &mut sink))
        .collect();
    type Step<'a> = (&'a str, &'a [String], Box<dyn Fn(&str) + 'a>);
    let steps: [Step; 3] = [
        (
            "clean_page alone",
            &texts,
            Box::new(|t| {
                std::hint::black_box(clean_page(t, &CleanConfig::TFDS, &mut Counters::default()));
            }),
        ),
        (
            "bad words (on cleaned pages)",
            &cleaned,
            Box::new(|t| {
                std::hint::black_box(cfg.badwords.matches(t));
            }),
        ),
        (
            "language ID (on cleaned pages)",
            &cleaned,
            Box::new(|t| {
                std::hint::black_box(crate::lang::english_probability(t));
            }),
        ),
    ];
    for (label, inputs, f) in steps {
        let cpu_before = cpu_seconds();
        let (pps, mbps, secs) = time_per_page(inputs, 2.0, f);
        let cpu_share = ((cpu_seconds() - cpu_before) / secs).clamp(0.01, 1.0);
        println!(
            "| {label} | 1 | {} | {pps:.0} | {mbps:.1} | {pps:.0} | {mbps:.1} | {:.0} | {:.1} |",
            inputs.len(),
            pps / cpu_share,
            mbps / cpu_share
        );
    }
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    for &w in &cfg.workers {
        whole("real files", &cfg.inputs, &cfg.badwords, w, scratch.path())?;
    }
    let generated = generate(&records, scratch.path(), cfg.generated_mb)?;
    let gz: u64 = generated
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "generated {} files, {:.0} MB gzip",
        generated.len(),
        gz as f64 / 1e6
    );
    for &w in &cfg.workers {
        whole("generated", &generated, &cfg.badwords, w, scratch.path())?;
    }
    Ok(())
}
