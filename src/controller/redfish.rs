//! Building a Redfish adapter from an OSDispatcher: the spec plus the Secrets it names.
//!
//! Credentials come from `spec.redfish.credentialsSecretRef`, the CA bundle from
//! `spec.redfish.tls.caSecretRef`, both in the dispatcher's namespace. Their resourceVersions go
//! into the session fingerprint, so fixing a Secret reconnects the dispatcher. Secret contents are
//! never logged nor put into a condition message.
use super::records::{RequestLookup, SecretStore};
use super::Scope;
use crate::adapter::redfish::client::ClientConfig;
use crate::adapter::redfish::{RedfishAdapter, RedfishConfig};
use crate::adapter::{Adapter, AdapterError};
use crate::api::{CredentialsSecretRef, OSDispatcher};
use crate::provisioner::keys::DispKey;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

// Defaults of the `spec.redfish` knobs a dispatcher may leave out, and per-call limits.
/// A provisioning callback not received within this ends the attempt as failed (every
/// installer-driven adapter's default for `callbackTimeout`).
const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(3600);
/// Calls per second to one BMC: below what iDRAC/iLO throttle at.
const DEFAULT_REQUESTS_PER_SECOND: u32 = 10;
/// Concurrent connections to one BMC (BMCs serve few at once).
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// One call to a BMC, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one idempotent call before it counts as failed (retries back off).
const CALL_ATTEMPTS: u32 = 4;

/// The Secrets' contents a Redfish adapter needs, and a version string for the fingerprint.
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

pub(super) async fn secret_value(
    api: &Api<Secret>,
    ns: &str,
    name: &str,
    key: &str,
    what: &str,
) -> Result<(Vec<u8>, String), AdapterError> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| AdapterError::Unreachable(format!("reading Secret {ns}/{name}: {e}")))?
        .ok_or_else(|| AdapterError::Config(format!("{what} Secret {ns}/{name} does not exist")))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.clone().into_bytes())
        })
        .ok_or_else(|| {
            AdapterError::Config(format!("{what} Secret {ns}/{name} has no key {key:?}"))
        })?;
    Ok((value, secret.resource_version().unwrap_or_default()))
}

/// The user name, password and the Secret's resourceVersion of an account Secret.
pub(super) async fn account(
    api: &Api<Secret>,
    ns: &str,
    creds: &CredentialsSecretRef,
) -> Result<(String, String, String), AdapterError> {
    let (user, version) = secret_value(
        api,
        ns,
        &creds.name,
        creds.username_key.as_deref().unwrap_or("username"),
        "credentials",
    )
    .await?;
    let (pass, _) = secret_value(
        api,
        ns,
        &creds.name,
        creds.password_key.as_deref().unwrap_or("password"),
        "credentials",
    )
    .await?;
    let to_text = |b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| {
            AdapterError::Config(format!(
                "credentials Secret {ns}/{} is not UTF-8",
                creds.name
            ))
        })
    };
    Ok((to_text(user)?, to_text(pass)?, version))
}

/// Read the Secrets a Redfish dispatcher names.
pub async fn inputs(scope: &Scope, d: &OSDispatcher, ns: &str) -> Result<Inputs, AdapterError> {
    let spec = d
        .spec
        .redfish
        .as_ref()
        .ok_or_else(|| AdapterError::Config("adapter redfish needs spec.redfish".into()))?;
    let api: Api<Secret> = Api::namespaced(scope.shared.client.clone(), ns);
    let (username, password, v1) = account(&api, ns, &spec.credentials_secret_ref).await?;
    let (ca_pem, v2) = match spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        Some(r) => {
            let (pem, v) = secret_value(
                &api,
                ns,
                &r.name,
                r.key.as_deref().unwrap_or("ca.crt"),
                "TLS CA",
            )
            .await?;
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

/// A spec's `callbackTimeout`, or the default when it is not set.
pub(super) fn callback_timeout(value: Option<&str>) -> Result<Duration, AdapterError> {
    match value {
        Some(s) => super::settings::parse_duration(s).map_err(AdapterError::Config),
        None => Ok(DEFAULT_CALLBACK_TIMEOUT),
    }
}

/// The base URL of the callback endpoint as hosts reach it.
pub fn callback_base(scope: &Scope) -> Option<String> {
    let s = &scope.shared.settings;
    if let Some(url) = s.callback_url.as_deref().filter(|u| !u.is_empty()) {
        return Some(url.trim_end_matches('/').to_string());
    }
    let addr = s.callback_addr.0?;
    let scheme = if s.callback_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    (!addr.ip().is_unspecified()).then(|| format!("{scheme}://{addr}"))
}

/// The operation store of a dispatcher: Secrets in its namespace, anchored in the status of the
/// request whose token each records (see `records`).
pub fn operation_store(key: &DispKey, scope: &Scope) -> Arc<SecretStore> {
    let requests = scope.requests.clone();
    let ns = key.namespace.clone();
    let lookup: RequestLookup = Arc::new(move |uid: &str| {
        requests.state().into_iter().find(|r| {
            r.namespace().as_deref() == Some(ns.as_str()) && r.uid().as_deref() == Some(uid)
        })
    });
    SecretStore::new(
        scope.shared.client.clone(),
        &key.namespace,
        &key.name,
        scope.shared.callbacks.clone(),
        lookup,
    )
}

/// Build the adapter of a Redfish dispatcher.
pub fn build(
    key: &DispKey,
    d: &OSDispatcher,
    scope: &Scope,
    inputs: Inputs,
) -> Result<Arc<dyn Adapter>, AdapterError> {
    let spec = d
        .spec
        .redfish
        .as_ref()
        .ok_or_else(|| AdapterError::Config("adapter redfish needs spec.redfish".into()))?;
    let callback_timeout = callback_timeout(spec.callback_timeout.as_deref())?;
    let store = operation_store(key, scope);
    let cfg = RedfishConfig {
        client: ClientConfig {
            endpoint: spec.endpoint.clone(),
            username: inputs.username,
            password: inputs.password,
            ca_pem: inputs.ca_pem,
            fingerprint: spec.tls.as_ref().and_then(|t| t.fingerprint.clone()),
            insecure_skip_verify: spec.tls.as_ref().is_some_and(|t| t.insecure_skip_verify),
            requests_per_second: spec
                .requests_per_second
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(DEFAULT_REQUESTS_PER_SECOND),
            max_connections: spec
                .max_connections
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            timeout: CALL_TIMEOUT,
            attempts: CALL_ATTEMPTS,
            auth: spec.auth.unwrap_or_default(),
        },
        images: spec.images.clone(),
        systems: spec.systems.clone(),
        callback_timeout,
        callback_base: callback_base(scope),
        config_medium: spec.config_medium.unwrap_or_default(),
    };
    Ok(Arc::new(RedfishAdapter::new(cfg, store)?))
}
