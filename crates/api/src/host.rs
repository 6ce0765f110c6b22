//! `ManagedHost`: a host discovered through an OSDispatcher.
//!
//! Hosts are never invented: the controller creates one for each host a dispatcher reports, owned by
//! that dispatcher (so deleting the dispatcher garbage-collects its hosts), and writes its status only
//! when the discovered facts change. The spec holds identity only.
// kube-derive takes several `printcolumn(...)` attributes of the same shape; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A host discovered through an OSDispatcher. Written by the osprov controller only.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "osprov.io",
    version = "v1alpha1",
    kind = "ManagedHost",
    namespaced,
    status = "ManagedHostStatus",
    shortname = "mhost",
    category = "osprov",
    printcolumn(name = "Dispatcher", type_ = "string", json_path = ".spec.dispatcher"),
    printcolumn(name = "OS", type_ = "string", json_path = ".status.currentOs"),
    printcolumn(name = "Power", type_ = "string", json_path = ".status.power"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.provisioning"),
    printcolumn(
        name = "Request",
        type_ = "string",
        json_path = ".status.activeRequest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedHostSpec {
    /// Name of the OSDispatcher (same namespace) that reports this host.
    pub dispatcher: String,
    /// The host's identifier in the management software.
    pub backend_id: String,
}

/// The discovered facts about a host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedHostStatus {
    /// The OS image the host runs now, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_os: Option<String>,
    /// The OS images this host can take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_os: Vec<String>,
    /// On, Off or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerState>,
    /// What the management software says about provisioning on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<HostProvisioningState>,
    /// The OSProvisioningRequest currently holding this host, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request: Option<String>,
    /// Extra facts reported by the management software (manufacturer, model, serial, MACs…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// `Present`: whether the last discovery still reported this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the host was last reported by a discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// Power state of a host: `On`, `Off` or `Unknown`. (The variants carry no doc comments of their
/// own: schemars would turn the CRD's plain `enum` into a `oneOf`.)
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

impl PowerState {
    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
            PowerState::Unknown => "Unknown",
        }
    }
}

/// Provisioning state of a host as the backend reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HostProvisioningState {
    /// Running its OS, nothing in progress.
    Idle,
    /// A reprovision is in progress.
    Provisioning,
    /// The last reprovision failed.
    Failed,
    /// The backend does not say.
    Unknown,
}

impl HostProvisioningState {
    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            HostProvisioningState::Idle => "Idle",
            HostProvisioningState::Provisioning => "Provisioning",
            HostProvisioningState::Failed => "Failed",
            HostProvisioningState::Unknown => "Unknown",
        }
    }
}
