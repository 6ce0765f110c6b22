//! The Redfish adapter: bare-metal hosts behind BMCs, reprovisioned by virtual media.
//!
//! - Discovery reads the Systems collection (optionally only some systems, by `Id` or `Name`) and
//!   reports each system with power state, boot override, UUID, manufacturer/model/serial and MACs
//!   (see [`discovery`]). The OS catalogue is the admin's list in the dispatcher spec — a BMC has
//!   none.
//! - A reprovision ejects the CD virtual media, inserts the image, sets a one-time boot override to
//!   `Cd`, reads it back and resets the system (see [`provision`]); the adapter returns right after
//!   the reset.
//! - Completion: a BMC cannot tell when an install finished. The image URL handed to the BMC carries
//!   a per-request callback URL (`/callback/<key>.<secret>` on the controller's callback endpoint);
//!   the installer POSTs its result there. [`Adapter::operation`] reports Running until that
//!   outcome is recorded, or Failed once `callbackTimeout` (default 60 min) has passed since the
//!   reset; then the media are ejected and the boot override cleared, and only then is the
//!   operation reported finished.
//! - Events: the event stream carries the callback endpoint's reports (so a request completes at
//!   once) and, where the BMC offers a server-sent event stream, the systems it says changed (see
//!   [`events`]); hosts are polled at `lookupInterval` by the session as well.
//!
//! Idempotency per token: every token has an [`OpRecord`] in an [`OpStore`] (a
//! Secret owned by the request in the controller). A known token never gets a second record; the
//! media step is skipped when the BMC already shows this token's image (the URL holds the
//! token-specific callback, so it identifies the request); the reset is sent at most once, guarded
//! by `resetRequestedAt` written before it is sent. So a controller restarted at any point, or a
//! BMC that went away mid-way, resumes without a second insert+reset cycle.
pub mod client;
mod discovery;
pub mod events;
pub mod model;
mod provision;

use crate::adapter::bootiso;
use crate::adapter::store::{token_key, OpRecord, OpStore, Outcome, OutcomeKind, StoreError};
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, Inventory, OperationState, OperationStatus,
};
use crate::api::{ConfigMedium, HostProvisioningState, RedfishImage};
use client::{Client, ClientConfig, RedfishError};
use discovery::SystemCache;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::instrument;

/// Everything a Redfish adapter is built from.
#[derive(Clone, Debug)]
pub struct RedfishConfig {
    pub client: ClientConfig,
    pub images: Vec<RedfishImage>,
    /// Systems to manage by `Id` or `Name`; empty manages all.
    pub systems: Vec<String>,
    pub callback_timeout: Duration,
    /// Base URL of the controller's callback endpoint as the hosts reach it; `None` when it is off.
    pub callback_base: Option<String>,
    /// Where a request's configuration goes: a per-operation boot ISO or a second medium.
    pub config_medium: ConfigMedium,
}

/// How one operation's configuration travels: a drive image (base64) for a second medium, or a
/// boot ISO (JSON) the controller serves in place of the installer.
enum Delivery {
    Drive(String),
    BootIso(String),
}

/// Render the operation's configuration for the dispatcher's medium. A boot ISO reads the
/// installer's structure from its URL (ranged reads) and keeps only the change.
async fn deliver(
    cfg: &RedfishConfig,
    image: &RedfishImage,
    config: &crate::adapter::HostConfig,
    callback_url: &str,
) -> Result<Delivery, AdapterError> {
    use base64::Engine;
    match cfg.config_medium {
        ConfigMedium::SecondMedium => {
            let drive = config
                .drive_image(Some(callback_url))
                .map_err(|e| AdapterError::Config(format!("the config drive: {e}")))?;
            Ok(Delivery::Drive(
                base64::engine::general_purpose::STANDARD.encode(drive),
            ))
        }
        ConfigMedium::BootIso => {
            let files: Vec<(String, Vec<u8>)> = config
                .drive_files(Some(callback_url))
                .map_err(|e| AdapterError::Config(format!("the configuration files: {e}")))?
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect();
            let url = image_url_plain(image);
            let source = bootiso::http::HttpSource::new(bootiso::http::client(), &url);
            let iso = bootiso::remaster(&source, &url, &files, image.kernel_args.as_deref())
                .await
                .map_err(boot_iso_error)?;
            serde_json::to_string(&iso)
                .map(Delivery::BootIso)
                .map_err(|e| AdapterError::Config(format!("the boot ISO: {e}")))
        }
    }
}

/// A boot ISO that could not be made: worth a retry when the image server failed, a
/// configuration error otherwise.
fn boot_iso_error(e: bootiso::BootIsoError) -> AdapterError {
    let message = format!("the per-operation boot ISO: {e}");
    if e.is_transient() {
        AdapterError::Backend {
            message,
            source: Some(Box::new(e)),
        }
    } else {
        AdapterError::Config(message)
    }
}

/// Characters escaped in URL components (everything but RFC 3986 unreserved ones).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The image URL when the callback URL travels on the config drive: the catalogue's URL, its
/// `{callbackUrl}` and `{token}` placeholders left empty.
pub fn image_url_plain(image: &RedfishImage) -> String {
    let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
    image
        .url
        .replace("{callbackUrl}", "")
        .replace("{token}", "")
        .replace("{checksum}", &enc(image.checksum.as_deref().unwrap_or("")))
}

/// The image URL for one request: placeholders replaced, or the callback appended.
pub fn image_url(image: &RedfishImage, callback_url: &str, callback_token: &str) -> String {
    let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
    let t = &image.url;
    if t.contains("{callbackUrl}") || t.contains("{token}") || t.contains("{checksum}") {
        return t
            .replace("{callbackUrl}", &enc(callback_url))
            .replace("{token}", &enc(callback_token))
            .replace("{checksum}", &enc(image.checksum.as_deref().unwrap_or("")));
    }
    let sep = if t.contains('?') { '&' } else { '?' };
    format!("{t}{sep}osprov_callback={}", enc(callback_url))
}

struct Cached {
    rec: OpRecord,
    read_at: Instant,
}

/// Shared state of one adapter (one Redfish service).
pub(crate) struct Inner {
    client: Client,
    cfg: RedfishConfig,
    store: Arc<dyn OpStore>,
    systems: Mutex<HashMap<String, SystemCache>>,
    records: Mutex<HashMap<String, Cached>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    loaded: tokio::sync::OnceCell<()>,
}

/// The [`Adapter`] over one Redfish service.
#[derive(Clone)]
pub struct RedfishAdapter {
    inner: Arc<Inner>,
}

fn store_err(e: StoreError) -> RedfishError {
    match e {
        StoreError::Lost(m) => RedfishError::RecordLost(m),
        e => RedfishError::Store(e.to_string()),
    }
}

fn status_of(rec: &OpRecord) -> OperationStatus {
    let state = match &rec.outcome {
        None => OperationState::Running {
            progress: Some(match (rec.installed_boot_at, rec.reset_at.or(rec.reset_requested_at)) {
                (Some(t), _) => format!(
                    "the installer finished; the installed OS was powered on at {t}; waiting for its first-boot report"
                ),
                (None, Some(t)) => format!("installing since {t}; waiting for the installer's callback"),
                (None, None) => "preparing virtual media and boot override".into(),
            }),
        },
        Some(o) => match o.kind {
            OutcomeKind::Succeeded => OperationState::Succeeded,
            OutcomeKind::Failed => OperationState::Failed {
                message: o.message.clone(),
            },
            OutcomeKind::Cancelled => OperationState::Cancelled,
        },
    };
    OperationStatus {
        id: rec.token.clone(),
        state,
    }
}

impl RedfishAdapter {
    pub fn new(cfg: RedfishConfig, store: Arc<dyn OpStore>) -> Result<Self, AdapterError> {
        let client = Client::new(cfg.client.clone()).map_err(RedfishError::into_adapter)?;
        Ok(RedfishAdapter {
            inner: Arc::new(Inner {
                client,
                cfg,
                store,
                systems: Mutex::new(HashMap::new()),
                records: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
                loaded: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// HTTP requests sent to the service so far.
    pub fn requests(&self) -> u64 {
        self.inner.client.requests()
    }
}

impl Inner {
    /// A discovered system as the engine sees it: facts plus what this dispatcher's operation
    /// records say (provisioning state, the OS osprov last installed).
    fn host_info(&self, found: &discovery::Found, name: String) -> crate::adapter::HostInfo {
        let images: Vec<String> = self.cfg.images.iter().map(|i| i.name.clone()).collect();
        let mine: Vec<OpRecord> = self
            .cache()
            .values()
            .filter(|c| c.rec.host_id == found.system.id)
            .map(|c| c.rec.clone())
            .collect();
        let provisioning = if mine.iter().any(|r| !r.cleaned) {
            HostProvisioningState::Provisioning
        } else if mine
            .iter()
            .max_by_key(|r| r.started_at)
            .is_some_and(|r| matches!(&r.outcome, Some(o) if o.kind == OutcomeKind::Failed))
        {
            HostProvisioningState::Failed
        } else {
            HostProvisioningState::Idle
        };
        let current_os = mine
            .iter()
            .filter(|r| matches!(&r.outcome, Some(o) if o.kind == OutcomeKind::Succeeded))
            .max_by_key(|r| r.started_at)
            .map(|r| r.os.clone());
        discovery::host_info(found, name, &images, provisioning, current_os)
    }

    /// Re-read the discovered system that `origin` is, or lies under, after an event named it.
    async fn refresh_host(&self, origin: &str) -> Option<crate::adapter::HostInfo> {
        let (id, name, macs) = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, c)| {
                !c.path.is_empty()
                    && (origin == c.path || origin.starts_with(&format!("{}/", c.path)))
            })
            .map(|(id, c)| (id.clone(), c.name.clone(), c.macs.clone()))?;
        let system = match self.system(&id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, system = %id, "re-reading a system after an event failed");
                return None;
            }
        };
        if let Some(c) = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            c.system = Some(system.clone());
        }
        let found = discovery::Found {
            system,
            macs: macs.unwrap_or_default(),
        };
        Some(self.host_info(&found, name.unwrap_or(id)))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, rec: &OpRecord) {
        self.cache().insert(
            rec.token.clone(),
            Cached {
                rec: rec.clone(),
                read_at: Instant::now(),
            },
        );
    }

    async fn token_lock(&self, token: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(token.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Load this dispatcher's records once (after a restart they say what is in flight).
    async fn ensure_loaded(&self) -> Result<(), RedfishError> {
        self.loaded
            .get_or_try_init(|| async {
                let all = self.store.list().await.map_err(store_err)?;
                for rec in all {
                    self.remember(&rec);
                }
                Ok::<(), RedfishError>(())
            })
            .await
            .map(|_| ())
    }

    /// The record of `token`; re-read from the store when `refresh` and the cached copy has no
    /// outcome and is older than a few seconds (a callback may have reached another replica).
    async fn record(&self, token: &str, refresh: bool) -> Result<Option<OpRecord>, RedfishError> {
        let cached = self.cache().get(token).map(|c| (c.rec.clone(), c.read_at));
        if let Some((rec, read_at)) = cached {
            let stale = rec.outcome.is_none() && read_at.elapsed() > Duration::from_secs(10);
            if !(refresh && stale) {
                return Ok(Some(rec));
            }
        }
        let fresh = self.store.get(token).await.map_err(store_err)?;
        if let Some(rec) = &fresh {
            self.remember(rec);
        }
        Ok(fresh)
    }

    /// Apply `f` to the stored record, retrying on conflicts with a fresh copy.
    async fn mutate(
        &self,
        token: &str,
        f: impl Fn(&mut OpRecord),
    ) -> Result<OpRecord, RedfishError> {
        let mut current = self.record(token, false).await?;
        for _ in 0..5 {
            let Some(mut rec) = current.take() else {
                return Err(RedfishError::Store(format!("no record for {token}")));
            };
            f(&mut rec);
            match self.store.update(&rec).await {
                Ok(saved) => {
                    self.remember(&saved);
                    return Ok(saved);
                }
                Err(StoreError::Conflict) => {
                    current = self.store.get(token).await.map_err(store_err)?;
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(RedfishError::Store(format!(
            "record {token} kept changing under osprov"
        )))
    }

    fn active_on(&self, host_id: &str, except: &str) -> Option<String> {
        self.cache()
            .values()
            .find(|c| c.rec.host_id == host_id && c.rec.token != except && !c.rec.cleaned)
            .map(|c| c.rec.token.clone())
    }

    async fn new_record(
        &self,
        target: (&str, &str, &str),
        image: &RedfishImage,
        config: &crate::adapter::HostConfig,
    ) -> Result<OpRecord, AdapterError> {
        let (host_id, os, token) = target;
        if let Some(other) = self.active_on(host_id, token) {
            return Err(AdapterError::HostBusy {
                host: host_id.to_string(),
                token: other,
            });
        }
        let base = self.cfg.callback_base.as_deref().ok_or_else(|| {
            AdapterError::Config(
                "the provisioning callback endpoint is off (set --callback-addr); a Redfish \
                 reprovision cannot complete without it"
                    .into(),
            )
        })?;
        let secret = crate::adapter::store::new_secret();
        let callback_token = format!("{}.{secret}", token_key(token));
        let callback_url = crate::adapter::store::callback_url(base, token, &secret);
        // With configuration, the callback URL travels with it, not in the image URL.
        let delivery = if config.is_custom() {
            Some(deliver(&self.cfg, image, config, &callback_url).await?)
        } else {
            None
        };
        let mut rec = OpRecord {
            secret,
            ..OpRecord::starting(
                token,
                host_id,
                os,
                &image_url(image, &callback_url, &callback_token),
            )
        };
        if let Some(d) = delivery {
            rec.drive_secret = Some(crate::adapter::store::new_secret());
            rec.image = image_url_plain(image);
            match d {
                Delivery::Drive(drive) => rec.drive = Some(drive),
                Delivery::BootIso(iso) => {
                    rec.boot_iso = Some(iso);
                    rec.image = rec.served_url(base).unwrap_or_default();
                }
            }
        }
        let saved = self
            .store
            .create(rec)
            .await
            .map_err(|e| store_err(e).into_adapter())?;
        self.remember(&saved);
        Ok(saved)
    }
}

#[async_trait::async_trait]
impl Adapter for RedfishAdapter {
    #[instrument(skip_all, fields(endpoint = %self.inner.client.endpoint()))]
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        // The root is where everything starts: an unreachable service fails here.
        self.inner
            .client
            .root()
            .await
            .map_err(RedfishError::into_adapter)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Ends when the returned stream is dropped (the receiver closes).
        tokio::spawn(events::follow(self.inner.clone(), tx));
        let bmc = tokio_stream::wrappers::ReceiverStream::new(rx);
        let inner = self.inner.clone();
        let reports = tokio_stream::wrappers::BroadcastStream::new(inner.store.reported());
        let reports = reports.filter_map(move |token| {
            let inner = inner.clone();
            async move {
                let token = token.ok()?;
                // Only this dispatcher's tokens; re-read to see the reported outcome.
                inner.cache().get(&token)?;
                let rec = inner.store.get(&token).await.ok().flatten()?;
                inner.remember(&rec);
                Some(BackendEvent::OperationChanged {
                    host_id: rec.host_id.clone(),
                    token: token.clone(),
                    state: status_of(&rec).state,
                })
            }
        });
        Ok(futures::stream::select(reports, bmc).boxed())
    }

    #[instrument(skip_all, fields(endpoint = %self.inner.client.endpoint()))]
    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let inner = &self.inner;
        inner
            .ensure_loaded()
            .await
            .map_err(RedfishError::into_adapter)?;
        let found = discovery::read_systems(
            &inner.client,
            &inner.systems,
            &inner.cfg.systems,
            inner.cfg.client.max_connections,
        )
        .await
        .map_err(RedfishError::into_adapter)?;
        let names = discovery::host_names(&found);
        {
            let mut systems = inner.systems.lock().unwrap_or_else(|p| p.into_inner());
            for (f, name) in found.iter().zip(&names) {
                if let Some(c) = systems.get_mut(&f.system.id) {
                    c.name = Some(name.clone());
                }
            }
        }
        let hosts = found
            .iter()
            .zip(names)
            .map(|(f, name)| inner.host_info(f, name))
            .collect();
        Ok(Inventory { hosts })
    }

    #[instrument(skip(self), fields(endpoint = %self.inner.client.endpoint()))]
    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &crate::adapter::HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        let inner = &self.inner;
        let _guard = inner.token_lock(token).await;
        inner
            .ensure_loaded()
            .await
            .map_err(RedfishError::into_adapter)?;
        let image = inner
            .cfg
            .images
            .iter()
            .find(|i| i.name == os)
            .ok_or_else(|| AdapterError::UnknownOs {
                host: host_id.to_string(),
                os: os.to_string(),
            })?;
        // Read afresh, never from the cache: whether the BMC may be touched is decided from the
        // record the store trusts now.
        let known = inner
            .store
            .get(token)
            .await
            .map_err(|e| store_err(e).into_adapter())?;
        if let Some(rec) = &known {
            inner.remember(rec);
        }
        let rec = match known {
            Some(rec) => rec,
            None => {
                if !inner
                    .systems
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(host_id)
                {
                    return Err(AdapterError::UnknownHost(host_id.to_string()));
                }
                inner
                    .new_record((host_id, os, token), image, config)
                    .await?
            }
        };
        if rec.host_id != host_id || rec.os != os {
            return Err(AdapterError::Config(format!(
                "token {token} was used for {} with {}, not {host_id} with {os}",
                rec.host_id, rec.os
            )));
        }
        if rec.outcome.is_some() || rec.reset_requested_at.is_some() {
            return Ok(status_of(&rec));
        }
        let rec = inner.start(rec).await.map_err(RedfishError::into_adapter)?;
        Ok(status_of(&rec))
    }

    #[instrument(skip(self), fields(endpoint = %self.inner.client.endpoint()))]
    async fn operation(
        &self,
        _host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let inner = &self.inner;
        let _guard = inner.token_lock(token).await;
        inner
            .ensure_loaded()
            .await
            .map_err(RedfishError::into_adapter)?;
        let Some(mut rec) = inner
            .record(token, true)
            .await
            .map_err(RedfishError::into_adapter)?
        else {
            return Ok(None);
        };
        if rec.outcome.is_none() {
            // A BMC that fails this step now is asked again at the next look; it must not hide
            // the callback timeout below.
            rec = match inner.boot_installed(rec.clone()).await {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::warn!(host = %rec.host_id, error = %e, "booting the installed OS failed; trying again at the next look");
                    rec
                }
            };
            let Some(since) = rec.reset_at.or(rec.reset_requested_at) else {
                // Never got as far as the reset: the engine resumes with the same token.
                return Ok(None);
            };
            let waited = Timestamp::now().duration_since(since);
            let timeout = inner.cfg.callback_timeout;
            if Duration::try_from(waited).unwrap_or(Duration::ZERO) < timeout {
                return Ok(Some(status_of(&rec)));
            }
            let message = format!(
                "no callback from the installer within {}s of the reset (callbackTimeout)",
                timeout.as_secs()
            );
            rec = inner
                .mutate(token, |r| {
                    r.outcome.get_or_insert(Outcome {
                        kind: OutcomeKind::Failed,
                        message: message.clone(),
                        at: Timestamp::now(),
                    });
                })
                .await
                .map_err(RedfishError::into_adapter)?;
        }
        if !rec.cleaned {
            inner
                .cleanup(&rec)
                .await
                .map_err(RedfishError::into_adapter)?;
            rec = inner
                .mutate(token, |r| r.cleaned = true)
                .await
                .map_err(RedfishError::into_adapter)?;
        }
        Ok(Some(status_of(&rec)))
    }

    #[instrument(skip(self), fields(endpoint = %self.inner.client.endpoint()))]
    async fn close(&self) {
        self.inner.client.logout().await;
    }

    /// A request's configuration goes on a config drive in a second virtual media device
    /// (USBStick or Floppy), served by the controller's callback endpoint.
    fn delivers_config(&self, _format: crate::adapter::DriveFormat) -> bool {
        self.inner.cfg.callback_base.is_some()
    }

    async fn cancel(&self, _host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        let inner = &self.inner;
        let _guard = inner.token_lock(token).await;
        let Some(rec) = inner
            .record(token, true)
            .await
            .map_err(RedfishError::into_adapter)?
        else {
            return Ok(CancelOutcome::NotRunning);
        };
        let was_running = rec.outcome.is_none();
        let rec = if was_running {
            inner
                .mutate(token, |r| {
                    r.outcome.get_or_insert(Outcome {
                        kind: OutcomeKind::Cancelled,
                        message: "cancelled through osprov".into(),
                        at: Timestamp::now(),
                    });
                })
                .await
                .map_err(RedfishError::into_adapter)?
        } else {
            rec
        };
        if !rec.cleaned {
            inner
                .cleanup(&rec)
                .await
                .map_err(RedfishError::into_adapter)?;
            inner
                .mutate(token, |r| r.cleaned = true)
                .await
                .map_err(RedfishError::into_adapter)?;
        }
        Ok(if was_running {
            CancelOutcome::Cancelled
        } else {
            CancelOutcome::NotRunning
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_carry_the_callback() {
        let img = |url: &str| RedfishImage {
            name: "u".into(),
            url: url.into(),
            checksum: Some("sha256:ab".into()),
            kernel_args: None,
        };
        assert_eq!(
            image_url(&img("http://i/u.iso"), "http://c/callback/k.s", "k.s"),
            "http://i/u.iso?osprov_callback=http%3A%2F%2Fc%2Fcallback%2Fk.s"
        );
        assert_eq!(
            image_url(&img("http://i/u.iso?a=1"), "http://c", "k.s"),
            "http://i/u.iso?a=1&osprov_callback=http%3A%2F%2Fc"
        );
        assert_eq!(
            image_url(
                &img("http://i/{token}/u.iso?sum={checksum}"),
                "http://c",
                "k.s"
            ),
            "http://i/k.s/u.iso?sum=sha256%3Aab"
        );
        assert_eq!(token_key("9a-B/3/1"), "9a-b-3-1");
    }
}
