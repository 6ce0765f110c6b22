//! `osprov standalone`: starts the embedded API on its own, writes a kubeconfig and tells the user
//! how to reach it with kubectl. The controller and the simulator are wired in by `main` later; this
//! module only owns the API part so `main` stays wiring.
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::{serve, ApiServer, ApiServerError, Config};

/// Options of `osprov standalone` that concern the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub kubeconfig: PathBuf,
    pub access_log: Option<PathBuf>,
}

/// Starts the API, writes the kubeconfig (mode 0600) and prints how to use it.
pub async fn run_api(
    opts: &ApiOptions,
    crds: Vec<CustomResourceDefinition>,
) -> Result<ApiServer, ApiServerError> {
    let mut config = Config::new(crds);
    config.listen = opts.listen;
    config.data_dir = opts.data_dir.clone();
    config.access_log = opts.access_log.clone();
    let server = serve(config).await?;
    server.write_kubeconfig(&opts.kubeconfig)?;
    let kc = opts.kubeconfig.display();
    println!("osprov embedded API listening on {}", server.server_url());
    println!("kubeconfig written to {kc}");
    println!("try: kubectl --kubeconfig {kc} get osprov");
    Ok(server)
}
