//! Test harness: starts the embedded API on 127.0.0.1:0 with the osprov CRDs and a temporary data
//! directory, and hands back a kube client, the kubeconfig path and the server.
#![allow(dead_code)]
use std::path::PathBuf;
use std::time::Duration;

use osprov::apiserver::{serve, ApiServer, Config};

pub struct TestApi {
    pub server: ApiServer,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestApi {
    /// The embedded API with the osprov CRDs, persisting into a fresh temporary directory.
    pub async fn start() -> TestApi {
        Self::start_with(|_| {}).await
    }

    /// Like `start`, after `tweak` adjusted the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(osprov::api::crds());
        config.data_dir = Some(dir.path().join("data"));
        config.bookmark_interval = Duration::from_secs(60);
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    /// Starts a server in `dir` with exactly `config`.
    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> TestApi {
        let server = serve(config).await.expect("embedded API starts");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        let client = server.client().await.expect("client");
        TestApi {
            server,
            client,
            kubeconfig,
            dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.server_url()
    }

    /// The bearer token from the kubeconfig, for raw HTTP requests.
    pub fn token(&self) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let doc: serde_json::Value = serde_norway::from_str(&text).expect("yaml");
        doc["users"][0]["user"]["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// Stops the server and keeps the directory (for restart tests).
    pub async fn stop(self) -> tempfile::TempDir {
        self.server.shutdown().await;
        self.dir
    }
}

/// A minimal OSProvisioningRequest manifest.
pub fn ospr(name: &str, host: &str, os: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "osprov.io/v1alpha1",
        "kind": "OSProvisioningRequest",
        "metadata": {"name": name},
        "spec": {"host": host, "os": os},
    })
}

pub fn ospr_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "osprov.io",
        "v1alpha1",
        "OSProvisioningRequest",
    ))
}

/// `Api<DynamicObject>` for OSProvisioningRequests in `ns`.
pub fn osprs(client: &kube::Client, ns: &str) -> kube::Api<kube::api::DynamicObject> {
    kube::Api::namespaced_with(client.clone(), ns, &ospr_resource())
}

pub fn dyn_obj(v: serde_json::Value) -> kube::api::DynamicObject {
    serde_json::from_value(v).expect("object")
}

/// The HTTP code of a failed kube call.
pub fn code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The Status of a failed kube call.
pub fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
