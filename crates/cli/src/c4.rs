//! Arguments of the `c4` commands: `fisherkit c4 clean …` and `fisherkit bench c4`.

use anyhow::Context;
use clap::{Args, Subcommand};
use fisherkit_c4::{Badwords, CleanConfig, Compression, DedupMode, Options, RunConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct C4Args {
    #[command(subcommand)]
    command: C4Command,
}

#[derive(Subcommand, Debug)]
enum C4Command {
    /// Clean Common Crawl WET files into sharded JSON lines (train/validation) + stats.json.
    Clean(CleanArgs),
}

#[derive(Args, Debug)]
struct CleanArgs {
    /// WET files or globs (`*.warc.wet.gz`); gzip members concatenated.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Output directory (created; re-running resumes an unfinished run or refuses).
    #[arg(long)]
    out: PathBuf,
    /// Bad-words list, one word or phrase per line (e.g. the LDNOOBW English list).
    /// Without it the bad-words filter is off.
    #[arg(long)]
    badwords: Option<PathBuf>,
    /// Drop lines with fewer words (tfds code: 5; the paper: 3).
    #[arg(long)]
    min_words_per_line: Option<usize>,
    /// Drop pages with fewer sentences (tfds code: 3; the paper: 5).
    #[arg(long)]
    min_sentences: Option<usize>,
    /// Use the paper's thresholds (3 words per line, 5 sentences) instead of the code's.
    #[arg(long)]
    paper_thresholds: bool,
    /// Corpus-wide de-duplication: line (released code), span3 (paper), none.
    #[arg(long, default_value = "line", value_parser = clap::builder::PossibleValuesParser::new(DedupMode::NAMES))]
    dedup: String,
    /// Keep pages whose English probability (whatlang confidence) is at least this.
    #[arg(long, default_value_t = 0.99)]
    lang_threshold: f64,
    /// Keep pages of every language.
    #[arg(long)]
    no_lang_filter: bool,
    /// Compression of the output shards.
    #[arg(long, default_value = "gzip", value_parser = clap::builder::PossibleValuesParser::new(Compression::NAMES))]
    compression: String,
    /// Worker threads (default: all cores). Output does not depend on it.
    #[arg(long)]
    workers: Option<usize>,
    /// Memory budget in MiB for shuffle buffers and partitions being reduced.
    #[arg(long, default_value_t = 2048)]
    memory_mb: u64,
    /// Number of shuffle partitions = output shards per split (default: from input size
    /// and --memory-mb, at least 16).
    #[arg(long)]
    partitions: Option<usize>,
    /// Replace a finished or unfinished C4 run in --out instead of refusing (other
    /// directories are never deleted).
    #[arg(long)]
    force: bool,
    /// Read at most N not-yet-processed input files, then stop; rerunning the same
    /// command resumes (useful on preemptible machines).
    #[arg(long)]
    max_files: Option<usize>,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn c4(args: C4Args) -> anyhow::Result<()> {
    match args.command {
        C4Command::Clean(a) => clean(a),
    }
}

fn clean(a: CleanArgs) -> anyhow::Result<()> {
    let base = if a.paper_thresholds {
        CleanConfig::PAPER
    } else {
        CleanConfig::TFDS
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.lang_threshold),
        "--lang-threshold must be within [0, 1], got {}",
        a.lang_threshold
    );
    anyhow::ensure!(a.partitions != Some(0), "--partitions must be at least 1");
    let badwords = a.badwords.as_deref().map(Badwords::from_file).transpose()?;
    let inputs = fisherkit_c4::pipeline::expand_inputs(&a.input)?;
    let cfg = RunConfig {
        inputs,
        out: a.out,
        options: Options {
            clean: CleanConfig {
                min_words_per_line: a.min_words_per_line.unwrap_or(base.min_words_per_line),
                min_sentences: a.min_sentences.unwrap_or(base.min_sentences),
            },
            dedup: a.dedup.parse()?,
            lang_threshold: (!a.no_lang_filter).then_some(a.lang_threshold),
            compression: a.compression.parse()?,
            partitions: a.partitions,
        },
        badwords,
        workers: a.workers.unwrap_or_else(default_workers).max(1),
        memory_mb: a.memory_mb,
        force: a.force,
        max_files: a.max_files,
    };
    let summary = fisherkit_c4::run(&cfg).context("c4 clean")?;
    let c = &summary.counters;
    if !summary.complete {
        eprintln!(
            "c4 clean: stopped after --max-files; {} pages read so far; rerun the same command to continue",
            c.get(fisherkit_c4::Counter::PagesIn)
        );
        return Ok(());
    }
    use fisherkit_c4::Counter::*;
    eprintln!(
        "c4 clean: {} pages in, {} out ({} train, {} validation) in {:.1}s ({:.0} pages/s, {:.1} MB/s); details in {}",
        c.get(PagesIn),
        c.get(PagesOut),
        c.get(PagesTrain),
        c.get(PagesValidation),
        summary.seconds,
        summary.pages_per_second,
        summary.mb_per_second,
        cfg.out.join("stats.json").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Real WET files to time (default: testdata/c4-real/*.warc.wet.gz).
    #[arg(long, num_args = 1..)]
    input: Vec<String>,
    /// Bad-words list (default: testdata/c4-real/badwords-en.txt).
    #[arg(long)]
    badwords: Option<PathBuf>,
    /// Size of the generated corpus in MB of WET text.
    #[arg(long, default_value_t = 200)]
    generated_mb: u64,
    /// Worker counts to time the whole pipeline with.
    #[arg(long, num_args = 1.., default_values_t = [1, 2])]
    workers: Vec<usize>,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let real = "testdata/c4-real";
    let input = if a.input.is_empty() {
        vec![format!("{real}/*.warc.wet.gz")]
    } else {
        a.input
    };
    let badwords = a
        .badwords
        .unwrap_or_else(|| PathBuf::from(format!("{real}/badwords-en.txt")));
    fisherkit_c4::bench::run(&fisherkit_c4::bench::BenchConfig {
        inputs: fisherkit_c4::pipeline::expand_inputs(&input)?,
        badwords: Badwords::from_file(&badwords)?,
        generated_mb: a.generated_mb,
        workers: a.workers,
    })
}
