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

/// One timed unit of a bench (a training step, a forward pass, one example's gradient)
/// against the machine's matmul peak.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `train_step`, `forward`, `per_example_gradient`, ...
    pub name: &'static str,
    /// Floating-point operations of one unit, counted from the configuration.
    pub flops: f64,
    /// Seconds of one unit.
    pub seconds: f64,
}

impl Workload {
    pub fn gflops_per_s(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }

    /// `{name, flops, seconds, gflops_per_s, peak_fraction}` against `peak_gflops_per_s`.
    pub fn to_json(&self, peak_gflops_per_s: f64) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "flops": self.flops,
            "seconds": self.seconds,
            "gflops_per_s": self.gflops_per_s(),
            "peak_fraction": self.gflops_per_s() / peak_gflops_per_s,
        })
    }
}

/// The peak a workload is compared with: the best rate of its dominant product `shape`
/// on the threads the workload itself uses (rayon's pool).
pub fn workload_peak(shape: [usize; 3]) -> Result<f64> {
    Ok(matmul_rate(shape, rayon::current_num_threads(), 3)?.gflops)
}

/// A bench's share-of-the-peak fields: `peak_gflops_per_s` and the `workloads` array.
pub fn share_of_peak(peak_gflops_per_s: f64, workloads: &[Workload]) -> serde_json::Value {
    serde_json::json!({
        "peak_gflops_per_s": peak_gflops_per_s,
        "workloads": workloads.iter().map(|w| w.to_json(peak_gflops_per_s)).collect::<Vec<_>>(),
    })
}
