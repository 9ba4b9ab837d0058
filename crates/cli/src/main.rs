//! The `fisherkit` binary: parses arguments and calls library functions. Each
//! capability's arguments live in its own module; the work lives in its crate.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (position in the `mi_option_e` enum of
/// mimalloc.h; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

extern "C" {
    /// mimalloc.h's `mi_reserve_os_memory` (libmimalloc-sys declares it only behind its
    /// `arena` feature; the symbol is in the library `mimalloc` links either way).
    fn mi_reserve_os_memory(size: usize, commit: bool, allow_large: bool) -> std::ffi::c_int;
}

/// Training, Fisher gradients and decoding free and allocate the same large tensors every
/// step. By default mimalloc hands freed memory back to the OS after a second, and each
/// new tensor then faults in fresh pages the kernel must zero: 27 % of a t5-small training
/// step was the kernel zeroing pages. Keeping freed memory gave +8–17 % training tokens/s
/// and +8 % per-example gradients/s for ≈ 200 MB more peak RSS. Blocks too large for
/// mimalloc's own pages (a per-example gradient of a 22 M-parameter model is 91 MB) are
/// still mapped and unmapped one by one unless they come from a reserved arena: reserving
/// the machine's memory as address space up front (nothing is committed until used) took
/// the zeroing of fresh pages from 30 % of a MiniLM Fisher to nothing, 0.68 → 1.09
/// examples/s, and +4–7 % training tokens/s. `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_RESERVE_OS_MEMORY` in the environment still win.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer allocator option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    if std::env::var_os("MIMALLOC_RESERVE_OS_MEMORY").is_none() {
        // SAFETY: sysconf has no preconditions.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        // In arenas of at most 8 GiB (mimalloc refuses one arena much above 16 GiB).
        let mut left = (pages.max(0) as usize).saturating_mul(page.max(0) as usize);
        while left >= 1 << 30 {
            let size = left.min(8 << 30);
            // Address space only (commit = false); a failure leaves mimalloc as it was.
            // SAFETY: mimalloc allows reserving arenas at any time.
            if unsafe { mi_reserve_os_memory(size, false, true) } != 0 {
                break;
            }
            left -= size;
        }
    }
}

/// A command's JSON report: written atomically to `out` when given, and printed.
fn emit_json<T: serde::Serialize>(value: &T, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    if let Some(out) = out {
        fisherkit_common::atomic::write_json(out, value)?;
    }
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(value)?
    )
    .context("writing to stdout")
}

mod bench;
mod c4;
mod encoder;
mod experiment;
mod fisher;
mod merge;
mod npeff;
mod t5;
mod train;
mod zonotope;

#[derive(Parser, Debug)]
#[command(
    name = "fisherkit",
    version,
    about = "T5, C4, Fisher merging, NPEFF and zonotope-vertex search in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a randomly initialised T5 model directory (HF layout).
    Init(t5::InitArgs),
    /// Teacher-forced log-probabilities of targets given inputs.
    Score(t5::ScoreArgs),
    /// Greedy or beam-search decoding.
    Generate(t5::GenerateArgs),
    /// Sequence classification with an encoder's head (BERT, RoBERTa).
    Classify(encoder::ClassifyArgs),
    /// Sentence embeddings (sentence-transformers pooling) from an encoder.
    Embed(encoder::EmbedArgs),
    /// Train a text-to-text model.
    Train(train::TrainArgs),
    /// Generate on a data set and report task metrics.
    Eval(train::EvalArgs),
    /// Tokenizer tools.
    Tokenizer(train::TokenizerArgs),
    /// Task data: the built-in synthetic suite and formatters.
    Tasks(train::TasksArgs),
    /// The main job: build the synthetic suite, train a tokenizer and a tiny T5, evaluate.
    Quickstart(train::QuickstartArgs),
    /// Diagonal Fisher information of a model on a data set (and `fisher inspect`).
    Fisher(fisher::FisherArgs),
    /// Per-example Fishers written in the PEF format NPEFF reads.
    Pefs(fisher::PefsArgs),
    /// Merge checkpoints (Fisher-weighted averaging and mergekit-style methods).
    Merge(merge::MergeArgs),
    /// NPEFF decompositions of per-example Fishers.
    Npeff(npeff::NpeffArgs),
    /// The C4 web-text cleaning pipeline.
    C4(c4::C4Args),
    /// Shallow ReLU networks as zonotope-vertex search.
    Zonotope(zonotope::ZonotopeArgs),
    /// Paper experiments run end to end on built-in data.
    Experiment(experiment::ExperimentArgs),
    /// Benchmarks (results go to BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FISHERKIT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => t5::init(a),
        Command::Score(a) => t5::score(a),
        Command::Generate(a) => t5::generate(a),
        Command::Classify(a) => encoder::classify(a),
        Command::Embed(a) => encoder::embed(a),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Tokenizer(a) => train::tokenizer(a),
        Command::Tasks(a) => train::tasks(a),
        Command::Quickstart(a) => train::quickstart(a),
        Command::Fisher(a) => fisher::fisher(a),
        Command::Pefs(a) => fisher::pefs(a),
        Command::Merge(a) => merge::merge(a),
        Command::Npeff(a) => npeff::npeff(a),
        Command::C4(a) => c4::c4(a),
        Command::Zonotope(a) => zonotope::zonotope(a),
        Command::Experiment(a) => experiment::experiment(a),
        Command::Bench(a) => bench::bench(a),
    };
    if let Err(err) = result {
        // A reader that stopped early (`… | head`) is not a failure of the command.
        let closed_pipe = err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed_pipe {
            std::process::exit(0);
        }
        // `{:#}` prints the whole context chain on one line: file, line, field, cause.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written option index must name `purge_delay`: its default in the bundled
    /// mimalloc v3 (src/options.c) is 1000 ms, unlike the options around it
    /// (`use_numa_nodes` 0 after it, a deprecated flag 1 before it).
    #[test]
    fn purge_delay_option_index_matches_mimalloc() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(get(MI_OPTION_PURGE_DELAY - 1), 1);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 1000);
        assert_eq!(get(MI_OPTION_PURGE_DELAY + 1), 0);
    }
}
