//! [`LibvirtAdapter`]: libvirt domains as hosts, reprovisioned with the `image` strategy.
//!
//! - Discovery lists the connection's domains (filtered by name or osprov's metadata label); a
//!   host's id is the domain UUID, its current OS the record of its last finished operation, its
//!   catalogue the image pool's volumes.
//! - `reprovision` checks the image and the root disk, records the intent (token, OS, the volume
//!   it replaces) in the domain's metadata, and hands the rest to a worker: the step machine of
//!   [`super::steps`], one libvirt call per step, each step decided from what libvirt shows. The
//!   call returns at once; `operation` reads the record back (and restarts the worker after a
//!   controller restart).
//! - `subscribe` turns libvirt's lifecycle events into host changes and ends (so the engine
//!   reconnects) when the connection dies.
use super::conn::{self, blocking, Credentials};
use super::events;
use super::steps::{self, Observed, Step};
use super::xml::{self, DiskSource, Progress, Record};
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, HostInfo, Inventory, OperationState,
    OperationStatus,
};
use crate::api::{HostProvisioningState, PowerState};
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

/// How often an event subscription checks that its connection is alive.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);
/// A worker gives up after this many steps (the machine needs at most six).
const MAX_STEPS: usize = 16;

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
}

/// The libvirt adapter.
pub struct LibvirtAdapter {
    cfg: Arc<LibvirtConfig>,
    /// Domains (UUIDs) with a worker running.
    workers: Arc<Mutex<HashSet<String>>>,
}

impl LibvirtAdapter {
    pub fn new(cfg: LibvirtConfig) -> Self {
        LibvirtAdapter {
            cfg: Arc::new(cfg),
            workers: Arc::new(Mutex::new(HashSet::new())),
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
        tokio::spawn(async move {
            let key = uuid.clone();
            let result = blocking(move || work(&cfg, &uuid, &token)).await;
            workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            if let Err(e) = result {
                // Transient: the record still says Recorded, and the next poll restarts the work.
                tracing::warn!(domain = %key, error = %e, "libvirt reprovision step failed; resumed at the next look");
            }
        });
    }
}

fn connect(cfg: &LibvirtConfig) -> Result<Connect, AdapterError> {
    conn::shared_connection(&cfg.uri, cfg.credentials.as_ref())
}

fn domain(c: &Connect, uuid: &str) -> Result<Domain, AdapterError> {
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
fn read_record(d: &Domain) -> Result<Option<Record>, AdapterError> {
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

fn write_record(d: &Domain, record: &Record) -> Result<(), AdapterError> {
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
fn source_volume(
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

fn volume_name(v: &StorageVol) -> Result<String, AdapterError> {
    v.name().map_err(|e| conn::call("volume name", &e))
}

/// The image volume of `os`.
fn image_volume(c: &Connect, cfg: &LibvirtConfig, os: &str) -> Result<String, AdapterError> {
    catalogue(c, cfg)?
        .into_iter()
        .find(|(n, _)| n == os)
        .map(|(_, v)| v)
        .ok_or_else(|| AdapterError::UnknownOs {
            host: String::new(),
            os: os.to_string(),
        })
}

/// Record the intent of `token` on `uuid` (after the checks a refusal must come from).
fn record_intent(
    cfg: &LibvirtConfig,
    uuid: &str,
    os: &str,
    token: &str,
) -> Result<OperationStatus, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    let record = read_record(&d)?.unwrap_or_default();
    if record.token.as_deref() == Some(token) {
        return Ok(status_of(uuid, &record));
    }
    if record.progress == Some(Progress::Recorded) {
        return Err(AdapterError::HostBusy {
            host: uuid.to_string(),
            token: record.token.unwrap_or_default(),
        });
    }
    image_volume(&c, cfg, os).map_err(|e| match e {
        AdapterError::UnknownOs { os, .. } => AdapterError::UnknownOs {
            host: uuid.to_string(),
            os,
        },
        other => other,
    })?;
    let inactive = d
        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(|e| conn::call("domain XML", &e))?;
    let disk = xml::root_disk(&inactive, cfg.root_disk.as_deref())
        .map_err(|e| AdapterError::Config(e.to_string()))?;
    let (vol, _) = source_volume(&c, &disk.source)?;
    let next = Record {
        os: Some(os.to_string()),
        token: Some(token.to_string()),
        progress: Some(Progress::Recorded),
        previous: Some(volume_name(&vol)?),
        message: None,
    };
    write_record(&d, &next)?;
    Ok(status_of(uuid, &next))
}

fn status_of(uuid: &str, record: &Record) -> OperationStatus {
    let state = match record.progress {
        Some(Progress::Done) => OperationState::Succeeded,
        Some(Progress::Failed) => OperationState::Failed {
            message: record.message.clone().unwrap_or_default(),
        },
        Some(Progress::Cancelled) => OperationState::Cancelled,
        Some(Progress::Recorded) | None => OperationState::Running {
            progress: Some(format!(
                "replacing the root disk with {}",
                record.os.as_deref().unwrap_or("the image")
            )),
        },
    };
    OperationStatus {
        id: format!("{uuid}/{}", record.token.as_deref().unwrap_or_default()),
        state,
    }
}

/// Carry `token`'s operation on `uuid` to its end, one step at a time. A refusal only a person
/// can fix ends the operation as failed; a transient error returns (the next look resumes).
fn work(cfg: &LibvirtConfig, uuid: &str, token: &str) -> Result<(), AdapterError> {
    for _ in 0..MAX_STEPS {
        let c = connect(cfg)?;
        let d = domain(&c, uuid)?;
        let Some(record) = read_record(&d)?.filter(|r| r.token.as_deref() == Some(token)) else {
            return Ok(());
        };
        match step(cfg, &c, &d, &record, token) {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                let failed = Record {
                    progress: Some(Progress::Failed),
                    message: Some(e.to_string()),
                    ..record
                };
                write_record(&d, &failed)?;
                return Ok(());
            }
        }
    }
    Err(AdapterError::Backend {
        message: format!("the reprovision of {uuid} did not settle in {MAX_STEPS} steps"),
        source: None,
    })
}

/// Take the next step; false once there is none.
fn step(
    cfg: &LibvirtConfig,
    c: &Connect,
    d: &Domain,
    record: &Record,
    token: &str,
) -> Result<bool, AdapterError> {
    let os = record.os.as_deref().unwrap_or_default();
    let image = image_volume(c, cfg, os)?;
    let inactive = d
        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(|e| conn::call("domain XML", &e))?;
    let disk = xml::root_disk(&inactive, cfg.root_disk.as_deref())
        .map_err(|e| AdapterError::Config(e.to_string()))?;
    let (disk_vol, pool) = source_volume(c, &disk.source)?;
    let name = d.name().map_err(|e| conn::call("domain name", &e))?;
    let target = steps::target_volume(&name, token, &image);
    let exists = |v: &str| pool.lookup_storage_vol_by_name(v).is_ok();
    let previous = record.previous.as_deref().unwrap_or_default();
    let disk_volume = volume_name(&disk_vol)?;
    let observed = Observed {
        record,
        active: d.is_active().map_err(|e| conn::call("domain state", &e))?,
        disk_volume: &disk_volume,
        target_volume: &target,
        target_exists: exists(&target),
        previous_exists: !previous.is_empty() && exists(previous),
    };
    let next = steps::next_step(&observed);
    tracing::debug!(domain = %name, ?next, "libvirt reprovision step");
    match next {
        Step::PowerOff => d
            .destroy()
            .map_err(|e| conn::call("powering the domain off", &e))?,
        Step::Clone => {
            let image_pool = c
                .lookup_storage_pool_by_name(&cfg.image_pool)
                .map_err(|e| conn::call("image pool", &e))?;
            let src = image_pool
                .lookup_storage_vol_by_name(&image)
                .map_err(|e| conn::call(&format!("image volume {image}"), &e))?;
            let capacity = src
                .info()
                .map_err(|e| conn::call("image volume", &e))?
                .capacity;
            let format = src.xml_desc(0).ok().and_then(|x| xml::volume_format(&x));
            let spec = xml::volume_xml(&target, capacity, format.as_deref());
            StorageVol::create_xml_from(&pool, &spec, &src, 0)
                .map_err(|e| conn::call(&format!("cloning {image} into {target}"), &e))?;
        }
        Step::SwitchDisk => {
            let source = match &disk.source {
                DiskSource::File(_) => {
                    let vol = pool
                        .lookup_storage_vol_by_name(&target)
                        .map_err(|e| conn::call("the fresh volume", &e))?;
                    DiskSource::File(vol.path().map_err(|e| conn::call("volume path", &e))?)
                }
                DiskSource::Volume { pool, .. } => DiskSource::Volume {
                    pool: pool.clone(),
                    volume: target.clone(),
                },
            };
            let redefined = xml::with_disk_source(&inactive, &disk, &source);
            c.define_domain_xml(&redefined)
                .map_err(|e| conn::call("pointing the root disk at the fresh volume", &e))?;
        }
        Step::DeletePrevious => pool
            .lookup_storage_vol_by_name(previous)
            .and_then(|v| v.delete(0))
            .map_err(|e| conn::call(&format!("deleting the replaced volume {previous}"), &e))?,
        Step::Start => d
            .create()
            .map_err(|e| conn::call("starting the domain", &e))?,
        Step::MarkDone => write_record(
            d,
            &Record {
                progress: Some(Progress::Done),
                ..record.clone()
            },
        )?,
        Step::Finished => return Ok(false),
    }
    Ok(true)
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
        Ok(Box::pin(stream))
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let cfg = self.cfg.clone();
        blocking(move || {
            let c = connect(&cfg)?;
            let os = catalogue(&c, &cfg)?;
            let domains = c
                .list_all_domains(0)
                .map_err(|e| conn::call("listing domains", &e))?;
            let mut hosts = Vec::new();
            for d in &domains {
                match host(d, &cfg, &os) {
                    Ok(Some(h)) => hosts.push(h),
                    Ok(None) | Err(AdapterError::UnknownHost(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Inventory { hosts })
        })
        .await
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
    ) -> Result<OperationStatus, AdapterError> {
        let (cfg, uuid, os2, token2) = (
            self.cfg.clone(),
            host_id.to_string(),
            os.to_string(),
            token.to_string(),
        );
        let status = blocking(move || record_intent(&cfg, &uuid, &os2, &token2)).await?;
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
            self.ensure_worker(host_id, token);
        }
        Ok(Some(status))
    }

    async fn cancel(&self, _host_id: &str, _token: &str) -> Result<CancelOutcome, AdapterError> {
        // Each step is short and the disk may already be replaced: the operation runs to its end.
        Ok(CancelOutcome::Unsupported)
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
