//! Durable per-request operation records: what an installer-driven adapter (Redfish virtual
//! media, libvirt's and vSphere's `iso`, vSphere's `template`) did for a token and what the installer reported back.
//!
//! A BMC or a hypervisor cannot say when an install finished nor which request a reset belonged
//! to, so the adapter keeps one [`OpRecord`] per token in an [`OpStore`]. In the controller the
//! store is a Kubernetes Secret per request (owned by the request; see `controller::callback`),
//! so the records survive a controller restart and hold the callback secret. [`MemoryStore`] backs unit tests.
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// The key of a token in Secret names, labels and callback URLs (`[a-z0-9-]`).
pub fn token_key(token: &str) -> String {
    token
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A fresh callback secret (24 random bytes, hex).
pub fn new_secret() -> String {
    use rand::Rng;
    rand::rng()
        .random::<[u8; 24]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The callback URL of `token` with `secret` under the endpoint's `base` URL.
pub fn callback_url(base: &str, token: &str, secret: &str) -> String {
    format!(
        "{}/callback/{}.{secret}",
        base.trim_end_matches('/'),
        token_key(token)
    )
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Succeeded,
    Failed,
    Cancelled,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OutcomeKind> {
        match s {
            "succeeded" => Some(OutcomeKind::Succeeded),
            "failed" => Some(OutcomeKind::Failed),
            "cancelled" => Some(OutcomeKind::Cancelled),
            _ => None,
        }
    }
}

/// The end of an operation, as reported by the installer (or decided by a timeout or a cancel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub message: String,
    pub at: Timestamp,
}

/// Everything the adapter must remember about one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// The request's token (its UID).
    pub token: String,
    /// Redfish `Id` of the system.
    pub host_id: String,
    pub os: String,
    /// The exact image URL given to `InsertMedia` (it carries the callback URL).
    pub image: String,
    /// The callback secret; the installer proves itself with `<token>.<secret>`.
    pub secret: String,
    pub started_at: Timestamp,
    /// Set before the reset is sent: a reset is sent at most once per token.
    pub reset_requested_at: Option<Timestamp>,
    /// Set once the BMC accepted the reset.
    pub reset_at: Option<Timestamp>,
    /// The boot override the BMC reported after it was set (e.g. `Cd/Once`).
    pub boot_override: Option<String>,
    /// Set before the host is powered on into the installed OS, after the installer powered it
    /// off (Redfish): that power-on is sent at most once per token.
    pub installed_boot_at: Option<Timestamp>,
    pub outcome: Option<Outcome>,
    /// Media ejected and boot override cleared after the outcome.
    pub cleaned: bool,
    /// Set once the image was copied for the host (vSphere `template`: the disk copy).
    pub copied_at: Option<Timestamp>,
    /// extraConfig keys the host's configuration is delivered in (vSphere: cloud-init's VMware
    /// datasource keys), set with the installer. Empty: none.
    pub guestinfo: BTreeMap<String, String>,
    /// The config drive's ISO image (base64, without its padding), served to the BMC while the
    /// operation runs (Redfish). `None`: no drive.
    pub drive: Option<String>,
    /// The credential of the drive's URL (not the callback's: the BMC sees this URL).
    pub drive_secret: Option<String>,
    /// The per-operation boot ISO (a [`crate::adapter::bootiso::BootIso`] as JSON: the
    /// installer's URL, the patches and the tail), served under the drive's URL and secret in
    /// place of a drive (Redfish `BootIso`). `None`: none.
    pub boot_iso: Option<String>,
    /// Store version for optimistic concurrency (a resourceVersion).
    pub version: Option<String>,
}

impl OpRecord {
    /// The record of an operation starting now, with a fresh callback secret.
    pub fn starting(token: &str, host_id: &str, os: &str, image: &str) -> OpRecord {
        OpRecord {
            token: token.to_string(),
            host_id: host_id.to_string(),
            os: os.to_string(),
            image: image.to_string(),
            secret: new_secret(),
            started_at: Timestamp::now(),
            reset_requested_at: None,
            reset_at: None,
            boot_override: None,
            installed_boot_at: None,
            outcome: None,
            cleaned: false,
            copied_at: None,
            guestinfo: BTreeMap::new(),
            drive: None,
            drive_secret: None,
            boot_iso: None,
            version: None,
        }
    }

    /// Where the BMC reads this operation's config drive (on a second medium), when it has one.
    pub fn drive_url(&self, base: &str) -> Option<String> {
        self.drive.as_ref()?;
        self.served_url(base)
    }

    /// The URL of what the controller serves this operation's BMC (its config drive or its boot
    /// ISO), under the drive's own secret.
    pub fn served_url(&self, base: &str) -> Option<String> {
        let secret = self.drive_secret.as_deref()?;
        Some(format!(
            "{}/drive/{}.{secret}.iso",
            base.trim_end_matches('/'),
            token_key(&self.token)
        ))
    }

    /// Where the installer reports this operation's end.
    pub fn callback_url(&self, base: &str) -> String {
        callback_url(base, &self.token, &self.secret)
    }

    /// The record as string fields (how a Secret stores it).
    pub fn to_fields(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("token", self.token.clone());
        put("host", self.host_id.clone());
        put("os", self.os.clone());
        put("image", self.image.clone());
        put("secret", self.secret.clone());
        put("startedAt", self.started_at.to_string());
        if let Some(t) = self.reset_requested_at {
            put("resetRequestedAt", t.to_string());
        }
        if let Some(t) = self.reset_at {
            put("resetAt", t.to_string());
        }
        if let Some(b) = &self.boot_override {
            put("bootOverride", b.clone());
        }
        if let Some(t) = self.installed_boot_at {
            put("installedBootAt", t.to_string());
        }
        if let Some(o) = &self.outcome {
            put("outcome", o.kind.as_str().to_string());
            put("message", o.message.clone());
            put("reportedAt", o.at.to_string());
        }
        if self.cleaned {
            put("cleaned", "true".into());
        }
        if let Some(t) = self.copied_at {
            put("copiedAt", t.to_string());
        }
        if !self.guestinfo.is_empty() {
            put(
                "guestinfo",
                serde_json::to_string(&self.guestinfo).unwrap_or_default(),
            );
        }
        if let Some(d) = &self.drive {
            put("drive", d.clone());
        }
        if let Some(s) = &self.drive_secret {
            put("driveSecret", s.clone());
        }
        if let Some(b) = &self.boot_iso {
            put("bootIso", b.clone());
        }
        m
    }

    /// Parse the string fields back; `None` when a required field is missing or malformed.
    pub fn from_fields(m: &BTreeMap<String, String>, version: Option<String>) -> Option<OpRecord> {
        let ts = |k: &str| m.get(k).and_then(|v| v.parse::<Timestamp>().ok());
        let outcome = match (
            m.get("outcome").and_then(|o| OutcomeKind::parse(o)),
            ts("reportedAt"),
        ) {
            (Some(kind), Some(at)) => Some(Outcome {
                kind,
                message: m.get("message").cloned().unwrap_or_default(),
                at,
            }),
            _ => None,
        };
        Some(OpRecord {
            token: m.get("token")?.clone(),
            host_id: m.get("host")?.clone(),
            os: m.get("os")?.clone(),
            image: m.get("image")?.clone(),
            secret: m.get("secret")?.clone(),
            started_at: ts("startedAt")?,
            reset_requested_at: ts("resetRequestedAt"),
            reset_at: ts("resetAt"),
            boot_override: m.get("bootOverride").cloned(),
            installed_boot_at: ts("installedBootAt"),
            outcome,
            cleaned: m.get("cleaned").is_some_and(|c| c == "true"),
            copied_at: ts("copiedAt"),
            guestinfo: m
                .get("guestinfo")
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default(),
            drive: m.get("drive").cloned(),
            drive_secret: m.get("driveSecret").cloned(),
            boot_iso: m.get("bootIso").cloned(),
            version,
        })
    }
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the record was changed by someone else")]
    Conflict,
    /// The record is gone, or is not the one the controller made, after the backend may have been
    /// touched for its token.
    #[error("{0}")]
    Lost(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// The adapter error for a store failure: a lost record ends the attempt, anything else is
    /// a transient backend error (the store is an API server that may be away).
    pub fn into_adapter(self) -> crate::adapter::AdapterError {
        match self {
            StoreError::Lost(m) => crate::adapter::AdapterError::RecordLost(m),
            other => crate::adapter::AdapterError::Backend {
                message: format!("operation record: {other}"),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// Where operation records live.
#[async_trait::async_trait]
pub trait OpStore: Send + Sync {
    /// The record of `token`, if any.
    async fn get(&self, token: &str) -> Result<Option<OpRecord>, StoreError>;
    /// Create a record; when one exists already, return that one instead.
    async fn create(&self, rec: OpRecord) -> Result<OpRecord, StoreError>;
    /// Replace a record; `Conflict` when its version is stale.
    async fn update(&self, rec: &OpRecord) -> Result<OpRecord, StoreError>;
    /// Every record of this dispatcher.
    async fn list(&self) -> Result<Vec<OpRecord>, StoreError>;
    /// Tokens whose outcome was just recorded by this process (the callback endpoint).
    fn reported(&self) -> broadcast::Receiver<String>;
}

/// Apply `f` to `token`'s stored record, retrying with a fresh copy when someone else (the
/// callback endpoint) changed it meanwhile. `None` when there is no record.
pub async fn mutate(
    store: &dyn OpStore,
    token: &str,
    f: impl Fn(&mut OpRecord),
) -> Result<Option<OpRecord>, StoreError> {
    for _ in 0..5 {
        let Some(mut rec) = store.get(token).await? else {
            return Ok(None);
        };
        f(&mut rec);
        match store.update(&rec).await {
            Ok(saved) => return Ok(Some(saved)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Other(format!(
        "record {token} kept changing under osprov"
    )))
}

/// Record `kind` with `message` as the outcome of `token`'s operation, unless one is recorded
/// already (the first outcome stands).
pub async fn record_outcome(
    store: &dyn OpStore,
    token: &str,
    kind: OutcomeKind,
    message: &str,
) -> Result<Option<OpRecord>, StoreError> {
    mutate(store, token, |r| {
        r.outcome.get_or_insert(Outcome {
            kind,
            message: message.to_string(),
            at: Timestamp::now(),
        });
    })
    .await
}

/// An in-memory store, for tests.
pub struct MemoryStore {
    records: Mutex<HashMap<String, OpRecord>>,
    reported: broadcast::Sender<String>,
    next: Mutex<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            records: Mutex::new(HashMap::new()),
            reported: broadcast::channel(1024).0,
            next: Mutex::new(0),
        }
    }
}

impl MemoryStore {
    fn bump(&self) -> String {
        let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        n.to_string()
    }

    /// Record an installer's report, as the callback endpoint would.
    pub fn report(&self, token: &str, kind: OutcomeKind, message: &str) {
        let version = self.bump();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = records.get_mut(token) {
            r.outcome = Some(Outcome {
                kind,
                message: message.to_string(),
                at: Timestamp::now(),
            });
            r.version = Some(version);
        }
        drop(records);
        let _ = self.reported.send(token.to_string());
    }
}

#[async_trait::async_trait]
impl OpStore for MemoryStore {
    async fn get(&self, token: &str) -> Result<Option<OpRecord>, StoreError> {
        Ok(self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned())
    }

    async fn create(&self, mut rec: OpRecord) -> Result<OpRecord, StoreError> {
        let version = self.bump();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = records.get(&rec.token) {
            return Ok(existing.clone());
        }
        rec.version = Some(version);
        records.insert(rec.token.clone(), rec.clone());
        Ok(rec)
    }

    async fn update(&self, rec: &OpRecord) -> Result<OpRecord, StoreError> {
        let version = self.bump();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let current = records
            .get(&rec.token)
            .ok_or_else(|| StoreError::Other(format!("no record {}", rec.token)))?;
        if current.version != rec.version {
            return Err(StoreError::Conflict);
        }
        let mut next = rec.clone();
        next.version = Some(version);
        records.insert(rec.token.clone(), next.clone());
        Ok(next)
    }

    async fn list(&self) -> Result<Vec<OpRecord>, StoreError> {
        Ok(self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    fn reported(&self) -> broadcast::Receiver<String> {
        self.reported.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_fields() {
        let rec = OpRecord {
            token: "t".into(),
            host_id: "h".into(),
            os: "ubuntu".into(),
            image: "http://x/u.iso?osprov_callback=y".into(),
            secret: "s".into(),
            started_at: Timestamp::now(),
            reset_requested_at: Some(Timestamp::now()),
            reset_at: None,
            boot_override: Some("Cd/Once".into()),
            installed_boot_at: Some(Timestamp::now()),
            outcome: Some(Outcome {
                kind: OutcomeKind::Failed,
                message: "disk".into(),
                at: Timestamp::now(),
            }),
            cleaned: true,
            copied_at: Some(Timestamp::now()),
            guestinfo: [("guestinfo.userdata".to_string(), "I2Nsb3Vk".to_string())].into(),
            drive: Some("Q0QwMDE=".into()),
            drive_secret: Some("d".into()),
            boot_iso: Some("{}".into()),
            version: Some("7".into()),
        };
        let back = OpRecord::from_fields(&rec.to_fields(), Some("7".into()));
        assert_eq!(back, Some(rec));
        assert!(OpRecord::from_fields(&BTreeMap::new(), None).is_none());
    }
}
