//! The `osprov.io/v1alpha1` custom resource types and the helpers shared by them.
//!
//! Three kinds, all namespaced and in the `osprov` category:
//! - [`OSDispatcher`]: one connection to one piece of management software through an adapter;
//! - [`ManagedHost`]: a host discovered through a dispatcher (written only by the controller);
//! - [`OSProvisioningRequest`]: "host X must run OS Y".
//!
//! The CustomResourceDefinitions are generated from these types (`osprov crds`), committed under
//! `crds/` and checked for drift by a test; the embedded API is driven by the same objects.
#![warn(missing_docs)]
pub mod conditions;
mod dispatcher;
mod host;
mod libvirt;
mod request;
mod vsphere;
pub mod yaml;

pub use dispatcher::*;
pub use host::*;
pub use libvirt::*;
pub use request::*;
pub use vsphere::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every osprov kind.
pub const GROUP: &str = "osprov.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The finalizer the controller puts on requests so that deleting an in-flight one cancels it.
pub const REQUEST_FINALIZER: &str = "osprov.io/cancel-on-delete";
/// Label on ManagedHosts naming the dispatcher that discovered them.
pub const DISPATCHER_LABEL: &str = "osprov.io/dispatcher";
/// Annotation on an OSDispatcher asking for a discovery now: set it to a new value (e.g. a
/// timestamp) and the controller discovers, then records the value in
/// `status.lastDiscoveryRequest` (`osprov discover`, and `osprov os list` when nothing is known).
pub const DISCOVER_ANNOTATION: &str = "osprov.io/discover";
/// The field manager of every write the controller makes (managedFields, audit logs).
pub const FIELD_MANAGER: &str = "osprov";
/// The identifier of a provisioner that was given none, and the `spec.provisioner` of a
/// dispatcher that names none.
pub const DEFAULT_PROVISIONER: &str = "osp";
/// Label on ManagedHosts and requests naming the provisioner identifier responsible for them.
pub const PROVISIONER_LABEL: &str = "osprov.io/provisioner";

/// The CustomResourceDefinitions of all osprov kinds, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        OSDispatcher::crd(),
        ManagedHost::crd(),
        OSProvisioningRequest::crd(),
    ]
}

/// Render the CRDs as one multi-document YAML stream (what `osprov crds` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, yaml::YamlError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// One CRD as YAML that kubectl and Helm (YAML 1.1 readers) parse as written (see [`yaml`]).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, yaml::YamlError> {
    yaml::to_portable_yaml(crd)
}

/// File name under `crds/` for one CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
