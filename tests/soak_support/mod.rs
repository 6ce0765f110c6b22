//! The moving parts of the fault-injection soak (`tests/soak.rs`), each in the process where it
//! belongs:
//! - [`SimProcess`]: `osprov simulate`, the simulated management software in a process of its
//!   own, so it outlives every controller kill and keeps the ledger of what it was asked to do;
//! - [`ControllerProcess`]: the real `osprov controller` binary, SIGKILLed and started again;
//! - [`ApiUnderTest`]: the API server, restartable on its data while clients keep their
//!   kubeconfig: the embedded API in the driver's process on a fixed port, token and data
//!   directory, or the real kube-apiserver on etcd (`cluster::real`, restarted by the thread that
//!   owns its processes);
//! - [`FaultProxy`] (`proxy.rs`): an HTTP proxy between the controller and the API that answers a seeded
//!   fraction of writes with a 409 Conflict (without forwarding them) and holds a seeded fraction
//!   of requests back before forwarding; with the API down it answers 503. The controller talks
//!   plain HTTP to it; towards kube-apiserver it speaks TLS with the admin client certificate.
//!
//! [`Rng`] is SplitMix64: the soak's randomness comes from one printed seed, and this is all the
//! generator it needs.
#![allow(dead_code)]
mod proxy;

use crate::cluster::{real, Backend};
use osprov::adapter::simulator::serve::LedgerView;
use osprov::apiserver::{serve, ApiServer, Config};
pub use proxy::FaultProxy;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// `osprov simulate` on a free port.
pub struct SimProcess {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl SimProcess {
    pub fn start() -> SimProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_osprov"))
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("osprov simulate starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("its first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        SimProcess {
            child,
            url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    /// The ledger of dispatcher `ns/name`'s fleet.
    pub async fn ledger(&self, ns: &str, name: &str) -> LedgerView {
        let url = format!("{}/v1/fleets/{ns}/{name}/ledger", self.url);
        let r = self.http.get(&url).send().await.expect("ledger");
        assert!(
            r.status().is_success(),
            "ledger of {ns}/{name}: {}",
            r.status()
        );
        r.json().await.expect("ledger JSON")
    }

    /// Take dispatcher `ns/name`'s management software down or bring it back.
    pub async fn outage(&self, ns: &str, name: &str, unreachable: bool) {
        let url = format!("{}/v1/fleets/{ns}/{name}/outage", self.url);
        let r = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "unreachable": unreachable }))
            .send()
            .await
            .expect("outage");
        assert!(r.status().is_success(), "outage: {}", r.status());
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real controller binary, started and SIGKILLed by the driver.
pub struct ControllerProcess {
    child: Option<Child>,
    kubeconfig: PathBuf,
    namespace: String,
    /// More arguments (e.g. the callback endpoint).
    pub extra: Vec<String>,
    pub starts: u32,
}

impl ControllerProcess {
    pub fn new(kubeconfig: &Path, namespace: &str) -> ControllerProcess {
        ControllerProcess {
            child: None,
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.to_string(),
            extra: Vec::new(),
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(env!("CARGO_BIN_EXE_osprov"))
            .args([
                "controller",
                "--namespaces",
                &self.namespace,
                "--lookup-interval",
                "10s",
                "--poll-interval",
                "1s",
                "--retry-base",
                "500ms",
                "--retry-cap",
                "3s",
                "--metrics-addr",
                "off",
                "--log-level",
                "error",
            ])
            .args(&self.extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("osprov controller starts");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: nothing is flushed, released or said goodbye to.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The embedded API on a fixed port, token and data directory.
pub struct EmbeddedApi {
    server: Option<ApiServer>,
    pub addr: SocketAddr,
    pub token: String,
    data: PathBuf,
}

impl EmbeddedApi {
    fn config(addr: SocketAddr, token: &str, data: &Path) -> Config {
        let mut c = Config::new(osprov::api::crds());
        c.listen = addr;
        c.token = Some(token.to_string());
        c.tls = false;
        c.data_dir = Some(data.to_path_buf());
        c
    }

    pub async fn start(dir: &Path) -> EmbeddedApi {
        let token = format!("soak-{}", std::process::id());
        let data = dir.join("api-data");
        let server = serve(Self::config(
            "127.0.0.1:0".parse().expect("addr"),
            &token,
            &data,
        ))
        .await
        .expect("embedded API starts");
        let addr = server.addr();
        EmbeddedApi {
            server: Some(server),
            addr,
            token,
            data,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving (watches end, the database is released) and start again on the same data.
    pub async fn restart(&mut self, down_for: Duration) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        tokio::time::sleep(down_for).await;
        for _ in 0..100 {
            match serve(Self::config(self.addr, &self.token, &self.data)).await {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                // The port may linger a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("the embedded API did not come back on {}", self.addr);
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A kubeconfig for `url` (plain HTTP) with `token` (none: the proxy authenticates).
pub fn kubeconfig(path: &Path, url: &str, token: Option<&str>, namespace: &str) {
    let user = match token {
        Some(t) => serde_json::json!({ "token": t }),
        None => serde_json::json!({}),
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "soak", "cluster": {"server": url}}],
        "users": [{"name": "soak", "user": user}],
        "contexts": [{"name": "soak", "context": {"cluster": "soak", "user": "soak", "namespace": namespace}}],
        "current-context": "soak",
    });
    std::fs::write(path, serde_norway::to_string(&doc).expect("yaml")).expect("kubeconfig");
}

/// A kube client from a kubeconfig file.
pub async fn client(path: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

/// Retry an API call through restarts and injected faults (the driver is a client like any).
pub async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = String::new();
    for _ in 0..600 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {last}");
}

/// Create `obj`, or find it made by an earlier try whose answer was lost (an API restart).
pub async fn create_or_get<K>(api: &kube::Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = kube::api::PostParams::default();
    let name = obj.meta().name.clone().unwrap_or_default();
    retry("create", || async {
        match api.create(&pp, obj).await {
            Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await,
            other => other,
        }
    })
    .await
}

/// Delete `name`; a 404 means done.
pub async fn delete<K>(api: &kube::Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = kube::api::DeleteParams::default();
    retry("delete", || async {
        match api.delete(name, &dp).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await;
}

/// Wait until no object of `api` is short of a terminal phase; the phases counted. Panics after
/// `secs` naming a few that are stuck.
pub async fn wait_all_terminal(
    api: &kube::Api<osprov::api::OSProvisioningRequest>,
    secs: u64,
) -> std::collections::BTreeMap<String, usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let lp = kube::api::ListParams::default();
    loop {
        let list = retry("list", || api.list(&lp)).await;
        let mut phases = std::collections::BTreeMap::new();
        let mut stuck = Vec::new();
        for r in &list.items {
            let p = r.status.as_ref().and_then(|s| s.phase);
            *phases.entry(format!("{p:?}")).or_default() += 1;
            if !p.is_some_and(osprov::api::Phase::is_terminal)
                || r.metadata.deletion_timestamp.is_some()
            {
                stuck.push((r.metadata.name.clone(), r.status.clone()));
            }
        }
        if stuck.is_empty() {
            return phases;
        }
        if std::time::Instant::now() > deadline {
            stuck.truncate(5);
            panic!("{} requests stuck: {stuck:?}", stuck.len());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The seed of a run: `OSPROV_SOAK_SEED`, else the clock.
pub fn seed() -> u64 {
    std::env::var("OSPROV_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The API server under a soak, restartable on its data.
pub enum ApiUnderTest {
    Embedded(EmbeddedApi),
    /// The tests' own kube-apiserver on etcd (`cluster::real`).
    Real,
}

impl ApiUnderTest {
    /// Down for `down_for`, then up again on the same data, address and credentials.
    pub async fn restart(&mut self, down_for: Duration) {
        match self {
            ApiUnderTest::Embedded(api) => api.restart(down_for).await,
            ApiUnderTest::Real => {
                tokio::task::spawn_blocking(move || {
                    real::restart_apiserver(real::plane(), down_for)
                })
                .await
                .expect("restart thread")
                .unwrap_or_else(|e| panic!("kube-apiserver restart: {e}"));
            }
        }
    }
}

/// The CA and the client identity of an admin kubeconfig with certificate data (the real
/// plane's), for the proxy's HTTPS upstream.
fn upstream_tls(kubeconfig: &Path) -> (String, reqwest::Certificate, reqwest::Identity) {
    use base64::Engine;
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("kubeconfig YAML");
    let field = |v: &serde_norway::Value, what: &str| -> Vec<u8> {
        let b64 = v[what]
            .as_str()
            .unwrap_or_else(|| panic!("the soak needs {what} in {}", kubeconfig.display()));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    };
    let (cluster, user) = (&doc["clusters"][0]["cluster"], &doc["users"][0]["user"]);
    let server = cluster["server"].as_str().expect("server").to_string();
    let ca =
        reqwest::Certificate::from_pem(&field(cluster, "certificate-authority-data")).expect("CA");
    let mut pem = field(user, "client-certificate-data");
    pem.extend(field(user, "client-key-data"));
    let identity = reqwest::Identity::from_pem(&pem).expect("client identity");
    (server, ca, identity)
}

/// What every soak stands on: the API server (restartable), the fault proxy in front of it
/// (3 % conflicts, 3 % delays), a kubeconfig for each, the driver's client (straight to the API)
/// and namespace `namespace`.
pub struct Stage {
    pub dir: tempfile::TempDir,
    pub api: Arc<tokio::sync::Mutex<ApiUnderTest>>,
    pub proxy: FaultProxy,
    /// The controller's kubeconfig (through the proxy).
    pub proxied: PathBuf,
    pub client: kube::Client,
}

impl Stage {
    pub async fn start(backend: Backend, seed: u64, namespace: &str) -> Stage {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxied = dir.path().join("proxied.kubeconfig");
        let (api, proxy, direct) = match backend {
            Backend::Embedded => {
                let api = EmbeddedApi::start(dir.path()).await;
                let (api_url, token) = (api.url(), api.token.clone());
                let proxy = FaultProxy::start(&api_url, None, seed ^ 0x5eed, 0.03, 0.03).await;
                let direct = dir.path().join("direct.kubeconfig");
                kubeconfig(&direct, &api_url, Some(&token), namespace);
                kubeconfig(&proxied, &proxy.url(), Some(&token), namespace);
                (ApiUnderTest::Embedded(api), proxy, direct)
            }
            Backend::Real => {
                let plane = tokio::task::spawn_blocking(real::plane)
                    .await
                    .expect("control plane thread");
                let (server, ca, identity) = upstream_tls(&plane.kubeconfig);
                let tls = Some((ca, identity));
                let proxy = FaultProxy::start(&server, tls, seed ^ 0x5eed, 0.03, 0.03).await;
                kubeconfig(&proxied, &proxy.url(), None, namespace);
                (ApiUnderTest::Real, proxy, plane.kubeconfig.clone())
            }
        };
        let client = client(&direct).await;
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some(namespace.into());
        create_or_get(&kube::Api::all(client.clone()), &ns).await;
        Stage {
            dir,
            api: Arc::new(tokio::sync::Mutex::new(api)),
            proxy,
            proxied,
            client,
        }
    }

    /// What the proxy did, for the report.
    pub fn proxy_report(&self) -> String {
        let c = &self.proxy.counts;
        format!(
            "proxy: {} conflicts injected, {} answers delayed, {} answered 503",
            c.conflicts.load(Ordering::Relaxed),
            c.delayed.load(Ordering::Relaxed),
            c.unavailable.load(Ordering::Relaxed)
        )
    }

    /// Stop the API (after the controller).
    pub async fn stop(self) {
        let Stage { api, proxy, .. } = self;
        drop(proxy);
        if let Ok(ApiUnderTest::Embedded(api)) = Arc::try_unwrap(api).map(|m| m.into_inner()) {
            api.stop().await;
        }
    }
}
