//! `spec.libvirt` of an OSDispatcher: how to reach a libvirt daemon (KVM/QEMU or Xen, local or
//! remote), which domains are the hosts, where the OS images are, and how a domain is
//! reprovisioned.
use super::CredentialsSecretRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of a libvirt dispatcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LibvirtSpec {
    /// The libvirt connection URI: `qemu:///system`, `qemu:///session`, `qemu+ssh://user@host/system`,
    /// `qemu+tls://host/system`, `xen:///system`, or `test:///<node.xml>` (libvirt's test driver).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9+]*://.*$"), length(max = 2048))]
    pub uri: String,
    /// Secret with the user name and password libvirt asks for (SASL, or the test driver's
    /// `<auth>`); omit for transports that authenticate otherwise (unix socket permissions, an SSH
    /// agent or key, a TLS client certificate configured for libvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Which domains are hosts.
    #[serde(default)]
    pub domains: DomainSelector,
    /// The storage pool holding the OS image volumes.
    #[schemars(length(min = 1, max = 253))]
    pub image_pool: String,
    /// The OS catalogue: image name → volume of `imagePool`. Empty: every volume of the pool is an
    /// image, named after the volume without its extension (`debian-12.qcow2` → `debian-12`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LibvirtImage>,
    /// How a domain is reprovisioned.
    #[serde(default)]
    pub strategy: LibvirtStrategy,
    /// Target device of the root disk (e.g. `vda`); default: the domain's first disk device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub root_disk: Option<String>,
    /// `iso` strategy: an installer that has not called back within this long after the reset
    /// fails the reprovision (default `60m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub callback_timeout: Option<String>,
}

/// Which domains of the connection are managed hosts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSelector {
    /// Only these domains (by name); empty: every domain (subject to `labelled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Only domains whose XML carries osprov's metadata element
    /// (`<metadata><osprov:host xmlns:osprov="https://osprov.io/libvirt/v1"/></metadata>`).
    #[serde(default)]
    pub labelled: bool,
}

/// One entry of the OS catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LibvirtImage {
    /// The OS name requests ask for.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The volume of `imagePool` holding it.
    #[schemars(length(min = 1, max = 253))]
    pub volume: String,
}

/// How a libvirt domain is reprovisioned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LibvirtStrategy {
    /// Power the domain off, replace its root disk by a fresh clone of the image volume, start
    /// it; done when it runs.
    #[default]
    Image,
    /// Attach the image volume (an installer ISO) as the domain's CD-ROM, boot from it first,
    /// and power-cycle the domain; done when the installer calls the provisioning callback back
    /// (its URL reaches the guest as the SMBIOS OEM string
    /// `io.systemd.credential:osprov.callback=<url>`). The CD-ROM and boot order are restored
    /// afterwards.
    Iso,
}
