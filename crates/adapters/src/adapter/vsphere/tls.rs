//! The HTTP client of a vSphere dispatcher, with its TLS trust: a CA bundle (VMCA's root), a
//! pinned certificate thumbprint (see `adapter::tls`), or — for labs only — no verification.
use crate::adapter::tls::pinned_config;
use std::time::Duration;

/// How to trust vCenter's certificate.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub ca_pem: Option<Vec<u8>>,
    /// Hex, with or without colons.
    pub thumbprint: Option<String>,
    pub insecure_skip_verify: bool,
}

/// The HTTP client for one vCenter.
pub fn http_client(trust: &Trust, connections: usize) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .connect_timeout(Duration::from_secs(10));
    if let Some(tp) = trust.thumbprint.as_deref() {
        builder = builder.use_preconfigured_tls(pinned_config(tp, "vCenter")?);
    } else if let Some(pem) = trust.ca_pem.as_deref() {
        builder = builder.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the TLS CA bundle is not PEM: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if trust.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| e.to_string())
}
