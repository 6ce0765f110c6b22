//! The provisioning callback: `POST /callback/<key>.<secret>`.
//!
//! A BMC cannot tell when an OS install finished, so the image the BMC boots reports it: the
//! Redfish adapter puts a per-request callback URL into the image URL (see `adapter::redfish`),
//! and the installer's last step POSTs `{"status": "succeeded"}` or
//! `{"status": "failed", "message": "..."}` to it. The outcome must be explicit: an empty or
//! unknown body is refused with 400 and changes nothing.
//!
//! The records behind the keys are the dispatchers' [`SecretStore`]s (see `records`): the
//! endpoint finds a key through the [`CallbackHub`], an index of which namespace holds which key
//! kept current by every store, and otherwise asks each store for the one Secret of that name
//! (a `GET`, never a listing), so a Secret planted elsewhere or under a label cannot shadow a
//! record. Only a record the store trusts (anchored in its request's status) is answered. The
//! secret is compared in constant time; the outcome is recorded with optimistic concurrency and
//! announced to the adapters in this process through the hub. Unknown keys answer 404, a wrong
//! secret 401; neither changes anything. Secrets and full tokens are never logged.
use super::records::SecretStore;
use super::Scope;
use crate::adapter::store::{OpStore, Outcome, OutcomeKind, StoreError};
use crate::api::OSDispatcher;
use crate::api::DISPATCHER_LABEL;
use crate::provisioner::keys::DispKey;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use super::records::{secret_name, OPERATION_LABEL, SECRET_TYPE};

/// In-process fan-out of recorded outcomes, and where to look for a key's record.
pub struct CallbackHub {
    reported: broadcast::Sender<String>,
    namespaces: Mutex<HashMap<String, String>>,
    scopes: Mutex<Vec<Weak<Scope>>>,
}

impl Default for CallbackHub {
    fn default() -> Self {
        CallbackHub {
            reported: broadcast::channel(4096).0,
            namespaces: Mutex::new(HashMap::new()),
            scopes: Mutex::new(Vec::new()),
        }
    }
}

impl CallbackHub {
    /// Note that `key`'s record lives in `namespace` (every store does, for each record it
    /// reads or writes).
    pub fn note(&self, key: &str, namespace: &str) {
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), namespace.to_string());
    }

    fn namespace_of(&self, key: &str) -> Option<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The controllers of a leader: their dispatchers say where records may live.
    pub fn add_scope(&self, scope: &Arc<Scope>) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.retain(|w| w.strong_count() > 0);
        scopes.push(Arc::downgrade(scope));
    }

    /// The live scopes of this leader.
    fn scopes(&self) -> Vec<Arc<Scope>> {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Tokens whose outcome was just recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.reported.subscribe()
    }
}

/// What the endpoint needs.
pub struct CallbackState {
    pub hub: Arc<CallbackHub>,
    /// Only a leader whose caches are filled can say a key is unknown; otherwise the answer
    /// is 503 (try again).
    pub health: Arc<super::metrics::Health>,
}

impl CallbackState {
    /// This replica leads: only then does it answer for records (503 otherwise).
    pub(super) fn leading(&self) -> bool {
        self.health
            .leading
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The callback router (`POST /callback/{token}`, `GET /drive/{name}`), each with its body and
/// rate limits.
pub fn router(state: Arc<CallbackState>) -> Router {
    let callbacks = super::callback_server::limited(
        Router::new()
            .route("/callback/{token}", post(callback))
            .with_state(state.clone()),
    );
    let reads = super::callback_server::limited_reads(
        Router::new()
            .route("/drive/{name}", get(super::drive::serve_drive))
            .with_state(state),
    );
    callbacks.merge(reads)
}

/// Serve the callback endpoint (HTTPS when `tls` is given) until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<CallbackState>,
) -> std::io::Result<()> {
    super::callback_server::serve(addr, tls, router(state)).await
}

type Reply = (StatusCode, Json<Value>);

fn reply(code: StatusCode, message: &str) -> Reply {
    (code, Json(json!({ "message": message })))
}

/// What the installer (or the installed OS's first boot) reports: an explicit `status`, an
/// optional message and, optionally, the OS it is (`"os"`: the catalogue's name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Report {
    kind: OutcomeKind,
    message: String,
    os: Option<String>,
}

fn outcome_of(body: &[u8]) -> Result<Report, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "the body must say the outcome: {\"status\": \"succeeded\"} or {\"status\": \"failed\"}"
                .into(),
        );
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let message: String = v["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(1024)
        .collect();
    let os = match &v["os"] {
        Value::Null => None,
        Value::String(s) if !s.is_empty() && s.len() <= 253 => Some(s.clone()),
        _ => return Err("os must be the OS's name (1 to 253 characters)".into()),
    };
    let (kind, message) = match v["status"].as_str() {
        Some("succeeded") => (
            OutcomeKind::Succeeded,
            if message.is_empty() {
                "the installer reported success".into()
            } else {
                message
            },
        ),
        Some("failed") => (
            OutcomeKind::Failed,
            if message.is_empty() {
                "the installer reported a failure".into()
            } else {
                format!("the installer reported a failure: {message}")
            },
        ),
        _ => return Err("status must be \"succeeded\" or \"failed\"".into()),
    };
    Ok(Report { kind, message, os })
}

/// The outcome a report gives an operation that installs `wanted`: a host that says it runs
/// another OS has not been provisioned, whatever its status says.
fn decide(report: &Report, wanted: &str) -> (OutcomeKind, String) {
    match (&report.os, report.kind) {
        (Some(os), OutcomeKind::Succeeded) if os != wanted => (
            OutcomeKind::Failed,
            format!("the host reported that it runs {os}, not the requested {wanted}"),
        ),
        _ => (report.kind, report.message.clone()),
    }
}

pub(super) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// This provisioner's dispatchers in each scope, read from the API (not a cache, so a just
/// restarted leader knows them too), as (scope, namespace, name), the namespace the index names
/// for `key` first.
async fn dispatchers(
    hub: &CallbackHub,
    key: &str,
) -> Result<Vec<(Arc<Scope>, String, String)>, StoreError> {
    let first = hub.namespace_of(key);
    let mut found = Vec::new();
    for scope in hub.scopes() {
        let api: Api<OSDispatcher> = match scope.namespace.as_deref() {
            Some(ns) => Api::namespaced(scope.shared.client.clone(), ns),
            None => Api::all(scope.shared.client.clone()),
        };
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let me = &scope.shared.settings.identifier;
        for d in list.items.into_iter().filter(|d| &d.spec.provisioner == me) {
            if let (Some(ns), Some(name)) = (d.metadata.namespace, d.metadata.name) {
                found.push((scope.clone(), ns, name));
            }
        }
    }
    found.sort_by_key(|(_, ns, _)| Some(ns) != first.as_ref());
    Ok(found)
}

/// The trusted record of `key` and the store of its dispatcher: in each namespace with this
/// provisioner's dispatchers, the one Secret of that name (a `GET`), read through the store of
/// the dispatcher it names.
pub(super) async fn find(
    hub: &CallbackHub,
    key: &str,
) -> Result<Option<(Arc<SecretStore>, crate::adapter::store::OpRecord)>, StoreError> {
    let name = format!("osprov-op-{key}");
    let owned = dispatchers(hub, key).await?;
    let mut looked = std::collections::BTreeSet::new();
    for (scope, ns, _) in &owned {
        if !looked.insert(ns.clone()) {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(scope.shared.client.clone(), ns);
        let found = api
            .get_opt(&name)
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let Some(dispatcher) = found
            .as_ref()
            .and_then(|s| s.labels().get(DISPATCHER_LABEL).cloned())
        else {
            continue;
        };
        if !owned.iter().any(|(_, n, d)| n == ns && *d == dispatcher) {
            continue;
        }
        let key_of = DispKey {
            namespace: ns.clone(),
            name: dispatcher,
        };
        let store = super::redfish::operation_store(&key_of, scope);
        if let Some(rec) = store.find_by_key(key).await? {
            return Ok(Some((store, rec)));
        }
    }
    Ok(None)
}

async fn callback(
    State(state): State<Arc<CallbackState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Reply {
    let Some((key, secret)) = token.split_once('.') else {
        return reply(StatusCode::NOT_FOUND, "unknown callback");
    };
    if !valid_key(key) {
        return reply(StatusCode::NOT_FOUND, "unknown callback");
    }
    let report = match outcome_of(&body) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &e),
    };
    if !state.leading() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader; try again",
        );
    }
    for _ in 0..5 {
        let (store, mut rec) = match find(&state.hub, key).await {
            Ok(Some(found)) => found,
            Ok(None) | Err(StoreError::Lost(_)) => {
                warn!(operation = %key, "callback for an unknown operation refused");
                return reply(StatusCode::NOT_FOUND, "unknown callback");
            }
            Err(e) => {
                warn!(error = %e, "callback could not read its record");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        };
        if !bool::from(rec.secret.as_bytes().ct_eq(secret.as_bytes())) {
            warn!(operation = %key, "callback with a wrong secret refused");
            return reply(StatusCode::UNAUTHORIZED, "wrong callback token");
        }
        let (kind, message) = decide(&report, &rec.os);
        if let Some(o) = rec.outcome.as_ref() {
            return if o.kind == kind {
                reply(
                    StatusCode::OK,
                    &format!("already recorded: {}", o.kind.as_str()),
                )
            } else {
                reply(
                    StatusCode::CONFLICT,
                    &format!("a different outcome was recorded: {}", o.kind.as_str()),
                )
            };
        }
        rec.outcome = Some(Outcome {
            kind,
            message: message.clone(),
            at: Timestamp::now(),
        });
        match store.update(&rec).await {
            Ok(_) => {
                info!(operation = %key, outcome = kind.as_str(), "installer callback recorded");
                let _ = state.hub.reported.send(rec.token.clone());
                return reply(StatusCode::OK, &format!("recorded: {}", kind.as_str()));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => {
                warn!(error = %e, "callback could not record its outcome");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        }
    }
    reply(StatusCode::SERVICE_UNAVAILABLE, "try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_outcomes() {
        assert!(outcome_of(b"").is_err(), "an empty body is no outcome");
        assert!(outcome_of(b"{}").is_err());
        assert_eq!(
            outcome_of(br#"{"status":"failed","message":"disk"}"#),
            Ok(Report {
                kind: OutcomeKind::Failed,
                message: "the installer reported a failure: disk".into(),
                os: None,
            })
        );
        assert!(outcome_of(br#"{"status":"maybe"}"#).is_err());
        assert!(outcome_of(br#"{"status":"succeeded","os":7}"#).is_err());
        assert!(outcome_of(br#"{"status":"succeeded","os":""}"#).is_err());
        assert!(outcome_of(b"nope").is_err());
        assert_eq!(secret_name("Ab/1/0"), "osprov-op-ab-1-0");
    }

    #[test]
    fn a_host_that_reports_another_os_has_not_been_provisioned() {
        let report = |body: &[u8]| outcome_of(body).expect("a report");
        let mine = report(br#"{"status":"succeeded","os":"os-b"}"#);
        assert_eq!(decide(&mine, "os-b").0, OutcomeKind::Succeeded);
        let (kind, message) = decide(&mine, "os-c");
        assert_eq!(kind, OutcomeKind::Failed);
        assert_eq!(
            message,
            "the host reported that it runs os-b, not the requested os-c"
        );
        // Without an OS, or when failing anyway, the status decides.
        assert_eq!(
            decide(&report(br#"{"status":"succeeded"}"#), "x").0,
            OutcomeKind::Succeeded
        );
        let failed = report(br#"{"status":"failed","os":"os-b"}"#);
        assert_eq!(decide(&failed, "os-c").0, OutcomeKind::Failed);
    }
}
