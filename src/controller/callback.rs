//! The provisioning callback: `POST /callback/<key>.<secret>`, and the Secrets behind it.
//!
//! A BMC cannot tell when an OS install finished, so the image the BMC boots reports it: the
//! Redfish adapter puts a per-request callback URL into the image URL (see `adapter::redfish`),
//! and the installer's last step POSTs `{"status": "succeeded"}` or
//! `{"status": "failed", "message": "..."}` (an empty body means success) to it.
//!
//! Each operation's record lives in a Secret `osprov-op-<key>` (type `osprov.io/operation`) in
//! the request's namespace, owned by the request so it is garbage-collected with it. It holds the
//! callback secret, the adapter's progress (`resetRequestedAt`, …) and the reported outcome, so a
//! controller restart after the callback but before the request's status was written loses
//! nothing. The endpoint checks the secret in constant time, records the outcome in the Secret
//! (optimistic concurrency on its resourceVersion), and tells the adapters in this process through
//! the [`CallbackHub`] so the request completes at once. Unknown keys answer 404, a wrong secret
//! 401; neither changes anything. Secrets and full tokens are never logged.
use crate::adapter::store::{token_key, OpRecord, OpStore, Outcome, OutcomeKind, StoreError};
use crate::api::DISPATCHER_LABEL;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Label carrying the operation key on its Secret.
pub const OPERATION_LABEL: &str = "osprov.io/operation";
/// Type of the operation Secrets.
pub const SECRET_TYPE: &str = "osprov.io/operation";

/// Name of the Secret of a token.
pub fn secret_name(token: &str) -> String {
    format!("osprov-op-{}", token_key(token))
}

/// In-process fan-out of recorded outcomes, and where each operation's Secret lives.
pub struct CallbackHub {
    reported: broadcast::Sender<String>,
    namespaces: Mutex<HashMap<String, String>>,
}

impl Default for CallbackHub {
    fn default() -> Self {
        CallbackHub {
            reported: broadcast::channel(4096).0,
            namespaces: Mutex::new(HashMap::new()),
        }
    }
}

impl CallbackHub {
    fn note(&self, key: &str, namespace: &str) {
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
}

/// Resolves a request UID to an owner reference for the operation Secret.
pub type OwnerLookup = Arc<dyn Fn(&str) -> Option<OwnerReference> + Send + Sync>;

/// [`OpStore`] over Secrets of one dispatcher's namespace.
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    dispatcher: String,
    hub: Arc<CallbackHub>,
    owner: OwnerLookup,
}

impl SecretStore {
    pub fn new(
        client: Client,
        namespace: &str,
        dispatcher: &str,
        hub: Arc<CallbackHub>,
        owner: OwnerLookup,
    ) -> Self {
        SecretStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            dispatcher: dispatcher.to_string(),
            hub,
            owner,
        }
    }

    fn to_secret(&self, rec: &OpRecord) -> Secret {
        let key = token_key(&rec.token);
        let uid = rec.token.split('/').next().unwrap_or(&rec.token);
        Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&rec.token)),
                namespace: Some(self.namespace.clone()),
                resource_version: rec.version.clone(),
                labels: Some(BTreeMap::from([
                    (OPERATION_LABEL.to_string(), key),
                    (DISPATCHER_LABEL.to_string(), self.dispatcher.clone()),
                ])),
                owner_references: (self.owner)(uid).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(
                rec.to_fields()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            type_: Some(SECRET_TYPE.to_string()),
            ..Default::default()
        }
    }

    fn record_of(&self, s: &Secret) -> Option<OpRecord> {
        let rec = parse(s)?;
        self.hub.note(&token_key(&rec.token), &self.namespace);
        Some(rec)
    }
}

fn parse(s: &Secret) -> Option<OpRecord> {
    let fields: BTreeMap<String, String> = s
        .data
        .as_ref()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    OpRecord::from_fields(&fields, s.metadata.resource_version.clone())
}

fn other(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
        e => StoreError::Other(e.to_string()),
    }
}

#[async_trait::async_trait]
impl OpStore for SecretStore {
    async fn get(&self, token: &str) -> Result<Option<OpRecord>, StoreError> {
        let s = self.api.get_opt(&secret_name(token)).await.map_err(other)?;
        Ok(s.as_ref().and_then(|s| self.record_of(s)))
    }

    async fn create(&self, rec: OpRecord) -> Result<OpRecord, StoreError> {
        let mut secret = self.to_secret(&rec);
        secret.metadata.resource_version = None;
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(s) => self
                .record_of(&s)
                .ok_or_else(|| StoreError::Other("created Secret does not parse".into())),
            Err(kube::Error::Api(s)) if s.code == 409 => self
                .get(&rec.token)
                .await?
                .ok_or_else(|| StoreError::Other("Secret vanished after a conflict".into())),
            Err(e) => Err(other(e)),
        }
    }

    async fn update(&self, rec: &OpRecord) -> Result<OpRecord, StoreError> {
        let s = self
            .api
            .replace(
                &secret_name(&rec.token),
                &PostParams::default(),
                &self.to_secret(rec),
            )
            .await
            .map_err(other)?;
        self.record_of(&s)
            .ok_or_else(|| StoreError::Other("updated Secret does not parse".into()))
    }

    async fn list(&self) -> Result<Vec<OpRecord>, StoreError> {
        let lp = ListParams::default().labels(&format!("{DISPATCHER_LABEL}={}", self.dispatcher));
        let list = self.api.list(&lp).await.map_err(other)?;
        Ok(list
            .items
            .iter()
            .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
            .filter_map(|s| self.record_of(s))
            .collect())
    }

    fn reported(&self) -> broadcast::Receiver<String> {
        self.hub.reported.subscribe()
    }
}

/// What the endpoint needs.
pub struct CallbackState {
    pub client: Client,
    pub hub: Arc<CallbackHub>,
    /// Namespaces to look in when the hub does not know a key; empty means all.
    pub namespaces: Vec<String>,
}

/// The callback router (`POST /callback/{token}`).
pub fn router(state: Arc<CallbackState>) -> Router {
    Router::new()
        .route("/callback/{token}", post(callback))
        .with_state(state)
}

/// Serve the callback endpoint until the task is dropped.
pub async fn serve(addr: SocketAddr, state: Arc<CallbackState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "provisioning callback endpoint listening");
    axum::serve(listener, router(state)).await
}

type Reply = (StatusCode, Json<Value>);

fn reply(code: StatusCode, message: &str) -> Reply {
    (code, Json(json!({ "message": message })))
}

async fn find(state: &CallbackState, key: &str) -> Result<Option<Secret>, kube::Error> {
    let name = format!("osprov-op-{key}");
    if let Some(ns) = state.hub.namespace_of(key) {
        let api: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
        if let Some(s) = api.get_opt(&name).await? {
            return Ok(Some(s));
        }
    }
    let lp = ListParams::default().labels(&format!("{OPERATION_LABEL}={key}"));
    let apis: Vec<Api<Secret>> = if state.namespaces.is_empty() {
        vec![Api::all(state.client.clone())]
    } else {
        state
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(state.client.clone(), ns))
            .collect()
    };
    for api in apis {
        let found = api.list(&lp).await?.items.into_iter().find(|s| {
            s.metadata.name.as_deref() == Some(name.as_str())
                && s.type_.as_deref() == Some(SECRET_TYPE)
        });
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// What the installer reports.
fn outcome_of(body: &[u8]) -> Result<(OutcomeKind, String), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((
            OutcomeKind::Succeeded,
            "the installer reported success".into(),
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let message: String = v["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(1024)
        .collect();
    match v["status"].as_str() {
        Some("succeeded") => Ok((
            OutcomeKind::Succeeded,
            if message.is_empty() {
                "the installer reported success".into()
            } else {
                message
            },
        )),
        Some("failed") => Ok((
            OutcomeKind::Failed,
            if message.is_empty() {
                "the installer reported a failure".into()
            } else {
                format!("the installer reported a failure: {message}")
            },
        )),
        _ => Err("status must be \"succeeded\" or \"failed\"".into()),
    }
}

async fn callback(
    State(state): State<Arc<CallbackState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Reply {
    let Some((key, secret)) = token.split_once('.') else {
        return reply(StatusCode::NOT_FOUND, "unknown callback");
    };
    let valid_key = !key.is_empty()
        && key.len() <= 200
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_key {
        return reply(StatusCode::NOT_FOUND, "unknown callback");
    }
    let (kind, message) = match outcome_of(&body) {
        Ok(o) => o,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &e),
    };
    for _ in 0..5 {
        let secret_obj = match find(&state, key).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                warn!(operation = %key, "callback for an unknown operation refused");
                return reply(StatusCode::NOT_FOUND, "unknown callback");
            }
            Err(e) => {
                warn!(error = %e, "callback could not read its Secret");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        };
        let Some(mut rec) = parse(&secret_obj) else {
            return reply(StatusCode::NOT_FOUND, "unknown callback");
        };
        if !bool::from(rec.secret.as_bytes().ct_eq(secret.as_bytes())) {
            warn!(operation = %key, "callback with a wrong secret refused");
            return reply(StatusCode::UNAUTHORIZED, "wrong callback token");
        }
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
        let ns = secret_obj.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
        let mut updated = secret_obj.clone();
        updated.data = Some(
            rec.to_fields()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        );
        updated.metadata.managed_fields = None;
        let name = updated.metadata.name.clone().unwrap_or_default();
        match api.replace(&name, &PostParams::default(), &updated).await {
            Ok(_) => {
                info!(operation = %key, outcome = kind.as_str(), "installer callback recorded");
                state.hub.note(key, &ns);
                let _ = state.hub.reported.send(rec.token.clone());
                return reply(StatusCode::OK, &format!("recorded: {}", kind.as_str()));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
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
        assert_eq!(outcome_of(b"").map(|o| o.0), Ok(OutcomeKind::Succeeded));
        assert_eq!(
            outcome_of(br#"{"status":"failed","message":"disk"}"#),
            Ok((
                OutcomeKind::Failed,
                "the installer reported a failure: disk".into()
            ))
        );
        assert!(outcome_of(br#"{"status":"maybe"}"#).is_err());
        assert!(outcome_of(b"nope").is_err());
        assert_eq!(secret_name("Ab/1/0"), "osprov-op-ab-1-0");
    }
}
