//! `OSProvisioningRequest`: "host X must run OS image Y".
//!
//! The spec is the desired assignment; `spec.host` is immutable (a CEL transition rule) while
//! `spec.os` may change, which bumps `metadata.generation` and makes the controller converge again.
//! The status records the phase, conditions `Accepted`/`Progressing`/`Provisioned`, and — before any
//! backend call — the operation token, so a restarted controller never provisions twice.
// kube-derive takes several `printcolumn(...)` attributes of the same shape; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A request that a managed host run a given OS image.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "osprov.io",
    version = "v1alpha1",
    kind = "OSProvisioningRequest",
    namespaced,
    status = "OSProvisioningRequestStatus",
    shortname = "ospr",
    category = "osprov",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "OS", type_ = "string", json_path = ".spec.os"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OSProvisioningRequestSpec {
    /// Name of the ManagedHost (same namespace) to reprovision. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.host is immutable; create a new request for another host"))]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub host: String,
    /// Name of the OS image, from the host's `status.availableOs`.
    #[schemars(length(min = 1, max = 253))]
    pub os: String,
    /// Optional: the OSDispatcher expected to manage the host; the request is rejected if the host
    /// belongs to another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatcher: Option<String>,
    /// How many provisioning attempts before the request ends Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,
    /// cloud-init user-data for the host, from a Secret in the request's namespace (key
    /// `userData` unless `key` says otherwise). Delivered on the operation's config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<ConfigSecretRef>,
    /// cloud-init network-config (version 1 or 2) for the host, from a Secret (key
    /// `networkData` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<ConfigSecretRef>,
    /// Extra meta-data keys (a YAML or JSON mapping), from a Secret (key `metaData` unless
    /// `key` says otherwise). osprov sets `instance-id` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<ConfigSecretRef>,
    /// The host name the installed OS takes (meta-data `local-hostname`, unless the meta-data
    /// Secret sets one). Default: `spec.host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,
    /// The convention of the operation's config drive: `NoCloud` (default; a volume labelled
    /// `cidata` for cloud-init, Ubuntu autoinstall and the cloud images) or `OEMDRV` (a volume
    /// labelled `OEMDRV` whose `ks.cfg` is the user-data, which Anaconda — Fedora, RHEL and its
    /// rebuilds — loads as its kickstart without a boot argument). `OEMDRV` needs `userData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDriveFormat>,
    /// How long one attempt may run, from the reprovision call to the installed OS's report
    /// (e.g. `45m`, `2h`). An attempt still running then is cancelled in the management
    /// software and counts as failed (retried while `maxAttempts` allows). Default: no limit
    /// beyond the dispatcher's own `callbackTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
}

/// The convention of a config drive.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConfigDriveFormat {
    /// cloud-init's NoCloud volume (label `cidata`).
    #[default]
    NoCloud,
    /// Anaconda's kickstart volume (label `OEMDRV`, the kickstart in `ks.cfg`).
    #[serde(rename = "OEMDRV")]
    Oemdrv,
}

impl ConfigDriveFormat {
    /// The name as written in `spec.configDrive`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigDriveFormat::NoCloud => "NoCloud",
            ConfigDriveFormat::Oemdrv => "OEMDRV",
        }
    }
}

/// A key of a Secret in the request's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Progress of a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OSProvisioningRequestStatus {
    /// Pending, Queued, Provisioning, Succeeded, Failed, Rejected or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Machine-readable reason of the current phase (e.g. `HostBusy`, `HostNotManaged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Accepted`, `Progressing` and `Provisioned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The backend operation, recorded before the backend is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Provisioning attempts started so far (for the current generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// When the next attempt may start after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Time>,
    /// When the request reached Succeeded, Failed, Rejected or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Phases of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    /// Not yet looked at, or waiting for the host's dispatcher.
    Pending,
    /// Accepted, waiting for the host or a concurrency slot.
    Queued,
    /// The backend is reprovisioning the host.
    Provisioning,
    /// The host runs the requested OS.
    Succeeded,
    /// Every attempt failed.
    Failed,
    /// The request cannot be carried out (unknown host, OS not offered…).
    Rejected,
    /// The request was deleted before it finished.
    Cancelled,
}

impl Phase {
    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Provisioning => "Provisioning",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Rejected => "Rejected",
            Phase::Cancelled => "Cancelled",
        }
    }

    /// A final phase: nothing more happens for this generation of the request.
    pub fn is_terminal(self) -> bool {
        match self {
            Phase::Succeeded | Phase::Failed | Phase::Rejected | Phase::Cancelled => true,
            Phase::Pending | Phase::Queued | Phase::Provisioning => false,
        }
    }

    /// Every phase, for metrics.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Queued,
        Phase::Provisioning,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Rejected,
        Phase::Cancelled,
    ];
}

/// A backend operation started for a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The dispatcher carrying it out.
    pub dispatcher: String,
    /// The idempotency token handed to the backend: `<request uid>/<generation>/<attempt>`, one per attempt.
    pub token: String,
    /// The OS image being installed.
    pub os: String,
    /// The request generation this operation serves.
    pub generation: i64,
    /// The backend's own operation id, once the backend accepted the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When the token was recorded, just before the backend was called (microsecond precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<MicroTime>,
    /// The operation's record, for adapters that keep one (Redfish, libvirt `iso`, vSphere):
    /// written by the controller once the record exists and before the backend is touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<OperationRecordRef>,
}

/// Which Secret holds an operation's record, and the steps that must never be repeated.
///
/// A record is trusted only when it is this object (same uid). The step marks are written here
/// before the step is sent to the backend, so a record that is deleted, replaced or edited cannot
/// make the controller repeat them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecordRef {
    /// The record Secret's name.
    pub name: String,
    /// The record Secret's uid.
    pub uid: String,
    /// Set before a reset or power-on was requested (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_requested_at: Option<String>,
    /// Set once the image was copied for the host (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_at: Option<String>,
}
