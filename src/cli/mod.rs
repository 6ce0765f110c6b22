//! The `osprov` command line for admins and the Resource Provider: the common questions (which
//! hosts, which OS images, what is stuck) in one line, and reprovisioning with live progress,
//! one host or a whole wave. Every subcommand talks to the Kubernetes API through kube-rs with
//! the usual kubeconfig rules (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster;
//! `--context`, `-n`, `-A`); output follows kubectl's conventions (`-o table|wide|json|yaml`).
//!
//! Exit codes: 0 done; 1 refused or failed (the reason is printed); 2 bad usage (clap's); 3 timed
//! out while waiting.
pub mod output;
pub mod query;
pub mod reprovision;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// Errors of the command line; each is printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("output: {0}")]
    Output(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Timeout(..) => ExitCode::from(3),
            _ => ExitCode::from(1),
        }
    }
}

/// How to reach the API and which namespaces to look at (kubectl's flags).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (read-only subcommands).
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

/// A connected client and the namespace scope the user asked for.
pub struct Target {
    pub client: Client,
    /// The namespace writes go to (and reads, unless `all`).
    pub namespace: String,
    pub all: bool,
}

impl Target {
    /// `Api<K>` over the scope: every namespace with `-A`, else the namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        if self.all {
            Api::all(self.client.clone())
        } else {
            self.namespaced()
        }
    }

    /// `Api<K>` in the namespace, whatever `-A` says.
    pub fn namespaced<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Builds the client from the kubeconfig rules, as kubectl does.
pub async fn connect(args: &KubeArgs, agent: &str) -> Result<Target, CliError> {
    let opts = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let cfg_err = |e: &dyn std::fmt::Display| CliError::Config(e.to_string());
    let mut config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| cfg_err(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| cfg_err(&e))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| cfg_err(&e))?,
        (None, None) => kube::Config::infer().await.map_err(|e| cfg_err(&e))?,
    };
    if let Ok(v) = http::HeaderValue::from_str(agent) {
        config.headers.push((http::header::USER_AGENT, v));
    }
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok(Target {
        client,
        namespace,
        all: args.all_namespaces,
    })
}

const AGENT: &str = concat!("osprov-cli/", env!("CARGO_PKG_VERSION"));

/// The command-line subcommands (flattened into the `osprov` binary's own).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Hosts with their dispatcher, current OS, power, state and the request holding them.
    Hosts {
        /// Only hosts of this dispatcher.
        #[arg(long)]
        dispatcher: Option<String>,
        /// Only hosts currently running this OS.
        #[arg(long)]
        os: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: output::Format,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// OS images.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
    /// Ask a dispatcher for a discovery now.
    Discover {
        dispatcher: String,
        /// Wait until the discovery has finished.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "60s", value_parser = parse_timeout)]
        timeout: Duration,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Reprovision HOST with OS, or with --selector every matching host (a wave).
    Reprovision {
        /// HOST OS, or only OS with --selector.
        #[arg(value_name = "HOST OS", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Name of the request (default: <host>-<os>).
        #[arg(long, conflicts_with = "selector")]
        name: Option<String>,
        /// Follow the request until it succeeds (exit 0) or fails (exit 1).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "30m", value_parser = parse_timeout)]
        timeout: Duration,
        /// A wave: every ManagedHost matching this label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Hosts of a wave reprovisioning at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        max_unavailable: u16,
        /// Go on with the wave after a failed host.
        #[arg(long)]
        continue_on_error: bool,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Dispatchers with state and host counts, requests by phase, and what is stuck and why.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: output::Format,
        #[command(flatten)]
        kube: KubeArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum OsCommand {
    /// The OS images that can be installed, per host or per dispatcher; when none is known,
    /// asks for a discovery and waits for it.
    List {
        #[arg(long, conflicts_with = "dispatcher")]
        host: Option<String>,
        #[arg(long)]
        dispatcher: Option<String>,
        /// How long to wait for a discovery when no OS image is known.
        #[arg(long, default_value = "60s", value_parser = parse_timeout)]
        timeout: Duration,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: output::Format,
        #[command(flatten)]
        kube: KubeArgs,
    },
}

/// Runs one subcommand, printing its result on stdout.
pub async fn run(cmd: Command) -> Result<(), CliError> {
    let out = match cmd {
        Command::Hosts {
            dispatcher,
            os,
            output,
            kube,
        } => {
            let t = connect(&kube, AGENT).await?;
            query::hosts(&t, dispatcher.as_deref(), os.as_deref(), output).await?
        }
        Command::Os {
            command:
                OsCommand::List {
                    host,
                    dispatcher,
                    timeout,
                    output,
                    kube,
                },
        } => {
            let t = connect(&kube, AGENT).await?;
            query::os_list(&t, host.as_deref(), dispatcher.as_deref(), timeout, output).await?
        }
        Command::Discover {
            dispatcher,
            wait,
            timeout,
            kube,
        } => {
            let t = connect_for_writes(&kube).await?;
            query::discover(&t, &dispatcher, wait.then_some(timeout)).await?
        }
        Command::Reprovision {
            args,
            name,
            wait,
            timeout,
            selector,
            max_unavailable,
            continue_on_error,
            kube,
        } => {
            let t = connect_for_writes(&kube).await?;
            match (selector.as_deref(), args.as_slice()) {
                (Some(selector), [os]) => {
                    let w = reprovision::Wave {
                        selector,
                        os,
                        max_unavailable: usize::from(max_unavailable),
                        continue_on_error,
                        timeout,
                    };
                    reprovision::wave(&t, &w).await?
                }
                (None, [host, os]) => {
                    reprovision::single(&t, host, os, name.as_deref(), wait, timeout).await?
                }
                (Some(_), _) => {
                    return Err(CliError::Usage(
                        "with --selector give only the OS: osprov reprovision -l LABELS OS".into(),
                    ))
                }
                (None, _) => {
                    return Err(CliError::Usage(
                        "give HOST and OS: osprov reprovision HOST OS".into(),
                    ))
                }
            }
        }
        Command::Status { output, kube } => {
            let t = connect(&kube, AGENT).await?;
            query::status(&t, output).await?
        }
    };
    print!("{out}");
    Ok(())
}

/// `connect` for subcommands that write: they work in one namespace, so `-A` is refused.
async fn connect_for_writes(kube: &KubeArgs) -> Result<Target, CliError> {
    if kube.all_namespaces {
        return Err(CliError::Usage(
            "-A/--all-namespaces is for reading; this command works in one namespace (-n)".into(),
        ));
    }
    connect(kube, AGENT).await
}

/// Parses "30s", "5m", "1h" (and plain seconds) for `--timeout`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    crate::controller::settings::parse_duration(s)
}

/// Prints an error the way the command line reports it and turns it into the exit code.
pub fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
