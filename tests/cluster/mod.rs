//! One harness, two API backends: a test body receives a [`TestCluster`] and runs unchanged on
//! the embedded API (a server of its own, started per test) and on the real control plane
//! (kube-apiserver + etcd + kube-controller-manager built from their Go modules, shared by the
//! tests of one binary, see `real.rs`). Every test gets a fresh namespace and a kubeconfig whose
//! context points at it, so tests sharing a control plane never see each other's objects.
//!
//! [`on_both_backends!`] turns `async fn name(c: TestCluster)` into the tests `name::embedded`
//! and `name::real`.
#![allow(dead_code)]
pub mod proxy;
pub mod real;

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::support::TestApi;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Real,
}

pub struct TestCluster {
    pub backend: Backend,
    /// Admin client whose default namespace is `ns`.
    pub client: kube::Client,
    /// Admin kubeconfig whose context namespace is `ns` (for kubectl, helm, the binary).
    pub kubeconfig: PathBuf,
    /// This test's namespace.
    pub ns: String,
    embedded: Option<TestApi>,
    dir: tempfile::TempDir,
}

/// Generates `mod $name { embedded, real }` tests calling `$name(TestCluster)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let c = $crate::cluster::TestCluster::start($crate::cluster::Backend::Embedded).await;
                super::$name(c).await
            }
            #[cfg(osprov_full_tests)]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                let c = $crate::cluster::TestCluster::start($crate::cluster::Backend::Real).await;
                super::$name(c).await
            }
        }
    )+};
}

/// Path of a real tool (`kubectl`, `helm`, …) built by `scripts/k8s-tools.sh`.
pub fn tool(name: &str) -> PathBuf {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match BIN.get_or_init(real::tools_bin) {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("the real Kubernetes tools are not available: {e}"),
    }
}

fn unique_ns() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

impl TestCluster {
    pub async fn start(backend: Backend) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin_kubeconfig, embedded) = match backend {
            Backend::Embedded => {
                let api = TestApi::start().await;
                (api.kubeconfig.clone(), Some(api))
            }
            Backend::Real => {
                let plane = tokio::task::spawn_blocking(real::plane)
                    .await
                    .expect("control plane thread");
                (plane.kubeconfig.clone(), None)
            }
        };
        let ns = unique_ns();
        let kubeconfig = dir.path().join("kubeconfig");
        write_with_namespace(&admin_kubeconfig, &kubeconfig, &ns);
        let c = TestCluster {
            backend,
            client: client_for(&kubeconfig, None).await,
            kubeconfig,
            ns,
            embedded,
            dir,
        };
        let ns_obj: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": c.ns}
        }))
        .expect("namespace");
        Api::<Namespace>::all(c.client.clone())
            .create(&PostParams::default(), &ns_obj)
            .await
            .expect("test namespace created");
        c
    }

    /// `Api<K>` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A new admin client whose requests carry `User-Agent: <agent>`.
    pub async fn client_as(&self, agent: &str) -> kube::Client {
        client_for(&self.kubeconfig, Some(agent)).await
    }

    /// The API server's address (host:port of the kubeconfig's server URL).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let doc: serde_norway::Value = serde_norway::from_str(&text).expect("kubeconfig YAML");
        let server = doc["clusters"][0]["cluster"]["server"]
            .as_str()
            .expect("server URL");
        let hostport = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        hostport.parse().expect("server is host:port")
    }

    /// A client (User-Agent `agent`) that reaches the API only through `proxy`.
    pub async fn client_via(&self, proxy: &proxy::Proxy, agent: &str) -> kube::Client {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let mut doc: serde_norway::Value = serde_norway::from_str(&text).expect("kubeconfig YAML");
        doc["clusters"][0]["cluster"]["server"] =
            serde_norway::Value::String(format!("https://{}", proxy.addr));
        let path = self
            .dir
            .path()
            .join(format!("via-{}.kubeconfig", proxy.addr.port()));
        std::fs::write(&path, serde_norway::to_string(&doc).expect("yaml")).expect("kubeconfig");
        client_for(&path, Some(agent)).await
    }

    /// The (API group, resource) pairs that clients with User-Agent `agent` used in this test's
    /// namespace, sorted: from the embedded API's access record, or kube-apiserver's audit log.
    pub async fn resources_used(&self, agent: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = match self.backend {
            Backend::Embedded => {
                let req = http::Request::get("/debug/osprov/access")
                    .body(Vec::new())
                    .expect("request");
                // The embedded API's access record: user agent → [{verb, group, resource, …}].
                let record: serde_json::Value =
                    self.client.request(req).await.expect("access record");
                record[agent]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| {
                                (
                                    e["group"].as_str().unwrap_or("").to_string(),
                                    e["resource"].as_str().unwrap_or("").to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Backend::Real => {
                let plane = real::plane();
                let ns_path = format!("/namespaces/{}/", self.ns);
                real::audit_events(plane)
                    .iter()
                    .filter(|e| e["userAgent"].as_str() == Some(agent))
                    .filter(|e| {
                        e["objectRef"]["namespace"].as_str() == Some(self.ns.as_str())
                            || e["requestURI"]
                                .as_str()
                                .is_some_and(|u| u.contains(&ns_path))
                    })
                    .map(|e| {
                        (
                            e["objectRef"]["apiGroup"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                            e["objectRef"]["resource"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                        )
                    })
                    .collect()
            }
        };
        out.sort();
        out.dedup();
        out
    }

    /// The embedded server, for the few checks only it can answer (its access record).
    pub fn embedded(&self) -> Option<&TestApi> {
        self.embedded.as_ref()
    }

    /// The real control plane (its tools, logs and audit log), on the real backend.
    pub fn plane(&self) -> Option<&'static real::Plane> {
        (self.backend == Backend::Real).then(real::plane)
    }

    /// A scratch directory that lives as long as the test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The simulator registry key of dispatcher `name` in this namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Shared control planes (ours, or a developer's cluster) get their namespace back; the
        // namespace controller removes what is left in it.
        if self.backend == Backend::Real {
            let _ = std::process::Command::new(tool("kubectl"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["delete", "namespace", &self.ns, "--wait=false"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn write_with_namespace(from: &Path, to: &Path, ns: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let text = std::fs::read_to_string(from).expect("admin kubeconfig");
    let mut doc: serde_norway::Value = serde_norway::from_str(&text).expect("kubeconfig YAML");
    let current = doc["current-context"].as_str().map(str::to_string);
    if let Some(contexts) = doc["contexts"].as_sequence_mut() {
        for c in contexts {
            let selected = current.is_none() || c["name"].as_str() == current.as_deref();
            if selected {
                c["context"]["namespace"] = serde_norway::Value::String(ns.into());
            }
        }
    }
    let out = serde_norway::to_string(&doc).expect("kubeconfig YAML");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .expect("kubeconfig file");
    std::io::Write::write_all(&mut f, out.as_bytes()).expect("kubeconfig written");
}

async fn client_for(kubeconfig: &Path, agent: Option<&str>) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("client config");
    if let Some(agent) = agent {
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(agent).expect("agent"),
        ));
    }
    kube::Client::try_from(config).expect("client")
}
