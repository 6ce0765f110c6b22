//! `spec.vsphere` of an OSDispatcher: how to reach a vCenter (or a standalone ESXi host) through
//! its vim25 SOAP API, which virtual machines are the hosts, which installer ISOs or templates
//! they may take, and how long an installer may take.
//!
//! Two CEL rules keep a catalogue usable by its strategy, so a dispatcher that names an image
//! without the ISO (or template) its strategy needs is refused by the API server with a 422.
use super::{CredentialsSecretRef, SecretKeyRef};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of a vSphere dispatcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.images.all(i, (has(self.strategy) && self.strategy == 'template') ? has(i.template) : has(i.iso))").message("every image needs `iso` with strategy iso, and `template` with strategy template"))]
#[x_kube(validation = Rule::new("!self.url.startsWith('http://') || (has(self.insecureHttp) && self.insecureHttp)").message("an http:// URL sends the vCenter account in clear text: use https://, or set insecureHttp: true (labs only)"))]
pub struct VsphereSpec {
    /// The SDK URL of vCenter or ESXi, e.g. `https://vcenter.example.net/sdk`.
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"), length(max = 2048))]
    pub url: String,
    /// Accept an `http://` URL (the account crosses the network in clear text; the controller
    /// says so with a Warning Event). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// Secret (in the dispatcher's namespace) holding the vCenter account.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// TLS settings for `https` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<VsphereTls>,
    /// Which virtual machines are hosts.
    #[serde(default)]
    pub vms: VmSelector,
    /// The OS catalogue: image name → installer ISO on a datastore, or VM template.
    #[schemars(length(min = 1, max = 256))]
    pub images: Vec<VsphereImage>,
    /// How a VM is reprovisioned.
    #[serde(default)]
    pub strategy: VsphereStrategy,
    /// An installer that has not called back within this long after the reset fails the
    /// reprovision (default `60m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub callback_timeout: Option<String>,
    /// At most this many SOAP calls in flight to this vCenter at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_connections: Option<i32>,
}

/// TLS settings of a vCenter URL. Without any, the system's roots are trusted.
/// `insecureSkipVerify` with a CA bundle or a thumbprint is refused (a CEL rule, 422).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.insecureSkipVerify) && self.insecureSkipVerify && (has(self.caSecretRef) || has(self.thumbprint)))").message("insecureSkipVerify excludes caSecretRef and thumbprint: trust the CA or the certificate, or (in a lab only) skip verification"))]
pub struct VsphereTls {
    /// Secret holding the PEM CA bundle that signed vCenter's certificate (VMCA's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Trust exactly the certificate with this SHA-256 (or SHA-1) fingerprint, hex with or
    /// without colons, as `govc about.cert` or a browser shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{2}:?){20,32}$"))]
    pub thumbprint: Option<String>,
    /// Accept any certificate. Off by default; only for labs.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Which virtual machines are managed hosts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSelector {
    /// Only these VMs (by name); empty: every VM the account can see (templates excluded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// One entry of the OS catalogue: an installer ISO (strategy `iso`), a template (strategy
/// `template`), or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsphereImage {
    /// The OS name requests ask for.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The installer ISO as a datastore path: `[datastore] folder/file.iso`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\[[^\]]+\] .+$"), length(max = 1024))]
    pub iso: Option<String>,
    /// The name of a VM template whose (first) disk holds the installed OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 80))]
    pub template: Option<String>,
}

/// How a vSphere VM is reprovisioned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VsphereStrategy {
    /// Connect the VM's CD-ROM to the installer ISO, boot from CD-ROM first, reset; done when
    /// the installer calls the provisioning callback back (its URL reaches the guest as the
    /// VM's `guestinfo.osprov.callback`). The CD-ROM and boot order are restored afterwards.
    #[default]
    Iso,
    /// Replace the VM's boot disk by a copy of the template's disk: copy the disk file next to
    /// the VM's, power the VM off, swap the disks in one reconfigure (the old disk file is
    /// deleted), power on. Done when the VM runs on the new disk.
    Template,
}
