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
    }
}
