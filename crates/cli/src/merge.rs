//! Arguments of the `merge` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct MergeArgs {}

pub fn merge(_: MergeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
