//! `fisherkit bench …`: one subcommand per capability, each defined in its module.

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// T5 forward pass and greedy generation throughput (t5-small shape).
    T5(crate::t5::BenchArgs),
    /// Training step throughput (t5-small shape).
    Train(crate::train::BenchArgs),
    /// Per-example gradients and PEFs per second.
    Fisher(crate::fisher::BenchArgs),
    /// Merging synthetic ~1.1B-parameter checkpoints.
    Merge(crate::merge::BenchArgs),
    /// D-NPEFF and LRM-NPEFF iterations on planted PEFs.
    Npeff(crate::npeff::BenchArgs),
    /// The C4 pipeline on WET files.
    C4(crate::c4::BenchArgs),
    /// QP solves per second and a full compare run.
    Zonotope(crate::zonotope::BenchArgs),
    /// The machine's f32 matmul peak as the CPU backend reaches it (the yardstick of
    /// BENCHMARKS.md's "share of the peak").
    Matmul(MatmulArgs),
}

#[derive(Args, Debug)]
pub struct MatmulArgs {
    /// Square products of these sizes, plus t5-small's feed-forward product
    /// (1024 × 512 · 512 × 2048).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048])]
    sizes: Vec<usize>,
    /// Timed repetitions per shape (the best is reported) after one warm-up.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn matmul(args: MatmulArgs) -> anyhow::Result<()> {
    use fisherkit_model::peak;
    let all_threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut threads = vec![1];
    if all_threads > 1 {
        threads.push(all_threads);
    }
    let mut shapes: Vec<[usize; 3]> = args.sizes.iter().map(|&n| [n, n, n]).collect();
    shapes.push([1024, 512, 2048]);
    let mut rates = Vec::new();
    for &shape in &shapes {
        for &t in &threads {
            rates.push(peak::matmul_rate(shape, t, args.repeats)?);
        }
    }
    let cpu = peak::cpu_model().unwrap_or_else(|| "unknown".into());
    let isa = peak::instruction_sets();
    if args.json {
        let rows: Vec<serde_json::Value> = rates
            .iter()
            .map(|r| serde_json::json!({"shape": r.shape, "threads": r.threads, "seconds": r.seconds, "gflops": r.gflops}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"cpu": cpu, "instruction_sets": isa, "rates": rows})
        );
    } else {
        println!("cpu: {cpu} ({})", isa.join(", "));
        for r in &rates {
            let [m, k, n] = r.shape;
            println!(
                "{m} × {k} · {k} × {n}, {} thread(s): {:.1} GFLOP/s",
                r.threads, r.gflops
            );
        }
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::T5(a) => crate::t5::bench(a),
        Which::Train(a) => crate::train::bench(a),
        Which::Fisher(a) => crate::fisher::bench(a),
        Which::Merge(a) => crate::merge::bench(a),
        Which::Npeff(a) => crate::npeff::bench(a),
        Which::C4(a) => crate::c4::bench(a),
        Which::Zonotope(a) => crate::zonotope::bench(a),
        Which::Matmul(a) => matmul(a),
    }
}
