//! Arguments of the `c4` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct C4Args {}

pub fn c4(_: C4Args) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
