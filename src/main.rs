//! The `osprov` binary: wiring only (subcommands → library calls).
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "osprov", version, about = "OS provisioner for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
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
            let server = osprov::apiserver::standalone::run_api(&opts, osprov_crds()).await?;
            tokio::signal::ctrl_c().await?;
            server.shutdown().await;
        }
    }
    Ok(())
}

/// The CRDs served in standalone mode (the osprov kinds once `osprov::api::crds()` lands).
fn osprov_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    Vec::new()
}
