//! Controller settings, from flags or `OSPROV_*` environment variables (and so from Helm values).
//!
//! `identifier` and `lookupInterval` are the two settings of the original OS Provisioner; the rest
//! tune logging, metrics, the namespaces watched and retry behaviour.
use std::net::SocketAddr;
use std::time::Duration;

/// Parse a Go-style duration (`10s`, `1m30s`, `500ms`) with kube's parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_negative() {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    Ok(Duration::from(d))
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the controller can be told.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Identifier of this provisioner; it manages only OSDispatchers whose `spec.provisioner` matches.
    #[arg(long, env = "OSPROV_IDENTIFIER", default_value = crate::api::DEFAULT_PROVISIONER)]
    pub identifier: String,
    /// Default re-discovery interval of every dispatcher.
    #[arg(long, env = "OSPROV_LOOKUP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub lookup_interval: Duration,
    /// Namespaces to watch (comma-separated); empty watches all.
    #[arg(long, env = "OSPROV_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints; `off` disables them.
    #[arg(long, env = "OSPROV_METRICS_ADDR", default_value = "127.0.0.1:9090", value_parser = parse_addr)]
    pub metrics_addr: MetricsAddr,
    /// At most this many reprovisions at once across all dispatchers (unlimited when unset).
    #[arg(long, env = "OSPROV_MAX_CONCURRENT")]
    pub max_concurrent: Option<u32>,
    /// Attempts before a request ends Failed (a request's `spec.maxAttempts` overrides it).
    #[arg(long, env = "OSPROV_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay; doubles per failure, with jitter.
    #[arg(long, env = "OSPROV_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "OSPROV_RETRY_CAP", default_value = "5m", value_parser = parse_duration)]
    pub retry_cap: Duration,
    /// How often a running reprovision or a waiting request is looked at again.
    #[arg(long, env = "OSPROV_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a ManagedHost the backend no longer reports is kept (with condition Present=False).
    #[arg(long, env = "OSPROV_HOST_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub host_grace: Duration,
    /// Address of the provisioning callback endpoint (`POST /callback/<token>`) that installers
    /// booted by the Redfish adapter report to; `off` disables it.
    #[arg(long, env = "OSPROV_CALLBACK_ADDR", default_value = "off", value_parser = parse_addr)]
    pub callback_addr: MetricsAddr,
    /// URL under which hosts reach the callback endpoint (e.g. `http://osprov.example:8082`);
    /// defaults to `http://<callback-addr>` when that is not a wildcard address.
    #[arg(long, env = "OSPROV_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// PEM certificate chain of the callback endpoint (e.g. `tls.crt` of a Secret mounted from
    /// cert-manager); with `--callback-tls-key` the endpoint speaks HTTPS only.
    #[arg(long, env = "OSPROV_CALLBACK_TLS_CERT", requires = "callback_tls_key")]
    pub callback_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the callback endpoint's certificate.
    #[arg(long, env = "OSPROV_CALLBACK_TLS_KEY", requires = "callback_tls_cert")]
    pub callback_tls_key: Option<std::path::PathBuf>,
    /// Log filter (`info`, `debug`, `osprov=debug,kube=info`…).
    #[arg(long, env = "OSPROV_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "OSPROV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Where the metrics and health endpoints listen, if anywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("invalid address {s:?}: {e}"))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            identifier: crate::api::DEFAULT_PROVISIONER.into(),
            lookup_interval: Duration::from_secs(10),
            namespaces: Vec::new(),
            metrics_addr: MetricsAddr(None),
            max_concurrent: None,
            max_attempts: 3,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            host_grace: Duration::from_secs(300),
            callback_addr: MetricsAddr(None),
            callback_url: None,
            callback_tls_cert: None,
            callback_tls_key: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// Install the global tracing subscriber once (later calls are ignored).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn durations_and_defaults() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("ten").is_err());
        let cli = Cli::parse_from([
            "x",
            "--lookup-interval",
            "250ms",
            "--namespaces",
            "a,b",
            "--metrics-addr",
            "off",
        ]);
        assert_eq!(cli.s.lookup_interval, Duration::from_millis(250));
        assert_eq!(cli.s.namespaces, ["a", "b"]);
        assert_eq!(cli.s.metrics_addr, MetricsAddr(None));
        assert_eq!(cli.s.identifier, "osp");
    }
}
