//! Operation records as Secrets, trusted only when the request's status vouches for them.
//!
//! An installer-driven adapter (Redfish virtual media, libvirt `iso`, vSphere) keeps one
//! [`OpRecord`] per token: the callback secret, its progress and the installer's outcome. Here
//! each record is a Secret `osprov-op-<key>` (type `osprov.io/operation`) in the request's
//! namespace, and the request's own status is the anchor that makes losing or forging one
//! harmless:
//!
//! - **Created before anything is touched, anchored before anything is touched.** [`OpStore::create`]
//!   writes the Secret, then records its name and uid in `status.operation.record` (a status
//!   `PUT` with the request's resourceVersion as precondition). Adapters touch the backend only
//!   after `create` returned, so a token with no anchor provably touched nothing, and an
//!   unanchored Secret (a crash between the two writes, or one planted in advance) is
//!   overwritten with a fresh record before it is anchored.
//! - **Steps that must not repeat are written to the anchor first.** When an update sets or
//!   clears `resetRequestedAt` or `copiedAt`, the anchor gets it before the Secret does, and reads
//!   take the union of both, so editing the Secret cannot make a reset look unsent.
//! - **Trusted only if it is the anchored object.** Reading the current operation's record checks
//!   the Secret against the anchor: missing, or another uid (deleted and re-created), is
//!   [`StoreError::Lost`], which ends the attempt (`OperationRecordLost`) instead of starting it
//!   again.
//! - **Kept until the request is gone.** Each record carries the finalizer
//!   [`RECORD_FINALIZER`], so a prune or a clean-up only marks it for deletion while it is in use;
//!   [`release`] removes the finalizer and the Secret when the request's own finalizer runs.
//!
//! Records of other tokens (older attempts, requests that are gone) are read as stored: nothing
//! is ever reprovisioned for them, they only help finish and clean up.
use super::callback::CallbackHub;
use crate::adapter::store::{token_key, OpRecord, OpStore, StoreError};
use crate::api::{OSProvisioningRequest, OperationRecordRef, DISPATCHER_LABEL, FIELD_MANAGER};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Label carrying the operation key on its Secret.
pub const OPERATION_LABEL: &str = "osprov.io/operation";
/// Label carrying the request's uid on its records (for [`release`]).
pub const REQUEST_LABEL: &str = "osprov.io/request-uid";
/// Type of the operation Secrets.
pub const SECRET_TYPE: &str = "osprov.io/operation";
/// Keeps a record until the controller has finished with its request.
pub const RECORD_FINALIZER: &str = "osprov.io/operation-record";

/// Name of the Secret of a token.
pub fn secret_name(token: &str) -> String {
    format!("osprov-op-{}", token_key(token))
}

fn uid_of(token: &str) -> &str {
    token.split('/').next().unwrap_or(token)
}

/// Finds the live request (by uid) of a token in the controller's cache.
pub type RequestLookup = Arc<dyn Fn(&str) -> Option<Arc<OSProvisioningRequest>> + Send + Sync>;

/// [`OpStore`] over Secrets of one dispatcher's namespace, anchored in the requests' status.
pub struct SecretStore {
    secrets: Api<Secret>,
    requests: Api<OSProvisioningRequest>,
    namespace: String,
    dispatcher: String,
    hub: Arc<CallbackHub>,
    lookup: RequestLookup,
}

/// The request's operation, when `token` is the current one.
fn current<'a>(req: &'a OSProvisioningRequest, token: &str) -> Option<&'a crate::api::Operation> {
    req.status
        .as_ref()?
        .operation
        .as_ref()
        .filter(|op| op.token == token)
}

/// Parse a record Secret.
pub fn parse(s: &Secret) -> Option<OpRecord> {
    let fields: BTreeMap<String, String> = s
        .data
        .as_ref()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    OpRecord::from_fields(&fields, s.metadata.resource_version.clone())
}

fn api_err(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
        e => StoreError::Other(e.to_string()),
    }
}

/// A record as a Secret's `data`.
fn data_of(rec: &OpRecord) -> BTreeMap<String, ByteString> {
    rec.to_fields()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

fn stamp(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// The record with the anchor's step marks added (a mark in either place counts).
fn merged(mut rec: OpRecord, anchor: &OperationRecordRef) -> OpRecord {
    let parse = |s: &Option<String>| s.as_deref().and_then(|v| v.parse::<Timestamp>().ok());
    rec.reset_requested_at = rec
        .reset_requested_at
        .or_else(|| parse(&anchor.reset_requested_at));
    rec.copied_at = rec.copied_at.or_else(|| parse(&anchor.copied_at));
    rec
}

/// Decide whether a current operation's Secret is its record.
pub fn trusted(
    anchor: Option<&OperationRecordRef>,
    secret: Option<&Secret>,
) -> Result<Option<OpRecord>, StoreError> {
    let Some(a) = anchor else {
        // Never anchored: nothing was touched for this token, and an unanchored Secret is not
        // the controller's record.
        return Ok(None);
    };
    let Some(s) = secret else {
        return Err(StoreError::Lost(format!(
            "the operation record Secret {} was deleted",
            a.name
        )));
    };
    if s.metadata.uid.as_deref() != Some(a.uid.as_str()) {
        return Err(StoreError::Lost(format!(
            "the operation record Secret {} was replaced by another object",
            a.name
        )));
    }
    let rec = parse(s).ok_or_else(|| {
        StoreError::Lost(format!(
            "the operation record Secret {} was altered and no longer reads as a record",
            a.name
        ))
    })?;
    Ok(Some(merged(rec, a)))
}

impl SecretStore {
    pub fn new(
        client: Client,
        namespace: &str,
        dispatcher: &str,
        hub: Arc<CallbackHub>,
        lookup: RequestLookup,
    ) -> Arc<Self> {
        Arc::new(SecretStore {
            secrets: Api::namespaced(client.clone(), namespace),
            requests: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            dispatcher: dispatcher.to_string(),
            hub,
            lookup,
        })
    }

    fn owner(&self, req: &OSProvisioningRequest) -> Option<OwnerReference> {
        use kube::Resource;
        req.controller_owner_ref(&()).map(|mut o| {
            // The request does not control the Secret's lifecycle beyond garbage collection.
            o.controller = Some(false);
            o.block_owner_deletion = None;
            o
        })
    }

    fn to_secret(&self, rec: &OpRecord, req: Option<&OSProvisioningRequest>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&rec.token)),
                namespace: Some(self.namespace.clone()),
                resource_version: rec.version.clone(),
                labels: Some(BTreeMap::from([
                    (OPERATION_LABEL.to_string(), token_key(&rec.token)),
                    (DISPATCHER_LABEL.to_string(), self.dispatcher.clone()),
                    (REQUEST_LABEL.to_string(), uid_of(&rec.token).to_string()),
                ])),
                owner_references: req.and_then(|r| self.owner(r)).map(|o| vec![o]),
                finalizers: Some(vec![RECORD_FINALIZER.to_string()]),
                ..Default::default()
            },
            data: Some(data_of(rec)),
            type_: Some(SECRET_TYPE.to_string()),
            ..Default::default()
        }
    }

    fn note(&self, rec: &OpRecord) {
        self.hub.note(&token_key(&rec.token), &self.namespace);
    }

    /// The trusted record whose key is `key`, if this store keeps it: the one Secret of that
    /// name, of this dispatcher, read as [`OpStore::get`] reads it.
    pub async fn find_by_key(&self, key: &str) -> Result<Option<OpRecord>, StoreError> {
        let name = format!("osprov-op-{key}");
        let Some(s) = self.secrets.get_opt(&name).await.map_err(api_err)? else {
            return Ok(None);
        };
        let ours = s.type_.as_deref() == Some(SECRET_TYPE)
            && s.labels().get(DISPATCHER_LABEL) == Some(&self.dispatcher);
        let Some(rec) = parse(&s).filter(|r| ours && token_key(&r.token) == key) else {
            return Ok(None);
        };
        // The request by the record's owner reference when the cache does not know it yet (a
        // leader just started): the uid decides, so a wrong name finds nothing.
        let uid = uid_of(&rec.token);
        let hint = s
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.uid == uid)
            .map(|o| o.name.clone());
        let Some(req) = self.request_named(&rec.token, hint).await? else {
            // No live request: nothing to report to.
            return Ok(None);
        };
        match current(&req, &rec.token) {
            Some(op) => trusted(op.record.as_ref(), Some(&s)),
            // An older attempt of a live request: as stored (its outcome changes nothing).
            None => Ok(Some(rec)),
        }
    }

    /// The live request of `token`, read from the API server (not a cache: trust is decided
    /// from it).
    async fn request(&self, token: &str) -> Result<Option<OSProvisioningRequest>, StoreError> {
        self.request_named(token, None).await
    }

    /// [`Self::request`], trying `hint` as its name when the cache does not know the uid.
    async fn request_named(
        &self,
        token: &str,
        hint: Option<String>,
    ) -> Result<Option<OSProvisioningRequest>, StoreError> {
        let uid = uid_of(token);
        let Some(name) = (self.lookup)(uid).map(|r| r.name_any()).or(hint) else {
            return Ok(None);
        };
        let fresh = self.requests.get_opt(&name).await.map_err(api_err)?;
        Ok(fresh.filter(|r| r.metadata.uid.as_deref() == Some(uid)))
    }

    /// Change the anchor of `token` on its request, with the request's resourceVersion as the
    /// precondition; `Lost` when the request no longer has this token anchored.
    async fn anchor(
        &self,
        token: &str,
        first: Option<OSProvisioningRequest>,
        f: impl Fn(&mut Option<OperationRecordRef>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut req = first;
        for _ in 0..5 {
            let mut r = match req.take() {
                Some(r) => r,
                None => self
                    .request(token)
                    .await?
                    .ok_or_else(|| StoreError::Other(format!("the request of {token} is gone")))?,
            };
            let Some(op) = r
                .status
                .as_mut()
                .and_then(|s| s.operation.as_mut())
                .filter(|op| op.token == token)
            else {
                return Err(StoreError::Other(format!(
                    "{token} is no longer the request's current operation"
                )));
            };
            f(&mut op.record)?;
            r.metadata.managed_fields = None;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match self.requests.replace_status(&r.name_any(), &pp, &r).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(StoreError::Other(format!(
            "the request of {token} kept changing under osprov"
        )))
    }

    /// Write `rec` as a fresh record over whatever Secret holds its name (none is anchored).
    async fn write_fresh(
        &self,
        rec: &OpRecord,
        req: &OSProvisioningRequest,
    ) -> Result<Secret, StoreError> {
        let mut secret = self.to_secret(rec, Some(req));
        secret.metadata.resource_version = None;
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(s) => return Ok(s),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_err(e)),
        }
        let existing = self
            .secrets
            .get_opt(&secret_name(&rec.token))
            .await
            .map_err(api_err)?
            .ok_or(StoreError::Conflict)?;
        secret.metadata.resource_version = existing.metadata.resource_version;
        self.secrets
            .replace(&secret_name(&rec.token), &PostParams::default(), &secret)
            .await
            .map_err(api_err)
    }
}

#[async_trait::async_trait]
impl OpStore for SecretStore {
    async fn get(&self, token: &str) -> Result<Option<OpRecord>, StoreError> {
        let secret = self
            .secrets
            .get_opt(&secret_name(token))
            .await
            .map_err(api_err)?;
        let req = self.request(token).await?;
        let rec = match req.as_ref().and_then(|r| current(r, token)) {
            Some(op) => trusted(op.record.as_ref(), secret.as_ref())?,
            // Not the current operation of a live request: as stored.
            None => secret.as_ref().and_then(parse),
        };
        if let Some(r) = &rec {
            self.note(r);
        }
        Ok(rec)
    }

    async fn create(&self, rec: OpRecord) -> Result<OpRecord, StoreError> {
        let token = rec.token.clone();
        let req = self
            .request(&token)
            .await?
            .ok_or_else(|| StoreError::Other(format!("the request of {token} is gone")))?;
        let op = current(&req, &token).ok_or_else(|| {
            StoreError::Other(format!("{token} is not the request's current operation"))
        })?;
        if let Some(a) = op.record.clone() {
            let secret = self
                .secrets
                .get_opt(&secret_name(&token))
                .await
                .map_err(api_err)?;
            let found = trusted(Some(&a), secret.as_ref())?
                .ok_or_else(|| StoreError::Other("an anchored record read as none".into()))?;
            self.note(&found);
            return Ok(found);
        }
        let secret = self.write_fresh(&rec, &req).await?;
        let uid = secret
            .metadata
            .uid
            .clone()
            .ok_or_else(|| StoreError::Other("the record Secret has no uid".into()))?;
        let anchor = OperationRecordRef {
            name: secret_name(&token),
            uid,
            reset_requested_at: stamp(rec.reset_requested_at),
            copied_at: stamp(rec.copied_at),
        };
        self.anchor(&token, Some(req), |a| {
            *a = Some(anchor.clone());
            Ok(())
        })
        .await?;
        let saved = parse(&secret)
            .ok_or_else(|| StoreError::Other("the record Secret does not parse".into()))?;
        self.note(&saved);
        Ok(saved)
    }

    async fn update(&self, rec: &OpRecord) -> Result<OpRecord, StoreError> {
        let token = rec.token.as_str();
        let req = self.request(token).await?;
        let anchor = req
            .as_ref()
            .and_then(|r| current(r, token))
            .and_then(|op| op.record.clone());
        let marks = (stamp(rec.reset_requested_at), stamp(rec.copied_at));
        if let Some(a) = &anchor {
            let set =
                |have: &Option<String>, want: &Option<String>| have.is_some() == want.is_some();
            if !set(&a.reset_requested_at, &marks.0) || !set(&a.copied_at, &marks.1) {
                // The steps first: a crash after this write still sees them.
                self.anchor(token, req.clone(), |slot| {
                    let a = slot
                        .as_mut()
                        .ok_or_else(|| StoreError::Lost(format!("{token} lost its anchor")))?;
                    a.reset_requested_at = marks.0.clone();
                    a.copied_at = marks.1.clone();
                    Ok(())
                })
                .await?;
            }
        }
        let secret = match self
            .secrets
            .replace(
                &secret_name(token),
                &PostParams::default(),
                &self.to_secret(rec, req.as_ref()),
            )
            .await
        {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 404 && anchor.is_some() => {
                return Err(StoreError::Lost(format!(
                    "the operation record Secret {} was deleted",
                    secret_name(token)
                )))
            }
            Err(e) => return Err(api_err(e)),
        };
        let saved = parse(&secret)
            .ok_or_else(|| StoreError::Other("the updated record does not parse".into()))?;
        self.note(&saved);
        Ok(match &anchor {
            Some(a) => merged(saved, a),
            None => saved,
        })
    }

    async fn list(&self) -> Result<Vec<OpRecord>, StoreError> {
        let lp = ListParams::default().labels(&format!("{DISPATCHER_LABEL}={}", self.dispatcher));
        let list = self.secrets.list(&lp).await.map_err(api_err)?;
        let records: Vec<OpRecord> = list
            .items
            .iter()
            .filter(|s| s.type_.as_deref() == Some(SECRET_TYPE))
            .filter_map(parse)
            .collect();
        for r in &records {
            self.note(r);
        }
        Ok(records)
    }

    fn reported(&self) -> broadcast::Receiver<String> {
        self.hub.subscribe()
    }
}

/// The request `uid` is finished with: drop the finalizer of each of its records and delete them.
pub async fn release(client: &Client, ns: &str, uid: &str) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{REQUEST_LABEL}={uid}"));
    for mut s in api.list(&lp).await?.items {
        if s.type_.as_deref() != Some(SECRET_TYPE) {
            continue;
        }
        let name = s.name_any();
        let had = s.finalizers().iter().any(|f| f == RECORD_FINALIZER);
        if had {
            s.finalizers_mut().retain(|f| f != RECORD_FINALIZER);
            s.metadata.managed_fields = None;
            match api.replace(&name, &PostParams::default(), &s).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
        }
        let dp = DeleteParams {
            preconditions: s.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(uid: &str, reset: Option<&str>) -> OperationRecordRef {
        OperationRecordRef {
            name: "osprov-op-u-1-1".into(),
            uid: uid.into(),
            reset_requested_at: reset.map(str::to_string),
            copied_at: None,
        }
    }

    fn secret(uid: &str, rec: &OpRecord) -> Secret {
        Secret {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                ..Default::default()
            },
            data: Some(data_of(rec)),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_anchored_object_is_the_record() {
        let rec = OpRecord::starting("u/1/1", "h", "os", "http://i");
        let s = secret("s1", &rec);
        // Unanchored: nothing was touched; a Secret of that name is not trusted.
        assert_eq!(trusted(None, Some(&s)).ok(), Some(None));
        assert_eq!(trusted(None, None).ok(), Some(None));
        // Anchored: the same object is the record.
        let got = trusted(Some(&anchor("s1", None)), Some(&s)).ok().flatten();
        assert_eq!(got.map(|r| r.token), Some("u/1/1".to_string()));
        // Deleted, replaced or mangled after anchoring: lost.
        assert!(matches!(
            trusted(Some(&anchor("s1", None)), None),
            Err(StoreError::Lost(_))
        ));
        assert!(matches!(
            trusted(Some(&anchor("s2", None)), Some(&s)),
            Err(StoreError::Lost(_))
        ));
        let mut mangled = s.clone();
        mangled.data = Some(BTreeMap::new());
        assert!(matches!(
            trusted(Some(&anchor("s1", None)), Some(&mangled)),
            Err(StoreError::Lost(_))
        ));
    }

    #[test]
    fn a_step_in_the_anchor_counts_even_when_the_secret_lost_it() {
        let rec = OpRecord::starting("u/1/1", "h", "os", "http://i");
        assert!(rec.reset_requested_at.is_none());
        let a = anchor("s1", Some("2026-12-07T10:00:00Z"));
        let got = trusted(Some(&a), Some(&secret("s1", &rec)))
            .ok()
            .flatten()
            .expect("record");
        assert_eq!(
            got.reset_requested_at.map(|t| t.to_string()),
            Some("2026-12-07T10:00:00Z".to_string())
        );
    }
}
