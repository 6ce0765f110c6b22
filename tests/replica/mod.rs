//! Test harness for controller replicas: runs the real controller through `run_with` (leader
//! election, health and metrics as in a pod) with a kube client of its own that sends a distinct
//! User-Agent, so the embedded API's access record tells the replicas apart. Each replica is
//! [`Isolated`] (a runtime of its own), so a kill ends everything it started, as a SIGKILL does.
#![allow(dead_code)]
use crate::harness::Isolated;
use osprov::adapter::simulator::SimRegistry;
use osprov::controller::leader::LeaderConfig;
use osprov::controller::metrics::{Health, Metrics};
use osprov::controller::settings::Settings;
use osprov::controller::{Error, Runtime};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A kube client for `server` whose requests carry `User-Agent: <agent>`.
pub async fn client_as(server: &osprov::apiserver::ApiServer, agent: &str) -> kube::Client {
    let opts = kube::config::KubeConfigOptions::default();
    let mut config = kube::Config::from_custom_kubeconfig(server.kubeconfig(), &opts)
        .await
        .expect("config");
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(agent).expect("agent"),
    ));
    kube::Client::try_from(config).expect("client")
}

/// Election timings for tests: 2 s lease, 1 s renew deadline, 200 ms retry period.
pub fn election(identity: &str) -> LeaderConfig {
    election_in(identity, "default")
}

/// `election` with the Lease in namespace `ns`.
pub fn election_in(identity: &str, ns: &str) -> LeaderConfig {
    LeaderConfig {
        lease_name: osprov::controller::leader::lease_name("osp"),
        namespace: ns.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
    }
}

/// One running replica, [`Isolated`] as a pod is: a kill ends every task it started.
pub struct Replica {
    pub name: String,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    run: Isolated<Result<(), Error>>,
}

impl Replica {
    /// Start a replica that runs `run_with` with `election` (None: no leader election).
    pub fn start(
        name: &str,
        client: kube::Client,
        settings: Settings,
        election: Option<LeaderConfig>,
        sims: Arc<SimRegistry>,
    ) -> Replica {
        let runtime = Runtime {
            election,
            adapters: osprov::controller::adapters::AdapterFactory::with_simulators(sims),
            ..Runtime::default()
        };
        let (health, metrics) = (runtime.health.clone(), runtime.metrics.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let run = Isolated::spawn(osprov::controller::run_with(
            client,
            settings,
            runtime,
            async move {
                let _ = rx.await;
            },
        ));
        Replica {
            name: name.into(),
            health,
            metrics,
            stop: Some(tx),
            run,
        }
    }

    pub fn leading(&self) -> bool {
        self.health.leading.load(Ordering::Relaxed)
    }

    /// Crash: end every task at once, releasing nothing.
    pub async fn kill(self) {
        self.run.kill().await;
    }

    /// Clean shutdown (SIGTERM): returns what `run_with` returned.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Wait for `run_with` to return by itself.
    pub async fn wait(&mut self) -> Result<(), Error> {
        self.run.join().await.unwrap_or(Ok(()))
    }

    /// True once `run_with` has returned.
    pub fn finished(&self) -> bool {
        self.run.finished()
    }
}

/// The embedded API's access record: user agent → [(verb, group, resource, subresource)].
pub async fn access_record(client: &kube::Client) -> serde_json::Value {
    let req = http::Request::get("/debug/osprov/access")
        .body(Vec::new())
        .expect("request");
    client.request(req).await.expect("access record")
}

/// GET `path` from a local HTTP endpoint: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// A free local port (bound, then released).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the Helm SDK (scripts/test.sh exports OSPROV_PYTHON; target/venv otherwise).
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("OSPROV_PYTHON") {
        return p.into();
    }
    let venv = root().join("target/venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with helm-python-sdk: run scripts/test.sh (or set OSPROV_PYTHON)"
    );
    venv
}

/// Run `tests/python/<script> charts/osprov '<values>'` (the chart rendered by the real Helm
/// SDK) and parse the JSON it prints.
pub fn chart_query(script: &str, values: &serde_json::Value) -> serde_json::Value {
    let out = std::process::Command::new(python())
        .arg(root().join("tests/python").join(script))
        .arg(root().join("charts/osprov"))
        .arg(values.to_string())
        .output()
        .expect("the chart helper runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the chart helper prints JSON")
}
