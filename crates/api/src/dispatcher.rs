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
    /// Settings of the Redfish adapter (required when `adapter: redfish`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish: Option<RedfishSpec>,
    /// Settings of the libvirt adapter (required when `adapter: libvirt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<super::LibvirtSpec>,
    /// Settings of the vSphere adapter (required when `adapter: vsphere`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsphere: Option<super::VsphereSpec>,
}

fn default_provisioner() -> String {
    super::DEFAULT_PROVISIONER.to_string()
}

impl OSDispatcherSpec {
    /// The plain-HTTP endpoint the adapter in use sends credentials to (allowed only with
    /// `insecureHttp`), if any.
    pub fn plain_http_endpoint(&self) -> Option<&str> {
        let endpoint = match self.adapter {
            AdapterKind::Redfish => self.redfish.as_ref().map(|r| r.endpoint.as_str()),
            AdapterKind::Vsphere => self.vsphere.as_ref().map(|v| v.url.as_str()),
            AdapterKind::Simulator | AdapterKind::Libvirt => None,
        };
        endpoint.filter(|e| e.starts_with("http://"))
    }
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
    /// Every adapter.
    pub const ALL: [AdapterKind; 4] = [
        AdapterKind::Simulator,
        AdapterKind::Redfish,
        AdapterKind::Libvirt,
        AdapterKind::Vsphere,
    ];

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
    /// The URL of a simulator served out of process (`osprov simulate`), where the fleet lives
    /// and outlasts controller restarts. Unset: the fleet lives in the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+/?$"), length(max = 2048))]
    pub endpoint: Option<String>,
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
            endpoint: None,
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

/// How to reach a Redfish service (one BMC, or an aggregator that fronts many systems) and what
/// it may install. A BMC has no OS catalogue of its own, so the admin lists the images here.
/// An `http://` endpoint needs `insecureHttp: true` (a CEL rule, 422): the account would cross
/// the network in clear text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.endpoint.startsWith('http://') || (has(self.insecureHttp) && self.insecureHttp)").message("an http:// endpoint sends the BMC account in clear text: use https://, or set insecureHttp: true (labs only)"))]
pub struct RedfishSpec {
    /// Base URL of the Redfish service, e.g. `https://bmc-17.example.net` (the service root is
    /// `<endpoint>/redfish/v1`).
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: String,
    /// Accept an `http://` endpoint (the account crosses the network in clear text; the
    /// controller says so with a Warning Event). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// Secret (in the dispatcher's namespace) holding the BMC account.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// TLS settings for `https` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedfishTls>,
    /// OS images the hosts behind this service can take: name → ISO URL.
    #[schemars(length(min = 1))]
    pub images: Vec<RedfishImage>,
    /// Systems to manage, by Redfish `Id` or `Name`; empty manages every System.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<String>,
    /// How long after the reset a reprovision may take before it fails for want of a callback
    /// (e.g. `60m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub callback_timeout: Option<String>,
    /// At most this many HTTP requests per second to this service (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: Option<i32>,
    /// At most this many HTTP requests in flight to this service at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_connections: Option<i32>,
    /// How to authenticate: `Auto` (default) opens one Redfish session (`X-Auth-Token`) when the
    /// service root offers a SessionService and uses HTTP basic auth otherwise; `Session` and
    /// `Basic` force one or the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RedfishAuth>,
    /// How a request's configuration reaches the host: `BootIso` (default) boots a
    /// per-operation copy of the installer ISO with the configuration files at its root (one
    /// virtual medium, as Metal3 and Ironic use); `SecondMedium` puts a config drive in the BMC's
    /// USBStick/Floppy device beside the installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_medium: Option<ConfigMedium>,
}

/// Where a Redfish host finds its configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConfigMedium {
    /// A per-operation boot ISO: the installer with `user-data`, `meta-data`, `network-config`
    /// and `osprov-callback` added at its root and the image's `kernelArgs` in its boot menus,
    /// served by the controller from the installer's own URL (which must answer HTTP `Range`).
    #[default]
    BootIso,
    /// A config drive (label `cidata` or `OEMDRV`) in the BMC's second virtual media device.
    SecondMedium,
}

/// How the Redfish adapter authenticates to a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RedfishAuth {
    /// A session where the service root offers a SessionService, basic auth otherwise.
    #[default]
    Auto,
    /// Always a session; a service without a SessionService is a configuration error.
    Session,
    /// HTTP basic auth on every request.
    Basic,
}

/// Where an account (a BMC's, libvirt's) lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the dispatcher's namespace.
    pub name: String,
    /// Key of the user name (default `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// Key of the password (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
}

/// TLS settings of a Redfish endpoint: the CA that signed the BMC's certificate, or the one
/// certificate to trust by its SHA-256 fingerprint (a self-signed BMC certificate, which rustls
/// refuses as a CA when it is marked `CA:TRUE`), or — in a lab — none. Combinations that would
/// silently ignore one setting are refused (CEL rules, 422).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.insecureSkipVerify) && self.insecureSkipVerify && (has(self.caSecretRef) || has(self.fingerprint)))").message("insecureSkipVerify excludes caSecretRef and fingerprint: trust the CA or the certificate, or (in a lab only) skip verification"))]
#[x_kube(validation = Rule::new("!(has(self.caSecretRef) && has(self.fingerprint))").message("caSecretRef and fingerprint exclude each other: trust the CA, or pin the certificate"))]
pub struct RedfishTls {
    /// Secret holding the PEM CA bundle that signed the BMC's certificate; only these CAs are
    /// trusted when set (the system's roots otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex, with or without colons,
    /// as `openssl x509 -noout -fingerprint -sha256` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$"))]
    pub fingerprint: Option<String>,
    /// Accept any certificate. Off by default; only for lab BMCs.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One key of a Secret in the dispatcher's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// Key inside the Secret (default `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One entry of a Redfish dispatcher's OS catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedfishImage {
    /// The OS name requests ask for (e.g. `ubuntu-24.04`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// ISO URL the BMC downloads. `{callbackUrl}`, `{token}` and `{checksum}` are replaced per
    /// request; without any placeholder `osprov_callback=<callback URL>` is appended as a query
    /// parameter.
    #[schemars(regex(pattern = r"^https?://.+$"))]
    pub url: String,
    /// Checksum of the image (`sha256:<hex>`), handed to the image server through `{checksum}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Kernel arguments a per-operation boot ISO adds to the installer's ISOLINUX and GRUB
    /// kernel lines (before a `---`), e.g. `autoinstall ds=nocloud;s=/cdrom/` for Ubuntu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub kernel_args: Option<String>,
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
    /// The value of the `osprov.io/discover` annotation whose discovery has finished: a client
    /// that sets the annotation to a fresh value waits until this field shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_discovery_request: Option<String>,
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
    /// Every state, in lifecycle order.
    pub const ALL: [DispatcherState; 4] = [
        DispatcherState::Connecting,
        DispatcherState::Ready,
        DispatcherState::Degraded,
        DispatcherState::Unreachable,
    ];

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
