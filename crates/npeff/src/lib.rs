//! NPEFF: non-negative per-example Fisher factorisation (D-NPEFF, LRM-NPEFF) and the PEF
//! file format.
//!
//! - [`pef`]: the PEF directory format (validated reader, streaming resumable writer).
//! - [`prep`]: normalisation, column pruning and column partitioning.
//! - [`solve`]: the D-NPEFF / LRM-NPEFF iterations and W-only coefficient fitting.
//! - [`fit`]: the `fit` and `coeffs` drivers (progress, checkpoints, outputs).
//! - [`synth`]: planted PEFs with ground truth.

pub mod bench;
pub mod fit;
pub mod linalg;
pub mod pef;
pub mod prep;
pub mod solve;
pub mod synth;

/// Run `f` on a rayon pool of `threads` workers (default: all cores).
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> anyhow::Result<T> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        anyhow::ensure!(t > 0, "--threads must be positive");
        builder = builder.num_threads(t);
    }
    Ok(builder
        .build()
        .map_err(|e| anyhow::anyhow!("starting worker threads: {e}"))?
        .install(f))
}

/// Peak resident set size of this process (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
