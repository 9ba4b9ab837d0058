//! Arguments of the `npeff` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct NpeffArgs {}

pub fn npeff(_: NpeffArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
