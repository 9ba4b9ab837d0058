//! Arguments of the `train` commands. Placeholder until the capability lands.

use clap::Args;

#[derive(Args, Debug)]
pub struct TrainArgs {}

pub fn train(_: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct EvalArgs {}

pub fn eval(_: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {}

pub fn tokenizer(_: TokenizerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct TasksArgs {}

pub fn tasks(_: TasksArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {}

pub fn quickstart(_: QuickstartArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
