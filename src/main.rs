//! The `osprov` binary: wiring only. Each subcommand hands over to a library module.
use std::net::SocketAddr;
use std::path::PathBuf;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use osprov::controller::settings::{init_logging, Settings};

/// The User-Agent of the controller's requests.
const USER_AGENT: &str = concat!("osprov-controller/", env!("CARGO_PKG_VERSION"));

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
    /// Run the embedded Kubernetes API, the controller and a simulated fleet on this machine.
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
        /// Hosts of the simulator dispatcher created in namespace `default` when absent.
        #[arg(long, default_value_t = 8, env = "OSPROV_SIM_HOSTS")]
        sim_hosts: i32,
        #[command(flatten)]
        settings: Settings,
    },
    #[command(flatten)]
    Cli(osprov::cli::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Serve simulated fleets over HTTP, out of the controller's process (for simulator
    /// dispatchers with `spec.simulator.endpoint`); prints `listening on <addr>` once bound.
    Simulate {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:7070", env = "OSPROV_SIMULATE_LISTEN")]
        listen: SocketAddr,
    },
    /// Run the controller against a Kubernetes API (kubeconfig or in-cluster configuration).
    Controller {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        election: osprov::controller::leader::ElectionArgs,
    },
}

/// jemalloc rather than glibc's malloc: the controller is a multi-threaded tokio process that
/// holds tens of thousands of small, long-lived objects (watch caches, inventory) while request
/// bodies come and go on every worker thread. glibc's per-thread arenas fragment under that mix:
/// in the 10,000-host scale benchmark the peak RSS was about 50 MiB above the live heap with
/// glibc (148 MiB) and 113 MiB with jemalloc, same code, same work (README, Benchmarks).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Cli(cmd) => return run_cli(cmd),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "osprov", &mut std::io::stdout());
            Ok(())
        }
        Command::Crds { dir } => write_crds(dir),
        Command::Standalone {
            listen,
            data_dir,
            kubeconfig,
            access_log,
            sim_hosts,
            settings,
        } => {
            let opts = osprov::apiserver::standalone::ApiOptions {
                listen,
                data_dir,
                kubeconfig,
                access_log,
            };
            standalone(opts, settings, sim_hosts)
        }
        Command::Controller { settings, election } => controller(settings, election),
        Command::Simulate { listen } => simulate(listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cmd: osprov::cli::Command) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => osprov::cli::report(rt.block_on(osprov::cli::run(cmd))),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn standalone(
    opts: osprov::apiserver::standalone::ApiOptions,
    settings: Settings,
    sim_hosts: i32,
) -> anyhow::Result<()> {
    init_logging(&settings.log_level, settings.log_format);
    tokio::runtime::Runtime::new()?.block_on(async {
        osprov::standalone::run(&opts, settings, sim_hosts, shutdown_signal()).await?;
        Ok(())
    })
}

fn controller(
    settings: Settings,
    election: osprov::controller::leader::ElectionArgs,
) -> anyhow::Result<()> {
    init_logging(&settings.log_level, settings.log_format);
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut config = kube::Config::infer().await?;
        // Name ourselves in the API server's audit log (kube-rs sends no User-Agent).
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        ));
        let runtime = osprov::controller::Runtime {
            election: election.config(&settings.identifier, &config.default_namespace)?,
            ..Default::default()
        };
        let client = kube::Client::try_from(config)?;
        osprov::controller::run_with(client, settings, runtime, shutdown_signal()).await?;
        Ok(())
    })
}

fn simulate(listen: SocketAddr) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let serve = osprov::adapter::simulator::serve::serve(listen, |addr| {
            println!("listening on {addr}");
        });
        tokio::select! {
            r = serve => r?,
            () = shutdown_signal() => {}
        }
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", osprov::api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in osprov::api::crds() {
                std::fs::write(
                    dir.join(osprov::api::crd_file_name(&crd)),
                    osprov::api::crd_yaml(&crd)?,
                )?;
            }
        }
    }
    Ok(())
}
