//! Arguments of the `zonotope` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct ZonotopeArgs {}

pub fn zonotope(_: ZonotopeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
