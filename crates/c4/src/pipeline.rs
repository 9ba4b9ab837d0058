//! The whole run: map (parse + clean each WET file) → reduce by normalised URL (newest
//! page wins) → shuffle dedup keys → reduce by key (choose the page that keeps each
//! line) → join back per page partition (dedup, language, split, write shards).
//!
//! Every stage works on a fixed number of partitions chosen from the input size and
//! the memory budget (never from the worker count), and every reduce sorts by key, so
//! the output is byte-identical for any `--workers` and any input order.

use crate::badwords::Badwords;
use crate::clean::{clean_page, is_too_long, normalize_url, CleanConfig};
use crate::counters::{Counter, Counters, PAGE_DROPS};
use crate::shuffle::{partition_of, read_partition, Dec, Enc, MemoryGate, SpillBuffer};
use crate::text::{count_sentences, lower_into, sentence_spans};
use crate::wet::{self, Item};
use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* $variant,)* }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($s,)*];
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $s,)* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$variant),)*
                    _ => bail!("unknown {} {s:?} (expected one of {})", stringify!($name), Self::NAMES.join(", ")),
                }
            }
        }
    };
}

string_enum! {
    /// What corpus-wide de-duplication removes.
    DedupMode {
        /// Repeated lines (the released code; default).
        Line = "line",
        /// Repeated three-sentence spans (the paper's description).
        Span3 = "span3",
        /// Nothing.
        None = "none",
    }
}

string_enum! {
    /// Compression of the output shards.
    Compression {
        Gzip = "gzip",
        Zstd = "zstd",
        None = "none",
    }
}

impl Compression {
    fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "jsonl.gz",
            Compression::Zstd => "jsonl.zst",
            Compression::None => "jsonl",
        }
    }
}

/// Everything that shapes the output; saved in the resume manifest and stats.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub clean: CleanConfig,
    pub dedup: DedupMode,
    /// Keep pages whose English probability is at least this; `None` disables the filter.
    pub lang_threshold: Option<f64>,
    pub compression: Compression,
    /// Shuffle partitions = output shards; `None` picks from input size and memory.
    pub partitions: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clean: CleanConfig::TFDS,
            dedup: DedupMode::Line,
            lang_threshold: Some(0.99),
            compression: Compression::Gzip,
            partitions: None,
        }
    }
}

/// One run of the pipeline.
pub struct RunConfig {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub options: Options,
    pub badwords: Option<Badwords>,
    pub workers: usize,
    /// Memory budget for buffered map output and partitions being reduced.
    pub memory_mb: u64,
    /// Replace a finished or unfinished run in `out` instead of refusing.
    pub force: bool,
    /// Read at most this many not-yet-processed input files in this invocation, then
    /// stop; a later run with the same arguments resumes (for preemptible machines).
    pub max_files: Option<usize>,
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// False when `max_files` stopped the run early; rerun to continue.
    pub complete: bool,
    pub counters: Counters,
    pub partitions: usize,
    pub input_files: usize,
    pub resumed_files: usize,
    pub seconds: f64,
    pub pages_per_second: f64,
    pub mb_per_second: f64,
}

impl Summary {
    fn new(
        counters: Counters,
        complete: bool,
        partitions: usize,
        input_files: usize,
        resumed_files: usize,
        seconds: f64,
    ) -> Summary {
        Summary {
            complete,
            pages_per_second: counters.get(Counter::PagesIn) as f64 / seconds,
            mb_per_second: counters.get(Counter::BytesIn) as f64 / 1e6 / seconds,
            counters,
            partitions,
            input_files,
            resumed_files,
            seconds,
        }
    }
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Manifest {
    format: u32,
    options: Options,
    partitions: usize,
    badwords_md5: Option<String>,
    inputs: Vec<(String, u64)>,
}

const WORK_DIR: &str = ".c4-work";

fn md5_u128(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(bytes).into())
}

/// Expand paths and globs into a sorted, de-duplicated list of files.
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pat in patterns {
        if pat.contains(['*', '?', '[']) {
            let before = out.len();
            for entry in glob::glob(pat).with_context(|| format!("bad glob {pat:?}"))? {
                out.push(entry.with_context(|| format!("expanding {pat:?}"))?);
            }
            if out.len() == before {
                bail!("no input file matches {pat:?}");
            }
        } else {
            let path = PathBuf::from(pat);
            if !path.is_file() {
                bail!("input file {} does not exist", path.display());
            }
            out.push(path);
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        bail!("no input files given");
    }
    Ok(out)
}

/// Run the pipeline; see the module docs.
pub fn run(cfg: &RunConfig) -> Result<Summary> {
    let started = Instant::now();
    let mut inputs = cfg.inputs.clone();
    inputs.sort();
    inputs.dedup();
    let mut sizes = Vec::with_capacity(inputs.len());
    for p in &inputs {
        sizes.push(
            fs::metadata(p)
                .with_context(|| format!("reading input {}", p.display()))?
                .len(),
        );
    }
    let total_gz: u64 = sizes.iter().sum();
    let memory = cfg.memory_mb.max(16) << 20;
    let partitions = cfg
        .options
        .partitions
        .unwrap_or_else(|| (3 * total_gz).div_ceil(memory).clamp(16, 8192) as usize)
        .max(1);
    let manifest = Manifest {
        format: 1,
        options: cfg.options.clone(),
        partitions,
        badwords_md5: cfg
            .badwords
            .as_ref()
            .map(|b| format!("{:032x}", md5_u128(b.words().join("\n").as_bytes()))),
        inputs: inputs
            .iter()
            .zip(&sizes)
            .map(|(p, s)| (p.display().to_string(), *s))
            .collect(),
    };
    let work = prepare_out_dir(cfg, &manifest)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.workers.max(1))
        .build()
        .context("starting worker threads")?;
    let ctx = Ctx {
        cfg,
        partitions,
        work: work.clone(),
        gate: MemoryGate::new(memory / 2),
        chunk_bytes: (memory / (4 * cfg.workers.max(1) as u64)).max(8 << 20) as usize,
    };
    let (mut counters, resumed, complete) =
        pool.install(|| map_stage(&ctx, &inputs, &sizes, total_gz))?;
    let elapsed = started.elapsed().as_secs_f64();
    if !complete {
        return Ok(Summary::new(
            counters,
            false,
            partitions,
            inputs.len(),
            resumed,
            elapsed,
        ));
    }
    if complete && counters.get(Counter::PagesIn) == 0 {
        fs::remove_dir_all(&work).ok();
        bail!(
            "no page could be read from {} input file(s): {} not gzip, {} unreadable, {} truncated, {} malformed records",
            inputs.len(),
            counters.get(Counter::FilesNotGzip),
            counters.get(Counter::FilesUnreadable),
            counters.get(Counter::FilesTruncated),
            counters.get(Counter::RecordsMalformed)
        );
    }
    for stage in [STAGE_PAGES, STAGE_KEYS, STAGE_LOSERS] {
        let dir = work.join(stage);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let map_spills = list_files(&work.join(STAGE_MAP), "spill")?;
    counters.merge(&pool.install(|| {
        parallel_partitions(&ctx, "grouping by URL", |p| {
            url_reduce(&ctx, &map_spills, p)
        })
    })?);
    if cfg.options.dedup != DedupMode::None {
        let key_spills = list_files(&work.join(STAGE_KEYS), "spill")?;
        pool.install(|| {
            parallel_partitions(&ctx, "choosing duplicate keepers", |p| {
                key_reduce(&ctx, &key_spills, p)
            })
        })?;
    }
    let loser_spills = list_files(&work.join(STAGE_LOSERS), "spill")?;
    counters.merge(&pool.install(|| {
        parallel_partitions(&ctx, "dedup, language, writing", |p| {
            finalize(&ctx, &loser_spills, p)
        })
    })?);

    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary::new(counters, true, partitions, inputs.len(), resumed, seconds);
    write_stats(cfg, &manifest, &summary)?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(summary)
}

/// Check `out` and set up (or resume) its work directory.
fn prepare_out_dir(cfg: &RunConfig, manifest: &Manifest) -> Result<PathBuf> {
    let out = &cfg.out;
    let work = out.join(WORK_DIR);
    let manifest_path = work.join("manifest.json");
    // A finished run is recognised by its stats.json, not by the name alone.
    let finished = fs::read_to_string(out.join("stats.json"))
        .is_ok_and(|s| s.contains("\"pages_balance_ok\""));
    let is_empty = || {
        fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))
            .map(|mut d| d.next().is_none())
    };
    if out.exists() && !finished && !work.exists() && !is_empty()? {
        // Never delete a directory that is not ours, even with --force.
        bail!(
            "{} exists and is not a C4 output directory; choose an empty or new --out",
            out.display()
        );
    }
    if out.exists() && cfg.force {
        fs::remove_dir_all(out).with_context(|| format!("removing {} (--force)", out.display()))?;
    } else if finished {
        bail!(
            "{} already holds a finished run (stats.json); pass --force to rebuild it or choose another --out",
            out.display()
        );
    } else if work.exists() {
        let old: Manifest = fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| {
                format!(
                    "{} holds an unfinished run without a readable manifest; pass --force to start over",
                    out.display()
                )
            })?;
        if &old != manifest {
            bail!(
                "{} holds an unfinished run with different {}; rerun with the same inputs and options to resume, or pass --force to start over",
                out.display(),
                if old.inputs != manifest.inputs { "input files" } else { "options" }
            );
        }
        return Ok(work);
    }
    fs::create_dir_all(work.join(STAGE_MAP))
        .with_context(|| format!("creating {}", work.display()))?;
    fisherkit_common::atomic::write_json(&manifest_path, manifest)?;
    Ok(work)
}

fn write_stats(cfg: &RunConfig, manifest: &Manifest, summary: &Summary) -> Result<()> {
    let c = &summary.counters;
    let dropped: u64 = PAGE_DROPS.iter().map(|d| c.get(*d)).sum();
    let stats = serde_json::json!({
        "counters": c,
        "totals": {
            "input_files": summary.input_files,
            "resumed_files": summary.resumed_files,
            "pages_in": c.get(Counter::PagesIn),
            "pages_dropped": dropped,
            "pages_out": c.get(Counter::PagesOut),
            "pages_balance_ok": dropped + c.get(Counter::PagesOut) == c.get(Counter::PagesIn),
            "bytes_in": c.get(Counter::BytesIn),
            "bytes_out": c.get(Counter::BytesOut),
            "seconds": summary.seconds,
            "pages_per_second": summary.pages_per_second,
            "mb_per_second": summary.mb_per_second,
            "workers": cfg.workers,
        },
        "options": manifest.options,
        "partitions": manifest.partitions,
        "badwords_md5": manifest.badwords_md5,
        "inputs": manifest.inputs,
    });
    fisherkit_common::atomic::write_json(&cfg.out.join("stats.json"), &stats)
}

const STAGE_MAP: &str = "map";
const STAGE_PAGES: &str = "pages";
const STAGE_KEYS: &str = "keys";
const STAGE_LOSERS: &str = "losers";

struct Ctx<'a> {
    cfg: &'a RunConfig,
    partitions: usize,
    work: PathBuf,
    gate: MemoryGate,
    chunk_bytes: usize,
}

fn list_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn parallel_partitions(
    ctx: &Ctx,
    what: &str,
    f: impl Fn(usize) -> Result<Counters> + Sync,
) -> Result<Counters> {
    let pb = fisherkit_common::progress::bar(ctx.partitions as u64, "partitions");
    pb.set_message(what.to_string());
    let all = (0..ctx.partitions)
        .into_par_iter()
        .map(|p| {
            let c = f(p)?;
            pb.inc(1);
            Ok(c)
        })
        .collect::<Result<Vec<Counters>>>()?;
    pb.finish_and_clear();
    let mut total = Counters::default();
    all.iter().for_each(|c| total.merge(c));
    Ok(total)
}

// ---------------------------------------------------------------- map: read + clean

/// Sparse encoding of per-page counters (most are zero).
fn put_counters(e: &mut Enc, c: &Counters) {
    let nonzero: Vec<_> = Counter::ALL
        .iter()
        .enumerate()
        .filter(|(_, k)| c.get(**k) > 0)
        .collect();
    e.u8(nonzero.len() as u8);
    for (i, k) in nonzero {
        e.u8(i as u8).u32(c.get(*k) as u32);
    }
}

fn get_counters(d: &mut Dec) -> Result<Counters> {
    let mut c = Counters::default();
    for _ in 0..d.u8()? {
        let i = d.u8()? as usize;
        let k = *Counter::ALL.get(i).context("bad counter index in spill")?;
        c.add(k, d.u32()? as u64);
    }
    Ok(c)
}

fn done_marker(work: &Path, task: usize) -> PathBuf {
    work.join(STAGE_MAP).join(format!("task-{task:06}.done"))
}

/// Returns the counters of all processed files, how many were done before this
/// invocation, and whether every file is now done.
fn map_stage(
    ctx: &Ctx,
    inputs: &[PathBuf],
    sizes: &[u64],
    total_gz: u64,
) -> Result<(Counters, usize, bool)> {
    let mut counters = Counters::default();
    let mut todo = Vec::new();
    for (task, _) in inputs.iter().enumerate() {
        let marker = done_marker(&ctx.work, task);
        match fs::read(&marker) {
            Ok(bytes) => counters.merge(
                &serde_json::from_slice(&bytes)
                    .map_err(anyhow::Error::from)
                    .and_then(|v| Counters::from_json(&v))
                    .with_context(|| format!("reading {}", marker.display()))?,
            ),
            Err(_) => todo.push(task),
        }
    }
    let resumed = inputs.len() - todo.len();
    // Spill chunks of tasks that did not finish are incomplete: remove them.
    for p in list_files(&ctx.work.join(STAGE_MAP), "spill")? {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let task: Option<usize> = name.get(5..11).and_then(|s| s.parse().ok());
        if task.is_none_or(|t| todo.contains(&t)) {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    // This invocation's share, then largest files first to keep workers busy to the end.
    let complete = ctx.cfg.max_files.is_none_or(|n| n >= todo.len());
    todo.truncate(ctx.cfg.max_files.unwrap_or(usize::MAX));
    todo.sort_by_key(|&t| std::cmp::Reverse(sizes[t]));
    let remaining: u64 = todo.iter().map(|&t| sizes[t]).sum();
    let progress = Progress::new(total_gz, total_gz - remaining);
    let results = todo
        .par_iter()
        .map(|&task| {
            let c = map_file(ctx, task, &inputs[task], &progress)?;
            fisherkit_common::atomic::write_json(&done_marker(&ctx.work, task), &c)?;
            Ok(c)
        })
        .collect::<Result<Vec<Counters>>>()?;
    progress.pb.finish_and_clear();
    results.iter().for_each(|c| counters.merge(c));
    Ok((counters, resumed, complete))
}

/// Map-stage progress: compressed bytes as the bar, pages/s and MB/s of WET text.
struct Progress {
    pb: indicatif::ProgressBar,
    compressed: Arc<AtomicU64>,
    decompressed: Arc<AtomicU64>,
    pages: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(total: u64, done: u64) -> Self {
        let pb = fisherkit_common::progress::bar(total, "bytes (gz)");
        pb.set_position(done);
        Progress {
            pb,
            compressed: Arc::new(AtomicU64::new(done)),
            decompressed: Arc::new(AtomicU64::new(0)),
            pages: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn page(&self) {
        let n = self.pages.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(512) {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            self.pb
                .set_position(self.compressed.load(Ordering::Relaxed));
            self.pb.set_message(format!(
                "{n} pages, {:.0} pages/s, {:.1} MB/s",
                n as f64 / secs,
                self.decompressed.load(Ordering::Relaxed) as f64 / 1e6 / secs
            ));
        }
    }
}

fn map_file(ctx: &Ctx, task: usize, path: &Path, progress: &Progress) -> Result<Counters> {
    let mut c = Counters::default();
    c.inc(Counter::FilesIn);
    let compressed = Arc::new(AtomicU64::new(0));
    let decompressed = Arc::new(AtomicU64::new(0));
    let reader = match fs::File::open(path)
        .map_err(anyhow::Error::from)
        .and_then(|_| wet::open(path, compressed.clone(), decompressed.clone()))
    {
        Ok(r) => r,
        Err(e) => {
            let not_gzip = format!("{e:#}").contains("not gzip");
            c.inc(if not_gzip {
                Counter::FilesNotGzip
            } else {
                Counter::FilesUnreadable
            });
            eprintln!("warning: skipping {}: {e:#}", path.display());
            return Ok(c);
        }
    };
    let mut buffer = SpillBuffer::new(ctx.partitions);
    let mut chunk = 0;
    let mut flush = |buffer: &mut SpillBuffer| -> Result<()> {
        let p = ctx
            .work
            .join(STAGE_MAP)
            .join(format!("task-{task:06}-{chunk:05}.spill"));
        chunk += 1;
        buffer.flush_to(&p, true)
    };
    let (mut last_gz, mut last_raw) = (0, 0);
    for item in reader {
        let gz = compressed.load(Ordering::Relaxed);
        let raw = decompressed.load(Ordering::Relaxed);
        progress
            .compressed
            .fetch_add(gz - last_gz, Ordering::Relaxed);
        progress
            .decompressed
            .fetch_add(raw - last_raw, Ordering::Relaxed);
        (last_gz, last_raw) = (gz, raw);
        let record = match item {
            Item::Record(r) => r,
            Item::Malformed(why) => {
                c.inc(Counter::RecordsMalformed);
                eprintln!(
                    "warning: {}: skipping a malformed record: {why}",
                    path.display()
                );
                continue;
            }
            Item::Truncated(why) => {
                c.inc(Counter::RecordsTruncated);
                c.inc(Counter::FilesTruncated);
                eprintln!(
                    "warning: {}: {why}; keeping the records before it",
                    path.display()
                );
                continue;
            }
        };
        c.inc(Counter::RecordsIn);
        if record.warc_type != "conversion" {
            c.inc(Counter::RecordsNotConversion);
            continue;
        }
        let Some(url) = record.url.as_deref().filter(|u| !u.is_empty()) else {
            c.inc(Counter::RecordsMalformed);
            eprintln!(
                "warning: {}: a conversion record without WARC-Target-URI",
                path.display()
            );
            continue;
        };
        c.inc(Counter::PagesIn);
        progress.page();
        map_page(
            ctx,
            url,
            record.date.as_deref().unwrap_or(""),
            &record.body,
            &mut c,
            &mut buffer,
        );
        if buffer.bytes() >= ctx.chunk_bytes {
            flush(&mut buffer)?;
        }
    }
    c.add(Counter::BytesInCompressed, last_gz);
    c.add(Counter::BytesIn, last_raw);
    if buffer.bytes() > 0 {
        flush(&mut buffer)?;
    }
    Ok(c)
}

/// Parse-stage filters, then clean + bad words (pure per page, so done here in parallel;
/// their counters travel with the page and count only if it wins the URL reduce).
fn map_page(
    ctx: &Ctx,
    url: &str,
    date: &str,
    body: &[u8],
    c: &mut Counters,
    out: &mut SpillBuffer,
) {
    let text = match std::str::from_utf8(body) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => {
            let t = String::from_utf8_lossy(body);
            c.inc(Counter::PagesInvalidUtf8);
            c.add(
                Counter::Utf8Replacements,
                t.matches('\u{fffd}').count() as u64,
            );
            t
        }
    };
    if crate::text::py_strip(&text).is_empty() {
        c.inc(Counter::PagesNoContent);
        return;
    }
    if is_too_long(&text) {
        c.inc(Counter::PagesTooLong);
        return;
    }
    let key = md5_u128(normalize_url(url).as_bytes());
    let tiebreak = xxhash_rust::xxh3::xxh3_64(body);
    let mut page = Counters::default();
    let mut cleaned = clean_page(&text, &ctx.cfg.options.clean, &mut page);
    if let (Some(t), Some(bw)) = (&cleaned, &ctx.cfg.badwords) {
        if bw.matches(t) {
            page.inc(Counter::PagesBadwords);
            cleaned = None;
        }
    }
    out.push(partition_of(key, ctx.partitions), |e| {
        e.u128(key).str(date).u64(tiebreak).str(url);
        put_counters(e, &page);
        match &cleaned {
            Some(t) => e.u8(1).str(t),
            None => e.u8(0),
        };
    });
}

// ------------------------------------------------- reduce by URL, emit dedup keys

struct MappedPage<'a> {
    key: u128,
    date: &'a str,
    tiebreak: u64,
    url: &'a str,
    counters: Counters,
    text: Option<&'a str>,
}

fn decode_mapped<'a>(d: &mut Dec<'a>) -> Result<MappedPage<'a>> {
    Ok(MappedPage {
        key: d.u128()?,
        date: d.str()?,
        tiebreak: d.u64()?,
        url: d.str()?,
        counters: get_counters(d)?,
        text: if d.u8()? == 1 { Some(d.str()?) } else { None },
    })
}

fn spill_bytes(files: &[PathBuf], p: usize) -> Result<u64> {
    files.iter().map(|f| crate::shuffle::block_len(f, p)).sum()
}

fn url_reduce(ctx: &Ctx, spills: &[PathBuf], p: usize) -> Result<Counters> {
    let bytes = spill_bytes(spills, p)?;
    ctx.gate.with(2 * bytes, || {
        let data = read_partition(spills, p)?;
        let mut dec = Dec::new(&data);
        let mut pages = Vec::new();
        while !dec.done() {
            pages.push(decode_mapped(&mut dec)?);
        }
        // Newest timestamp first within a URL; ties go to the larger content hash.
        pages.sort_unstable_by(|a, b| {
            (a.key, b.date, b.tiebreak, b.url).cmp(&(b.key, a.date, a.tiebreak, a.url))
        });
        let mut c = Counters::default();
        let mut kept = Vec::new();
        let mut keys = SpillBuffer::new(ctx.partitions);
        let mut units = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            if i > 0 && pages[i - 1].key == page.key {
                c.inc(Counter::PagesDuplicateUrl);
                continue;
            }
            c.merge(&page.counters);
            let Some(text) = page.text else { continue };
            dedup_units(text, ctx.cfg.options.dedup, &mut units);
            // The units travel with the page so the join need not recompute them.
            let mut e = Enc(&mut kept);
            e.u128(page.key).str(page.url).str(page.date).str(text);
            e.u32(units.len() as u32);
            for u in &units {
                e.u128(u.key).u32(u.first as u32).u32(u.last as u32);
            }
            let rank = keeper_rank(page.url);
            for u in &units {
                keys.push(partition_of(u.key, ctx.partitions), |e| {
                    e.u128(u.key).u128(rank).u128(page.key);
                });
            }
        }
        let pages_path = ctx.work.join(STAGE_PAGES).join(format!("{p:06}.pages"));
        fs::write(&pages_path, &kept)
            .with_context(|| format!("writing {}", pages_path.display()))?;
        if ctx.cfg.options.dedup != DedupMode::None {
            keys.flush_to(
                &ctx.work.join(STAGE_KEYS).join(format!("{p:06}.spill")),
                false,
            )?;
        }
        Ok(c)
    })
}

/// Which page keeps a shared line: the smallest `md5(url.strip().lower())` of the
/// normalised URL, as the reference's `min(urls, key=_hash_text)` over its URL keys.
fn keeper_rank(url: &str) -> u128 {
    md5_u128(normalize_url(url).trim().to_lowercase().as_bytes())
}

/// A de-duplication unit of a page: a line, or a window of three sentences.
struct Unit {
    key: u128,
    /// Indices (into the page's lines or sentences) the unit covers.
    first: usize,
    last: usize,
}

/// Sentences of a page as (line index, byte range in the line).
fn page_sentences(text: &str) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (li, line) in text.split('\n').enumerate() {
        sentence_spans(line, |a, b| out.push((li, a, b)));
    }
    out
}

fn dedup_units(text: &str, mode: DedupMode, out: &mut Vec<Unit>) {
    out.clear();
    let mut lower = String::new();
    match mode {
        DedupMode::None => {}
        DedupMode::Line => {
            for (i, line) in text.split('\n').enumerate() {
                lower_into(crate::text::py_strip(line), &mut lower);
                out.push(Unit {
                    key: xxhash_rust::xxh3::xxh3_128(lower.as_bytes()),
                    first: i,
                    last: i,
                });
            }
        }
        DedupMode::Span3 => {
            let lines: Vec<&str> = text.split('\n').collect();
            let sentences = page_sentences(text);
            let mut norm = Vec::with_capacity(sentences.len());
            for &(li, a, b) in &sentences {
                lower_into(&lines[li][a..b], &mut lower);
                norm.push(lower.clone());
            }
            for i in 0..sentences.len().saturating_sub(2) {
                let span = norm[i..i + 3].join(" ");
                out.push(Unit {
                    key: xxhash_rust::xxh3::xxh3_128(span.as_bytes()),
                    first: i,
                    last: i + 2,
                });
            }
        }
    }
}

// ---------------------------------------------- reduce by key: who keeps each unit

fn key_reduce(ctx: &Ctx, spills: &[PathBuf], p: usize) -> Result<Counters> {
    let bytes = spill_bytes(spills, p)?;
    ctx.gate.with(2 * bytes, || {
        let data = read_partition(spills, p)?;
        let mut dec = Dec::new(&data);
        let mut entries = Vec::with_capacity(data.len() / 48);
        while !dec.done() {
            entries.push((dec.u128()?, dec.u128()?, dec.u128()?));
        }
        entries.sort_unstable();
        entries.dedup();
        // For every key, the page of smallest rank keeps it; the others lose it.
        let mut losers = SpillBuffer::new(ctx.partitions);
        for group in entries.chunk_by(|a, b| a.0 == b.0) {
            for &(unit, _, page) in &group[1..] {
                losers.push(partition_of(page, ctx.partitions), |e| {
                    e.u128(page).u128(unit);
                });
            }
        }
        losers.flush_to(
            &ctx.work.join(STAGE_LOSERS).join(format!("{p:06}.spill")),
            false,
        )?;
        Ok(Counters::default())
    })
}

// ----------------------------------- join: dedup, language, split, write the shards

#[derive(Serialize)]
struct OutPage<'a> {
    url: &'a str,
    text: &'a str,
    timestamp: &'a str,
}

fn finalize(ctx: &Ctx, loser_spills: &[PathBuf], p: usize) -> Result<Counters> {
    let pages_path = ctx.work.join(STAGE_PAGES).join(format!("{p:06}.pages"));
    let bytes = fs::metadata(&pages_path)?.len() + spill_bytes(loser_spills, p)?;
    ctx.gate.with(2 * bytes, || {
        let loser_data = read_partition(loser_spills, p)?;
        let mut dec = Dec::new(&loser_data);
        let mut losers = HashSet::new();
        while !dec.done() {
            losers.insert((dec.u128()?, dec.u128()?));
        }
        let data =
            fs::read(&pages_path).with_context(|| format!("reading {}", pages_path.display()))?;
        let mut dec = Dec::new(&data);
        let mut c = Counters::default();
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        let mut units = Vec::new();
        while !dec.done() {
            let (key, url, date, text) = (dec.u128()?, dec.str()?, dec.str()?, dec.str()?);
            units.clear();
            for _ in 0..dec.u32()? {
                let (key, first, last) = (dec.u128()?, dec.u32()?, dec.u32()?);
                units.push(Unit {
                    key,
                    first: first as usize,
                    last: last as usize,
                });
            }
            let opts = &ctx.cfg.options;
            let deduped;
            let text = if opts.dedup == DedupMode::None {
                text
            } else {
                deduped = apply_dedup(
                    text,
                    opts.dedup,
                    &units,
                    |u| losers.contains(&(key, u)),
                    &mut c,
                );
                &deduped
            };
            if text.is_empty() {
                c.inc(Counter::PagesDedupEmpty);
                continue;
            }
            if opts.dedup != DedupMode::None
                && text.split('\n').map(count_sentences).sum::<usize>() < opts.clean.min_sentences
            {
                c.inc(Counter::PagesDedupTooFewSentences);
                continue;
            }
            if let Some(threshold) = opts.lang_threshold {
                if crate::lang::english_probability(text) < threshold {
                    c.inc(Counter::PagesNotEnglish);
                    continue;
                }
            }
            let is_validation = key % 1000 == 0;
            let out = if is_validation {
                &mut validation
            } else {
                &mut train
            };
            serde_json::to_writer(
                &mut *out,
                &OutPage {
                    url,
                    text,
                    timestamp: date,
                },
            )?;
            out.push(b'\n');
            c.inc(Counter::PagesOut);
            c.inc(if is_validation {
                Counter::PagesValidation
            } else {
                Counter::PagesTrain
            });
            c.add(Counter::LinesOut, text.split('\n').count() as u64);
            c.add(Counter::BytesOut, text.len() as u64);
        }
        for (split, lines) in [("train", &train), ("validation", &validation)] {
            let name = format!("{split}-{p:05}.{}", ctx.cfg.options.compression.extension());
            write_compressed(&ctx.cfg.out.join(name), lines, ctx.cfg.options.compression)?;
        }
        Ok(c)
    })
}

/// Remove the units `is_loser` names and repeats within the page; returns the new text.
fn apply_dedup(
    text: &str,
    mode: DedupMode,
    units: &[Unit],
    is_loser: impl Fn(u128) -> bool,
    c: &mut Counters,
) -> String {
    let mut seen = HashSet::with_capacity(units.len());
    match mode {
        DedupMode::Line | DedupMode::None => {
            let mut out = String::with_capacity(text.len());
            for (line, u) in text.split('\n').zip(units) {
                if is_loser(u.key) {
                    c.inc(Counter::LinesDuplicate);
                } else if !seen.insert(u.key) {
                    c.inc(Counter::LinesDuplicateInPage);
                } else {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(line);
                }
            }
            out
        }
        DedupMode::Span3 => {
            let sentences = page_sentences(text);
            let mut drop = vec![false; sentences.len()];
            for u in units {
                if is_loser(u.key) || !seen.insert(u.key) {
                    drop[u.first..=u.last].iter_mut().for_each(|d| *d = true);
                }
            }
            c.add(
                Counter::SentencesDuplicate,
                drop.iter().filter(|d| **d).count() as u64,
            );
            let lines: Vec<&str> = text.split('\n').collect();
            let mut rebuilt: Vec<String> = vec![String::new(); lines.len()];
            for (&(li, a, b), dropped) in sentences.iter().zip(&drop) {
                if !dropped {
                    if !rebuilt[li].is_empty() {
                        rebuilt[li].push(' ');
                    }
                    rebuilt[li].push_str(&lines[li][a..b]);
                }
            }
            rebuilt.retain(|l| !l.is_empty());
            rebuilt.join("\n")
        }
    }
}

fn write_compressed(path: &Path, bytes: &[u8], compression: Compression) -> Result<()> {
    fisherkit_common::atomic::write_file(path, |w| {
        match compression {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
                gz.write_all(bytes)?;
                gz.finish()?;
            }
            Compression::Zstd => {
                let mut z = zstd::stream::Encoder::new(w, 3)?;
                z.write_all(bytes)?;
                z.finish()?;
            }
            Compression::None => w.write_all(bytes)?,
        }
        Ok(())
    })
}
