//! Arguments of the `t5` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct InitArgs {}

pub fn init(_: InitArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct ScoreArgs {}

pub fn score(_: ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct GenerateArgs {}

pub fn generate(_: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
