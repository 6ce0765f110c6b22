//! `osprov standalone`: the embedded API, the controller and a simulator dispatcher in one
//! process, so osprov can be tried without a cluster. Wiring only: the parts live in
//! [`crate::apiserver`] and [`crate::controller`].
use crate::api::{OSDispatcher, OSDispatcherSpec, SimulatorSpec};
use crate::apiserver::standalone::{run_api, ApiOptions};
use crate::controller::settings::Settings;
use kube::api::{Api, PostParams};

/// Name of the simulator dispatcher `standalone` creates in namespace `default`.
pub const SIM_DISPATCHER: &str = "simulator";

/// Errors of the standalone wiring.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Api(#[from] crate::apiserver::ApiServerError),
    #[error("creating the simulator dispatcher failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Controller(#[from] crate::controller::Error),
}

/// Make sure the default simulator dispatcher exists (created with `hosts` hosts when absent;
/// an existing one, e.g. from a previous run on the same data dir, is left as it is).
pub async fn ensure_sim_dispatcher(
    client: &kube::Client,
    identifier: &str,
    hosts: i32,
) -> Result<(), StandaloneError> {
    let api: Api<OSDispatcher> = Api::namespaced(client.clone(), "default");
    if api.get_opt(SIM_DISPATCHER).await?.is_some() {
        return Ok(());
    }
    let d = OSDispatcher::new(
        SIM_DISPATCHER,
        OSDispatcherSpec {
            adapter: Default::default(),
            provisioner: identifier.to_string(),
            lookup_interval: None,
            max_concurrent: None,
            simulator: Some(SimulatorSpec {
                hosts,
                ..SimulatorSpec::default()
            }),
            libvirt: None,
            vsphere: None,
            redfish: None,
        },
    );
    match api.create(&PostParams::default(), &d).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Run the API, the simulator dispatcher and the controller until `shutdown` resolves.
pub async fn run(
    opts: &ApiOptions,
    settings: Settings,
    sim_hosts: i32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    let server = run_api(opts, crate::api::crds()).await?;
    let client = server.client().await?;
    ensure_sim_dispatcher(&client, &settings.identifier, sim_hosts).await?;
    println!("controller running with identifier {:?}; simulator dispatcher default/{SIM_DISPATCHER} ({sim_hosts} hosts)", settings.identifier);
    let result = crate::controller::run(client, settings, shutdown).await;
    server.shutdown().await;
    result.map_err(Into::into)
}
