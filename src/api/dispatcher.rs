//! `OSDispatcher`: one connection to one piece of management software through an adapter.
//!
//! The spec says which adapter to use and how to reach it; the status mirrors what the provisioner
//! last learnt from it (state, host count, OS catalogue, last discovery).
// kube-derive takes several `printcolumn(...)` attributes of the same shape; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Connection to one piece of management software (a Redfish BMC, libvirt, vSphere or the built-in
/// simulator). osprov discovers the hosts behind it and reprovisions them on request.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "osprov.io",
    version = "v1alpha1",
    kind = "OSDispatcher",
    namespaced,
    status = "OSDispatcherStatus",
    shortname = "osd",
    category = "osprov",
    printcolumn(name = "Adapter", type_ = "string", json_path = ".spec.adapter"),
    printcolumn(
        name = "Provisioner",
        type_ = "string",
        json_path = ".spec.provisioner"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.hostCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OSDispatcherSpec {
    /// Which adapter talks to the management software.
    #[serde(default)]
    pub adapter: AdapterKind,
    /// Identifier of the provisioner that owns this dispatcher. Provisioners with another identifier
    /// leave it alone.
    #[serde(default = "default_provisioner")]
    pub provisioner: String,
    /// How often the provisioner re-discovers hosts and OS images (e.g. `10s`, `1m`). Defaults to the
    /// provisioner's global `lookupInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub lookup_interval: Option<String>,
    /// At most this many reprovisions run at once through this dispatcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: Option<i32>,
    /// Settings of the simulator adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulator: Option<SimulatorSpec>,
}

fn default_provisioner() -> String {
    "osp".to_string()
}

/// The adapters osprov knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// The built-in simulated fleet; needs no hardware.
    #[default]
    Simulator,
    /// Redfish BMCs (bare metal).
    Redfish,
    /// libvirt (KVM/QEMU and Xen).
    Libvirt,
    /// VMware vSphere.
    Vsphere,
}

impl AdapterKind {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Simulator => "simulator",
            AdapterKind::Redfish => "redfish",
            AdapterKind::Libvirt => "libvirt",
            AdapterKind::Vsphere => "vsphere",
        }
    }
}

/// The simulated fleet behind a simulator dispatcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatorSpec {
    /// Number of simulated hosts.
    #[serde(default = "default_sim_hosts")]
    #[schemars(range(min = 0, max = 100000))]
    pub hosts: i32,
    /// Host names are this prefix followed by a zero-padded index (`sim-000`).
    #[serde(default = "default_host_prefix")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-?$"),
        length(max = 40)
    )]
    pub host_prefix: String,
    /// OS images every simulated host can take.
    #[serde(default = "default_sim_images")]
    pub os_images: Vec<String>,
    /// OS the hosts run when the fleet is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_os: Option<String>,
    /// How long one simulated reprovision takes, in milliseconds.
    #[serde(default = "default_provision_millis")]
    #[schemars(range(min = 0, max = 86400000))]
    pub provision_millis: i64,
    /// Failure injection, for testing and demos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<SimulatorFailures>,
}

impl Default for SimulatorSpec {
    fn default() -> Self {
        SimulatorSpec {
            hosts: default_sim_hosts(),
            host_prefix: default_host_prefix(),
            os_images: default_sim_images(),
            initial_os: None,
            provision_millis: default_provision_millis(),
            failures: None,
        }
    }
}

fn default_sim_hosts() -> i32 {
    8
}
fn default_host_prefix() -> String {
    "sim-".to_string()
}
fn default_sim_images() -> Vec<String> {
    vec!["ubuntu-24.04".into(), "debian-12".into(), "rocky-9".into()]
}
fn default_provision_millis() -> i64 {
    3000
}

/// Failures the simulator injects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatorFailures {
    /// Fail these provisionings, counted from 1 across the fleet (e.g. `[1, 3]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_nth: Vec<i32>,
    /// Fail this fraction of provisionings (0.0 to 1.0), deterministically from `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fraction: Option<f64>,
    /// Seed for `failFraction`.
    #[serde(default)]
    pub seed: i64,
    /// While true the simulated backend is unreachable (every call fails).
    #[serde(default)]
    pub unreachable: bool,
}

/// What the provisioner last learnt from the dispatcher.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OSDispatcherStatus {
    /// Connecting, Ready, Degraded or Unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DispatcherState>,
    /// `Ready` and `Discovered` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of hosts the last discovery reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_count: Option<i32>,
    /// Every OS image any host of this dispatcher can take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub os_catalogue: Vec<String>,
    /// When the last successful discovery finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_discovery: Option<Time>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The state of a dispatcher's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DispatcherState {
    /// Subscribing and running the first discovery.
    Connecting,
    /// Connected and discovered.
    Ready,
    /// Connected, but something is wrong (configuration, partial discovery, adapter unavailable).
    Degraded,
    /// The management software cannot be reached.
    Unreachable,
}

impl DispatcherState {
    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatcherState::Connecting => "Connecting",
            DispatcherState::Ready => "Ready",
            DispatcherState::Degraded => "Degraded",
            DispatcherState::Unreachable => "Unreachable",
        }
    }
}
