//! The `osprov` binary: wiring only. Each subcommand hands over to a library module.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "osprov", version, about = "OS provisioner for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (or write one file per CRD into --dir).
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => write_crds(dir),
    }
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", osprov::api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in osprov::api::crds() {
                std::fs::write(
                    dir.join(osprov::api::crd_file_name(&crd)),
                    serde_yaml::to_string(&crd)?,
                )?;
            }
        }
    }
    Ok(())
}
