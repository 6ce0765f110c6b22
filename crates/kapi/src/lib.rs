//! The embedded, single-node Kubernetes API for osprov's kinds.
//!
//! `serve(Config)` starts an HTTP server that behaves like kube-apiserver for everything osprov,
//! kube-runtime and kubectl use (see `/work/shared/k8s-api-fidelity.md`): the kinds of the
//! `CustomResourceDefinition`s it is given, plus Namespaces, Secrets, Events (core/v1 and
//! events.k8s.io/v1 views of one store) and Leases. `schema` (structural schema: pruning,
//! defaults, validation, CEL) and `ssa` (server-side apply and managedFields) are pure modules; the
//! rest of the server lives beside them: `http` (auth, routing), `reads`, `watch`, `writes`,
//! `patch`, `store` (+ `persist` in redb), `discovery` (+ OpenAPI), `table`, `gc`, `access`.
pub mod schema;
pub mod ssa;

mod access;
mod builtin;
pub mod crdschema;
mod delete;
mod discovery;
mod error;
mod gc;
mod http;
mod key;
mod labels;
mod objects;
mod options;
mod patch;
mod persist;
mod protobuf;
mod reads;
mod request;
mod resources;
mod selector;
pub mod standalone;
mod store;
mod table;
mod tls;
mod typing;
mod watch;
mod writes;
mod yaml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rand::RngCore;
use serde_json::json;

pub use error::{ApiError, ApiServerError};

/// How to run the embedded API.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see `ApiServer::addr`).
    pub listen: SocketAddr,
    /// Persist objects and the revision counter here (redb); `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// The custom kinds to serve.
    pub crds: Vec<CustomResourceDefinition>,
    /// How many changes are kept for watches resuming from an older revision.
    pub watch_history: usize,
    /// How often watches with allowWatchBookmarks get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Also write the access record (JSON) to this file.
    pub access_log: Option<PathBuf>,
    /// The bearer token clients must present; `None` (the default) makes a random one at start.
    pub token: Option<String>,
    /// Serve HTTPS with a CA made at start (default). kubectl sends tokens only over TLS; plain
    /// HTTP is for clients that do not need that (e.g. benchmarks).
    pub tls: bool,
    /// At most this many watches open at once; one more is answered 429 `TooManyRequests`.
    pub max_watches: usize,
    /// A request body must arrive within this; a slower client is answered 408.
    pub body_timeout: Duration,
}

impl Config {
    /// 127.0.0.1:0, in memory, 10,000 changes of history, a bookmark a minute.
    pub fn new(crds: Vec<CustomResourceDefinition>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            crds,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(60),
            access_log: None,
            token: None,
            tls: true,
            max_watches: DEFAULT_MAX_WATCHES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// Each open watch holds a task, a 256-event buffer and a subscription to every change: 1,024
/// of them is far more than osprov's controller (one per kind and namespace), kubectl sessions
/// and tests need, and bounds what a client that opens watches in a loop can take.
pub const DEFAULT_MAX_WATCHES: usize = 1024;
/// kube-apiserver's default request timeout (`--request-timeout`, 60 s) for reading a body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running embedded API.
pub struct ApiServer {
    addr: SocketAddr,
    token: String,
    ca_pem: Option<String>,
    state: Arc<request::State>,
    closing: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    gc: tokio::task::JoinHandle<()>,
}

fn ensure_namespace(store: &store::Store, name: &str) {
    let key = ("namespaces".to_string(), String::new(), name.to_string());
    if store.get(&key).is_some() {
        return;
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": objects::now()},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    if store.commit(&key, store::Expect::Absent, Some(ns)).is_err() {
        tracing::warn!(namespace = name, "could not create namespace");
    }
}

/// Starts the embedded API.
pub async fn serve(config: Config) -> Result<ApiServer, ApiServerError> {
    let registry = resources::Registry::new(&config.crds)?;
    let persist = match &config.data_dir {
        Some(dir) => Some(persist::Persist::open(dir)?),
        None => None,
    };
    let channel = config.watch_history.clamp(1024, 65_536);
    let store = store::Store::open(persist, config.watch_history, channel)?;
    // Defaults of the current schemas apply to stored objects too (kube-apiserver defaults on read).
    store.fix_up_loaded(|key, obj| {
        if let Some(schema) = registry
            .resources
            .iter()
            .find(|r| r.store_key == key.0)
            .and_then(|r| r.schema.as_ref())
        {
            schema.apply_defaults(obj);
        }
    });
    ensure_namespace(&store, "default");
    ensure_namespace(&store, "kube-system");
    let token = config.token.clone().unwrap_or_else(|| {
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    });
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(request::State {
        registry,
        store,
        token: token.clone(),
        access: access::Access::new(config.access_log.clone()),
        bookmark_interval: config.bookmark_interval,
        gc_wake: tokio::sync::Notify::new(),
        closing: closing_rx.clone(),
        watches: Arc::new(tokio::sync::Semaphore::new(config.max_watches)),
        max_watches: config.max_watches,
        body_timeout: config.body_timeout,
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = http::router(state.clone());
    let mut shutdown_rx = closing_rx.clone();
    let shutdown = async move {
        let _ = shutdown_rx.changed().await;
    };
    let (server, ca_pem) = if config.tls {
        let material = tls::generate(addr)?;
        let listener = tls::TlsListener::new(listener, material.acceptor)?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "embedded API server failed");
            }
        });
        (task, Some(material.ca_pem))
    } else {
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "embedded API server failed");
            }
        });
        (task, None)
    };
    let gc = tokio::spawn(gc::run(state.clone(), closing_rx));
    tracing::info!(%addr, tls = config.tls, persistent = config.data_dir.is_some(), "embedded API listening");
    Ok(ApiServer {
        addr,
        token,
        ca_pem,
        state,
        closing,
        server,
        gc,
    })
}

impl ApiServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients use; a wildcard listen address is reached through loopback.
    pub fn server_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("{scheme}://{addr}")
    }

    /// The CA that signed the server certificate (PEM), when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A kubeconfig with the server address and this run's bearer token.
    pub fn kubeconfig(&self) -> kube::config::Kubeconfig {
        let doc = self.kubeconfig_json();
        // The document is well-formed by construction; fall back to an empty config otherwise.
        serde_json::from_value(doc).unwrap_or_default()
    }

    fn kubeconfig_json(&self) -> serde_json::Value {
        use base64::Engine;
        let mut cluster = json!({"server": self.server_url()});
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "osprov", "cluster": cluster}],
            "users": [{"name": "osprov", "user": {"token": self.token}}],
            "contexts": [{"name": "osprov", "context": {"cluster": "osprov", "user": "osprov", "namespace": "default"}}],
            "current-context": "osprov",
        })
    }

    /// Writes the kubeconfig with mode 0600 (it holds the token).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ApiServerError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_norway::to_string(&self.kubeconfig_json())
            .map_err(|e| ApiServerError::Kubeconfig(e.to_string()))?;
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// A kube client for this server.
    pub async fn client(&self) -> Result<kube::Client, ApiServerError> {
        let opts = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(self.kubeconfig(), &opts)
            .await
            .map_err(|e| ApiServerError::Kubeconfig(e.to_string()))?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops serving: open watches end, connections close, the database is released.
    pub async fn shutdown(self) {
        let _ = self.closing.send(true);
        let ApiServer {
            server, gc, state, ..
        } = self;
        let mut server = server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        let _ = gc.await;
        drop(state);
    }
}
