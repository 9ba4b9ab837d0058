//! The machine's matmul peak as the CPU backend reaches it: the yardstick every
//! throughput in BENCHMARKS.md is stated against (its share of the peak), measured by
//! `fisherkit bench matmul` on the same machine as the workload.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use burn::tensor::{Device, Distribution, Tensor};

/// One measured product shape.
#[derive(Clone, Debug)]
pub struct MatmulRate {
    /// `[m, k, n]`: an `[m, k]` by `[k, n]` product.
    pub shape: [usize; 3],
    pub threads: usize,
    /// Best of the timed repetitions.
    pub seconds: f64,
    pub gflops: f64,
}

/// Time `[m, k] · [k, n]` in f32 on the CPU backend with `threads` worker threads: the
/// best of `repeats` runs after one warm-up.
pub fn matmul_rate(shape: [usize; 3], threads: usize, repeats: usize) -> Result<MatmulRate> {
    let [m, k, n] = shape;
    ensure!(m * k * n > 0, "matmul shape {shape:?} has a zero dimension");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the benchmark's thread pool")?;
    let device = Device::flex();
    let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
    let run = || -> Result<f64> {
        let start = Instant::now();
        let product = a.clone().matmul(b.clone());
        // Reading one value waits for the product.
        product
            .slice([0..1, 0..1])
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the product: {e:?}"))?;
        Ok(start.elapsed().as_secs_f64())
    };
    let seconds = pool.install(|| -> Result<f64> {
        run()?;
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            best = best.min(run()?);
        }
        Ok(best)
    })?;
    Ok(MatmulRate {
        shape,
        threads,
        seconds,
        gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
    })
}

/// The SIMD instruction sets the matmul kernels of this build pick from at run time on
/// this CPU (AVX-512 only in builds with the `avx512` feature).
pub fn instruction_sets() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
    }
    found
}

/// The CPU's model name (`/proc/cpuinfo`), when the system tells it.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}
