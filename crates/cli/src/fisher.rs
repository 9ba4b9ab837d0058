//! Arguments of the `fisher` commands. `fisher inspect` is implemented (it belongs to the
//! Fisher file format in `fisherkit-merge`); computing Fishers is still a placeholder.

use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FisherArgs {
    #[command(subcommand)]
    command: Option<FisherCommand>,
}

#[derive(Subcommand, Debug)]
enum FisherCommand {
    /// Summarise a Fisher file: metadata, per-tensor and global statistics.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Fisher safetensors file (or sharded directory).
    file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn fisher(args: FisherArgs) -> anyhow::Result<()> {
    match args.command {
        Some(FisherCommand::Inspect(a)) => {
            let summary = fisherkit_merge::inspect(&a.file)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(())
        }
        None => anyhow::bail!(
            "computing Fishers is not available yet (try `fisherkit fisher inspect FILE`)"
        ),
    }
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
