//! [`LibvirtAdapter`]: libvirt domains as hosts, reprovisioned with the `image` or `iso` strategy.
//!
//! - Discovery lists the connection's domains (filtered by name or osprov's metadata label); a
//!   host's id is the domain UUID, its current OS the record of its last finished operation, its
//!   catalogue the image pool's volumes.
//! - `reprovision` checks what a refusal must come from, records the intent (token, OS, and what
//!   the strategy needs to resume) in the domain's metadata, and hands the rest to a worker
//!   (`image`: [`super::steps`] performed by `image`; `iso`: [`super::iso_steps`] performed by
//!   `iso`), each step decided from what libvirt shows. The call returns at once; `operation`
//!   reads the record back (and restarts the worker after a controller restart).
//! - `subscribe` turns libvirt's lifecycle events into host changes, adds the workers' ends and
//!   (for `iso`) resumes a worker when its installer called back; it ends (so the engine
//!   reconnects) when the connection dies.
use super::conn::{self, blocking, Credentials};
use super::xml::{self, DiskSource, Progress, Record};
use super::{events, image, iso};
use crate::adapter::store::OpStore;
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, HostInfo, Inventory, OperationState,
    OperationStatus,
};
use crate::api::LibvirtStrategy;
use crate::api::{HostProvisioningState, PowerState};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

/// How often an event subscription checks that its connection is alive.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// What a libvirt adapter is configured with (from `spec.libvirt` and its Secret).
#[derive(Clone, Debug)]
pub struct LibvirtConfig {
    pub uri: String,
    pub credentials: Option<Credentials>,
    /// Only these domains; empty: all.
    pub names: Vec<String>,
    /// Only domains carrying osprov's metadata element.
    pub labelled: bool,
    pub image_pool: String,
    /// OS name → volume; empty: every volume of the pool.
    pub images: Vec<(String, String)>,
    /// Target of the root disk; none: the first disk.
    pub root_disk: Option<String>,
    pub strategy: LibvirtStrategy,
    /// `iso`: base URL of the controller's callback endpoint as guests reach it.
    pub callback_base: Option<String>,
    /// `iso`: how long after the power cycle the installer may take to call back.
    pub callback_timeout: Duration,
}

/// The libvirt adapter.
pub struct LibvirtAdapter {
    cfg: Arc<LibvirtConfig>,
    /// Where operation records (callback secrets, outcomes) live: `iso`, and `image` operations
    /// with configuration.
    store: Option<Arc<dyn OpStore>>,
    /// Domains (UUIDs) with a worker running.
    workers: Arc<Mutex<HashSet<String>>>,
    /// Operations a worker finished, for the event stream.
    finished: broadcast::Sender<BackendEvent>,
}

impl LibvirtAdapter {
    pub fn new(cfg: LibvirtConfig) -> Self {
        LibvirtAdapter {
            cfg: Arc::new(cfg),
            store: None,
            workers: Arc::new(Mutex::new(HashSet::new())),
            finished: broadcast::channel(256).0,
        }
    }

    /// The operation store the `iso` strategy needs (the controller's Secrets).
    pub fn with_operations(mut self, store: Arc<dyn OpStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// A handle sharing this adapter's workers (for the event stream's tasks).
    fn kicker(&self) -> Arc<LibvirtAdapter> {
        Arc::new(LibvirtAdapter {
            cfg: self.cfg.clone(),
            store: self.store.clone(),
            workers: self.workers.clone(),
            finished: self.finished.clone(),
        })
    }

    fn store(&self) -> Result<Arc<dyn OpStore>, AdapterError> {
        self.store
            .clone()
            .ok_or_else(|| AdapterError::Config("the iso strategy needs an operation store".into()))
    }

    /// Carry on the operations domains are marked with (`recorded`) while no worker runs them,
    /// so a domain never stays busy because its request went away at the wrong moment (released
    /// while the controller died before the worker finished). `image` operations run to their
    /// end, as their cancel says; `iso` ones whose record (the request's Secret) is gone are
    /// restored by their worker, which reads that as a cancel.
    async fn finish_orphans(&self, marked: Vec<(String, String)>) {
        if marked.is_empty() {
            return;
        }
        let marked = match (self.cfg.strategy, self.store.as_ref()) {
            (LibvirtStrategy::Image, _) => marked,
            (LibvirtStrategy::Iso, Some(store)) => {
                let Ok(records) = store.list().await else {
                    return;
                };
                let live: HashSet<String> = records.into_iter().map(|r| r.token).collect();
                marked
                    .into_iter()
                    .filter(|(_, token)| !live.contains(token))
                    .collect()
            }
            (LibvirtStrategy::Iso, None) => return,
        };
        for (uuid, token) in marked {
            self.ensure_worker(&uuid, &token);
        }
    }

    /// Start the worker of `uuid`'s recorded operation unless one runs.
    fn ensure_worker(&self, uuid: &str, token: &str) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if !workers.insert(uuid.to_string()) {
            return;
        }
        drop(workers);
        let (cfg, workers, uuid, token) = (
            self.cfg.clone(),
            self.workers.clone(),
            uuid.to_string(),
            token.to_string(),
        );
        let (store, finished) = (self.store.clone(), self.finished.clone());
        tokio::spawn(async move {
            let key = uuid.clone();
            let result = match (cfg.strategy, store) {
                (LibvirtStrategy::Image, store) => {
                    image::work(cfg.clone(), store, uuid.clone(), token.clone()).await
                }
                (LibvirtStrategy::Iso, Some(store)) => {
                    iso::work(cfg.clone(), store, uuid.clone(), token.clone()).await
                }
                (LibvirtStrategy::Iso, None) => Ok(false),
            };
            workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            match result {
                Ok(true) => {
                    // Tell the engine at once; it reads the operation's end through `operation`.
                    let _ = finished.send(BackendEvent::OperationChanged {
                        host_id: uuid,
                        token,
                        state: OperationState::Running { progress: None },
                    });
                }
                Ok(false) => {}
                // Transient: the record still says Recorded, and the next look resumes the work.
                Err(e) => {
                    tracing::warn!(domain = %key, error = %e, "libvirt reprovision step failed; resumed at the next look");
                }
            }
        });
    }
}

pub(super) fn connect(cfg: &LibvirtConfig) -> Result<Connect, AdapterError> {
    conn::shared_connection(&cfg.uri, cfg.credentials.as_ref())
}

pub(super) fn domain(c: &Connect, uuid: &str) -> Result<Domain, AdapterError> {
    c.lookup_domain_by_uuid_string(uuid).map_err(|e| {
        if matches!(
            e.code(),
            virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain)
        ) {
            AdapterError::UnknownHost(uuid.to_string())
        } else {
            conn::call("looking the domain up", &e)
        }
    })
}

/// osprov's record on the domain; `None` when it carries no osprov element.
pub(super) fn read_record(d: &Domain) -> Result<Option<Record>, AdapterError> {
    match d.metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(xml::NAMESPACE),
        sys::VIR_DOMAIN_AFFECT_CONFIG,
    ) {
        Ok(text) => Record::parse(&text)
            .map(Some)
            .map_err(|e| AdapterError::Config(format!("osprov's metadata on the domain: {e}"))),
        Err(e)
            if matches!(
                e.code(),
                virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomainMetadata)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(conn::call("reading the domain's metadata", &e)),
    }
}

pub(super) fn write_record(d: &Domain, record: &Record) -> Result<(), AdapterError> {
    let active = d.is_active().map_err(|e| conn::call("domain state", &e))?;
    let flags = sys::VIR_DOMAIN_AFFECT_CONFIG
        | if active {
            sys::VIR_DOMAIN_AFFECT_LIVE
        } else {
            0
        };
    d.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(&record.to_xml()),
        Some(xml::PREFIX),
        Some(xml::NAMESPACE),
        flags,
    )
    .map_err(|e| conn::call("recording osprov's metadata on the domain", &e))
}

/// The OS catalogue: name → volume of the image pool.
fn catalogue(c: &Connect, cfg: &LibvirtConfig) -> Result<Vec<(String, String)>, AdapterError> {
    let pool = c
        .lookup_storage_pool_by_name(&cfg.image_pool)
        .map_err(|e| {
            AdapterError::Config(format!("image pool {}: {}", cfg.image_pool, e.message()))
        })?;
    let _ = pool.refresh(0);
    let volumes = pool
        .list_volumes()
        .map_err(|e| conn::call("listing the image pool", &e))?;
    if cfg.images.is_empty() {
        let mut out: Vec<(String, String)> = volumes
            .into_iter()
            .map(|v| {
                (
                    v.rsplit_once('.').map(|(n, _)| n).unwrap_or(&v).to_string(),
                    v,
                )
            })
            .collect();
        out.sort();
        return Ok(out);
    }
    for (name, volume) in &cfg.images {
        if !volumes.contains(volume) {
            return Err(AdapterError::Config(format!(
                "image {name}: volume {volume} is not in storage pool {}",
                cfg.image_pool
            )));
        }
    }
    Ok(cfg.images.clone())
}

/// The host a domain is, or `None` when the selector leaves it out.
fn host(
    d: &Domain,
    cfg: &LibvirtConfig,
    os: &[(String, String)],
) -> Result<Option<HostInfo>, AdapterError> {
    let name = d.name().map_err(|e| conn::call("domain name", &e))?;
    if !cfg.names.is_empty() && !cfg.names.contains(&name) {
        return Ok(None);
    }
    let record = read_record(d)?;
    if cfg.labelled && record.is_none() {
        return Ok(None);
    }
    let record = record.unwrap_or_default();
    let uuid = d.uuid_string().map_err(|e| conn::call("domain uuid", &e))?;
    let active = d.is_active().map_err(|e| conn::call("domain state", &e))?;
    let info = d.info().map_err(|e| conn::call("domain info", &e))?;
    let provisioning = match record.progress {
        Some(Progress::Recorded) => HostProvisioningState::Provisioning,
        Some(Progress::Failed) => HostProvisioningState::Failed,
        Some(Progress::Done | Progress::Cancelled) | None => HostProvisioningState::Idle,
    };
    let current_os = match record.progress {
        Some(Progress::Done) => record.os.clone(),
        _ => None,
    };
    let mut details = BTreeMap::new();
    details.insert("vcpus".into(), info.nr_virt_cpu.to_string());
    details.insert("memoryKiB".into(), info.max_mem.to_string());
    details.insert("domain".into(), name.clone());
    Ok(Some(HostInfo {
        id: uuid,
        name,
        current_os,
        available_os: os.iter().map(|(n, _)| n.clone()).collect(),
        power: if active {
            PowerState::On
        } else {
            PowerState::Off
        },
        provisioning,
        details,
    }))
}

/// The volume behind a disk source, and its pool.
pub(super) fn source_volume(
    c: &Connect,
    source: &DiskSource,
) -> Result<(StorageVol, StoragePool), AdapterError> {
    let vol = match source {
        DiskSource::File(path) => c.lookup_storage_vol_by_path(path).map_err(|e| {
            AdapterError::Config(format!(
                "the root disk {path} is not a volume of a storage pool ({})",
                e.message()
            ))
        })?,
        DiskSource::Volume { pool, volume } => {
            let p = c
                .lookup_storage_pool_by_name(pool)
                .map_err(|e| conn::call(&format!("storage pool {pool}"), &e))?;
            p.lookup_storage_vol_by_name(volume)
                .map_err(|e| conn::call(&format!("volume {volume}"), &e))?
        }
    };
    let pool = vol
        .lookup_storage_pool()
        .map_err(|e| conn::call("the root disk's pool", &e))?;
    Ok((vol, pool))
}

pub(super) fn volume_name(v: &StorageVol) -> Result<String, AdapterError> {
    v.name().map_err(|e| conn::call("volume name", &e))
}

/// The image volume of `os`.
pub(super) fn image_volume(
    c: &Connect,
    cfg: &LibvirtConfig,
    os: &str,
) -> Result<String, AdapterError> {
    catalogue(c, cfg)?
        .into_iter()
        .find(|(n, _)| n == os)
        .map(|(_, v)| v)
        .ok_or_else(|| AdapterError::UnknownOs {
            host: String::new(),
            os: os.to_string(),
        })
}

/// The image volume of `os` for host `uuid` (an unknown OS is reported against the host).
pub(super) fn catalogue_volume(
    c: &Connect,
    cfg: &LibvirtConfig,
    uuid: &str,
    os: &str,
) -> Result<StorageVol, AdapterError> {
    let volume = image_volume(c, cfg, os).map_err(|e| match e {
        AdapterError::UnknownOs { os, .. } => AdapterError::UnknownOs {
            host: uuid.to_string(),
            os,
        },
        other => other,
    })?;
    c.lookup_storage_pool_by_name(&cfg.image_pool)
        .and_then(|p| p.lookup_storage_vol_by_name(&volume))
        .map_err(|e| conn::call(&format!("image volume {volume}"), &e))
}

pub(super) fn status_of(uuid: &str, record: &Record) -> OperationStatus {
    let state = match record.progress {
        Some(Progress::Done) => OperationState::Succeeded,
        Some(Progress::Failed) => OperationState::Failed {
            message: record.message.clone().unwrap_or_default(),
        },
        Some(Progress::Cancelled) => OperationState::Cancelled,
        Some(Progress::Recorded) | None => {
            let os = record.os.as_deref().unwrap_or("the image");
            OperationState::Running {
                progress: Some(match &record.installer {
                    None if record.seed.is_some() => format!(
                        "replacing the root disk with {os}; its first boot reads the config \
                         drive and reports"
                    ),
                    None => format!("replacing the root disk with {os}"),
                    Some(i) if i.started => {
                        format!(
                            "installing {os} from its ISO; waiting for the installer's callback"
                        )
                    }
                    Some(_) => format!("attaching the {os} installer ISO and power-cycling"),
                }),
            }
        }
    };
    OperationStatus {
        id: format!("{uuid}/{}", record.token.as_deref().unwrap_or_default()),
        state,
    }
}

#[async_trait::async_trait]
impl Adapter for LibvirtAdapter {
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        let cfg = self.cfg.clone();
        let (c, registration, rx) = blocking(move || {
            let c = connect(&cfg)?;
            let (registration, rx) = events::lifecycle_events(&c)?;
            Ok((c, registration, rx))
        })
        .await?;
        let state = (self.cfg.clone(), c, registration, rx);
        let stream = futures::stream::unfold(state, |(cfg, c, registration, mut rx)| async move {
            let mut tick = tokio::time::interval(LIVENESS_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    uuid = rx.recv() => {
                        let uuid = uuid?;
                        let (cfg2, c2) = (cfg.clone(), c.clone());
                        let event = blocking(move || changed(&cfg2, &c2, &uuid)).await.ok().flatten();
                        if let Some(event) = event {
                            return Some((event, (cfg, c, registration, rx)));
                        }
                    }
                    _ = tick.tick() => {
                        let c2 = c.clone();
                        let alive = blocking(move || Ok(c2.is_alive().unwrap_or(false))).await.unwrap_or(false);
                        if !alive {
                            tracing::info!(uri = %cfg.uri, "libvirt connection lost; reconnecting");
                            return None;
                        }
                    }
                }
            }
        });
        let finished = tokio_stream::wrappers::BroadcastStream::new(self.finished.subscribe())
            .filter_map(|e| async move { e.ok() });
        let Some(store) = self.store.clone() else {
            return Ok(futures::stream::select(stream, finished).boxed());
        };
        // A callback report resumes the operation's worker; the worker's end is the event.
        let me = self.kicker();
        let reports = tokio_stream::wrappers::BroadcastStream::new(store.reported()).filter_map(
            move |token| {
                let (me, store) = (me.clone(), store.clone());
                async move {
                    let rec = store.get(&token.ok()?).await.ok().flatten()?;
                    me.ensure_worker(&rec.host_id, &rec.token);
                    None::<BackendEvent>
                }
            },
        );
        Ok(futures::stream::select(futures::stream::select(stream, finished), reports).boxed())
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let cfg = self.cfg.clone();
        let (inventory, marked) = blocking(move || {
            let c = connect(&cfg)?;
            let os = catalogue(&c, &cfg)?;
            let domains = c
                .list_all_domains(0)
                .map_err(|e| conn::call("listing domains", &e))?;
            let mut hosts = Vec::new();
            let mut marked = Vec::new();
            for d in &domains {
                match host(d, &cfg, &os) {
                    Ok(Some(h)) => {
                        if h.provisioning == HostProvisioningState::Provisioning {
                            if let Some(token) = read_record(d)?.and_then(|r| r.token) {
                                marked.push((h.id.clone(), token));
                            }
                        }
                        hosts.push(h);
                    }
                    Ok(None) | Err(AdapterError::UnknownHost(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((Inventory { hosts }, marked))
        })
        .await?;
        self.finish_orphans(marked).await;
        Ok(inventory)
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &crate::adapter::HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        let (cfg, uuid, os2, token2) = (
            self.cfg.clone(),
            host_id.to_string(),
            os.to_string(),
            token.to_string(),
        );
        let status = match cfg.strategy {
            LibvirtStrategy::Image => {
                image::start(&cfg, self.store.as_deref(), (&uuid, &os2, &token2), config).await?
            }
            LibvirtStrategy::Iso => {
                let store = self.store()?;
                let record =
                    iso::start(&cfg, store.as_ref(), (&uuid, &os2, &token2), config).await?;
                status_of(&uuid, &record)
            }
        };
        if !status.state.is_terminal() {
            self.ensure_worker(host_id, token);
        }
        Ok(status)
    }

    async fn operation(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let (cfg, uuid) = (self.cfg.clone(), host_id.to_string());
        let record = blocking(move || {
            let c = connect(&cfg)?;
            read_record(&domain(&c, &uuid)?)
        })
        .await?;
        let Some(record) = record.filter(|r| r.token.as_deref() == Some(token)) else {
            return Ok(None);
        };
        let status = status_of(host_id, &record);
        if !status.state.is_terminal() {
            if self.cfg.strategy == LibvirtStrategy::Iso || record.seed.is_some() {
                // The callback's record must still be the controller's (a lost one ends the
                // attempt; the worker would only fail on it).
                self.store()?
                    .get(token)
                    .await
                    .map_err(crate::adapter::store::StoreError::into_adapter)?;
            }
            self.ensure_worker(host_id, token);
        }
        Ok(Some(status))
    }

    /// The `iso` strategy boots an installer, which reads a config drive; the `image` strategy
    /// attaches a NoCloud seed for the new disk's first boot (a cloud image reads no Anaconda
    /// volume), whose report the callback endpoint takes.
    fn delivers_config(&self, format: crate::adapter::DriveFormat) -> bool {
        match self.cfg.strategy {
            LibvirtStrategy::Iso => true,
            LibvirtStrategy::Image => {
                format == crate::adapter::DriveFormat::NoCloud
                    && self.store.is_some()
                    && self.cfg.callback_base.is_some()
            }
        }
    }

    async fn cancel(&self, host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        if self.cfg.strategy == LibvirtStrategy::Image {
            // Each step is short and the disk may already be replaced: it runs to its end.
            return Ok(CancelOutcome::Unsupported);
        }
        let store = self.store()?;
        if !iso::cancel(store.as_ref(), token).await? {
            return Ok(CancelOutcome::NotRunning);
        }
        // Restore the domain now rather than at the next look.
        iso::work(
            self.cfg.clone(),
            store,
            host_id.to_string(),
            token.to_string(),
        )
        .await?;
        Ok(CancelOutcome::Cancelled)
    }
}

/// The event for a domain that changed: its host, or its removal.
fn changed(
    cfg: &LibvirtConfig,
    c: &Connect,
    uuid: &str,
) -> Result<Option<BackendEvent>, AdapterError> {
    let d = match domain(c, uuid) {
        Ok(d) => d,
        Err(AdapterError::UnknownHost(_)) => {
            return Ok(Some(BackendEvent::HostRemoved {
                id: uuid.to_string(),
            }))
        }
        Err(e) => return Err(e),
    };
    let os = catalogue(c, cfg)?;
    Ok(host(&d, cfg, &os)?.map(BackendEvent::HostChanged))
}

#[cfg(test)]
mod tests;
