//! The `osprov` binary: wiring only. Each subcommand hands over to a library module.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Run the embedded Kubernetes API (and, later, the controller) on this machine.
    Standalone {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:6443", env = "OSPROV_LISTEN")]
        listen: SocketAddr,
        /// Keep objects here across restarts (memory only when absent).
        #[arg(long, env = "OSPROV_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where to write the kubeconfig for kubectl.
        #[arg(long, default_value = "./osprov.kubeconfig", env = "OSPROV_KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Write the access record (who used which verbs on which resources) to this file.
        #[arg(long, env = "OSPROV_ACCESS_LOG")]
        access_log: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => write_crds(dir),
        Command::Standalone {
            listen,
            data_dir,
            kubeconfig,
            access_log,
        } => {
            let opts = osprov::apiserver::standalone::ApiOptions {
                listen,
                data_dir,
                kubeconfig,
                access_log,
            };
            standalone(opts)
        }
    }
}

fn standalone(opts: osprov::apiserver::standalone::ApiOptions) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let server = osprov::apiserver::standalone::run_api(&opts, osprov::api::crds()).await?;
        tokio::signal::ctrl_c().await?;
        server.shutdown().await;
        Ok(())
    })
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
