//! Building a vSphere adapter from an OSDispatcher: `spec.vsphere` plus the Secrets it names
//! (the account, and the CA bundle when `tls.caSecretRef` is set), both in the dispatcher's
//! namespace. Their resourceVersions go into the session fingerprint, so fixing a Secret
//! reconnects; their contents are never logged. The operation store and the callback endpoint are
//! the ones the Redfish adapter uses.
use super::Scope;
use crate::adapter::vsphere::soap::{Soap, SoapConfig};
use crate::adapter::vsphere::tls::{http_client, Trust};
use crate::adapter::vsphere::{VsphereAdapter, VsphereConfig};
use crate::adapter::{Adapter, AdapterError};
use crate::api::{OSDispatcher, VsphereSpec};
use crate::provisioner::keys::DispKey;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent SOAP calls to one vCenter.
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// One SOAP call (above `WaitForUpdatesEx`'s 20 s wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// The Secrets' contents a vSphere adapter needs, and a version string for the fingerprint.
pub struct Inputs {
    pub username: String,
    pub password: String,
    pub ca_pem: Option<Vec<u8>>,
    pub version: String,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn spec(d: &OSDispatcher) -> Result<&VsphereSpec, AdapterError> {
    d.spec
        .vsphere
        .as_ref()
        .ok_or_else(|| AdapterError::Config("adapter vsphere needs spec.vsphere".into()))
}

/// Read the Secrets a vSphere dispatcher names.
pub async fn inputs(scope: &Scope, d: &OSDispatcher, ns: &str) -> Result<Inputs, AdapterError> {
    let spec = spec(d)?;
    let api: Api<Secret> = Api::namespaced(scope.shared.client.clone(), ns);
    let (username, password, v1) =
        super::redfish::account(&api, ns, &spec.credentials_secret_ref).await?;
    let (ca_pem, v2) = match spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        Some(r) => {
            let key = r.key.as_deref().unwrap_or("ca.crt");
            let (pem, v) = super::redfish::secret_value(&api, ns, &r.name, key, "TLS CA").await?;
            (Some(pem), v)
        }
        None => (None, String::new()),
    };
    Ok(Inputs {
        username,
        password,
        ca_pem,
        version: format!("{v1}/{v2}"),
    })
}

/// Build the adapter of a vSphere dispatcher.
pub fn build(
    key: &DispKey,
    d: &OSDispatcher,
    scope: &Scope,
    inputs: Inputs,
) -> Result<Arc<dyn Adapter>, AdapterError> {
    let spec = spec(d)?;
    let callback_timeout = super::redfish::callback_timeout(spec.callback_timeout.as_deref())?;
    let connections = spec
        .max_connections
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let tls = spec.tls.clone().unwrap_or_default();
    let trust = Trust {
        ca_pem: inputs.ca_pem,
        thumbprint: tls.thumbprint,
        insecure_skip_verify: tls.insecure_skip_verify,
    };
    let http = http_client(&trust, connections)
        .map_err(|e| AdapterError::Config(format!("vCenter TLS settings: {e}")))?;
    let soap = Soap::new(
        SoapConfig {
            url: spec.url.clone(),
            username: inputs.username,
            password: inputs.password,
            max_connections: connections,
            timeout: CALL_TIMEOUT,
        },
        http,
    );
    let cfg = VsphereConfig {
        names: spec.vms.names.clone(),
        images: spec.images.clone(),
        strategy: spec.strategy,
        callback_base: super::redfish::callback_base(scope),
        callback_timeout,
    };
    let store = super::redfish::operation_store(key, scope);
    Ok(Arc::new(VsphereAdapter::new(soap, cfg, store)))
}
