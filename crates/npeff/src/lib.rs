//! NPEFF: non-negative per-example Fisher factorisation (D-NPEFF, LRM-NPEFF) and the PEF
//! file format.
//!
//! - [`pef`]: the PEF directory format (validated reader, streaming resumable writer).
//! - [`prep`]: normalisation, column pruning and column partitioning.
//! - [`solve`]: the D-NPEFF / LRM-NPEFF iterations and W-only coefficient fitting.
//! - [`fit`]: the `fit` and `coeffs` drivers (progress, checkpoints, outputs).
//! - [`synth`]: planted PEFs with ground truth.
//! - [`analysis`]: what components mean (top examples, parameter attribution).
//! - [`perturb`]: the perturbation test (does a component's direction drive its examples?).

pub mod analysis;
pub mod bench;
pub mod fit;
pub mod linalg;
pub mod pef;
pub mod perturb;
pub mod prep;
pub mod report;
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

/// CPU seconds (user + system, all threads) consumed by this process so far, from
/// `/proc/self/stat` (Linux; clock ticks assumed at the kernel's usual 100 Hz). On a shared
/// machine this is steadier than wall-clock time.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_cpu_ticks(&s))
        .map_or(0.0, |ticks| ticks as f64 / 100.0)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, optionally plus the
/// waited-for children's cutime + cstime (16 and 17).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.len() == 4).then(|| f.iter().sum())
}
