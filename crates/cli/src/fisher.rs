//! Arguments of the `fisher` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct FisherArgs {}

pub fn fisher(_: FisherArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct PefsArgs {}

pub fn pefs(_: PefsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {}

pub fn experiment(_: ExperimentArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
