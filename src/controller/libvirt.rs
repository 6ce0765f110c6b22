//! Building a libvirt adapter from an OSDispatcher: `spec.libvirt` plus, when it names one, the
//! credentials Secret (in the dispatcher's namespace). Both strategies also get the
//! dispatcher's operation store and callback endpoint, shared with the Redfish adapter (`iso`
//! for every operation, `image` for those with configuration). The Secret's resourceVersion goes
//! into the session fingerprint, so a rotated password reconnects; its contents are never logged.
use super::Scope;
use crate::adapter::{Adapter, AdapterError};
use crate::api::{LibvirtSpec, OSDispatcher};
use crate::provisioner::keys::DispKey;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::sync::Arc;

/// What a libvirt adapter reads from the API.
pub struct Inputs {
    /// User name and password, when the spec names a Secret.
    pub account: Option<(String, String)>,
    pub version: String,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// `spec.libvirt`, with a URI libvirt may be given (see `adapter::libvirt::uri`).
fn spec(d: &OSDispatcher) -> Result<&LibvirtSpec, AdapterError> {
    let spec = d
        .spec
        .libvirt
        .as_ref()
        .ok_or_else(|| AdapterError::Config("adapter libvirt needs spec.libvirt".into()))?;
    crate::adapter::libvirt::uri::check(&spec.uri).map_err(AdapterError::Config)?;
    Ok(spec)
}

/// Read the credentials Secret a libvirt dispatcher names (none: nothing to read).
pub async fn inputs(scope: &Scope, d: &OSDispatcher, ns: &str) -> Result<Inputs, AdapterError> {
    let Some(creds) = spec(d)?.credentials_secret_ref.as_ref() else {
        return Ok(Inputs {
            account: None,
            version: String::new(),
        });
    };
    let api: Api<Secret> = Api::namespaced(scope.shared.client.clone(), ns);
    let (user, password, version) = super::redfish::account(&api, ns, creds).await?;
    Ok(Inputs {
        account: Some((user, password)),
        version,
    })
}

/// Build the adapter of a libvirt dispatcher.
#[cfg(feature = "libvirt")]
pub fn build(
    key: &DispKey,
    d: &OSDispatcher,
    scope: &Scope,
    inputs: Inputs,
) -> Result<Arc<dyn Adapter>, AdapterError> {
    use crate::adapter::libvirt::{Credentials, LibvirtAdapter, LibvirtConfig};
    let spec = spec(d)?;
    let callback_timeout = super::redfish::callback_timeout(spec.callback_timeout.as_deref())?;
    let cfg = LibvirtConfig {
        uri: spec.uri.clone(),
        credentials: inputs
            .account
            .map(|(username, password)| Credentials { username, password }),
        names: spec.domains.names.clone(),
        labelled: spec.domains.labelled,
        image_pool: spec.image_pool.clone(),
        images: spec
            .images
            .iter()
            .map(|i| (i.name.clone(), i.volume.clone()))
            .collect(),
        root_disk: spec.root_disk.clone(),
        strategy: spec.strategy,
        callback_base: super::redfish::callback_base(scope),
        callback_timeout,
    };
    // Both strategies keep operation records: `iso` for every operation, `image` for those with
    // configuration (the new disk's first boot reports to the callback endpoint).
    Ok(Arc::new(LibvirtAdapter::new(cfg).with_operations(
        super::redfish::operation_store(key, scope),
    )))
}

/// This build has no libvirt adapter (see the `libvirt` cargo feature).
#[cfg(not(feature = "libvirt"))]
pub fn build(
    _key: &DispKey,
    d: &OSDispatcher,
    _scope: &Scope,
    _inputs: Inputs,
) -> Result<Arc<dyn Adapter>, AdapterError> {
    spec(d)?;
    Err(AdapterError::Unavailable("libvirt"))
}
