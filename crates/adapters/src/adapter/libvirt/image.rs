//! The `image` strategy against libvirt: the intent recorded, then the steps of [`super::steps`]
//! performed, one libvirt call per step, each decided from what libvirt shows (see that module
//! for why a restart at any point repeats nothing). With configuration, the operation record in
//! the store (shared with the `iso` strategy and Redfish) holds the callback's secret and the
//! first boot's report; the seed's volume is named after the token (`drive`).
use super::adapter::{
    connect, domain, image_volume, read_record, source_volume, status_of, volume_name, write_record,
};
use super::conn;
use super::conn::blocking;
use super::drive;
use super::seed;
use super::steps::{self, Observed, Seed, Step};
use super::xml::{self, DiskSource, Progress, Record};
use super::LibvirtConfig;
use crate::adapter::store::{self, OpRecord, OpStore, OutcomeKind, StoreError};
use crate::adapter::{AdapterError, HostConfig, OperationStatus};
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;
use virt::sys;

/// Check and record `token`'s intent to put `os` on `uuid`. A custom `config` goes on a seed
/// (a NoCloud drive carrying the callback URL for the new disk's first boot): the operation
/// record (the callback's secret) is created and the drive uploaded before the domain's record
/// names it, so a restart finds everything the record names.
pub(super) async fn start(
    cfg: &Arc<LibvirtConfig>,
    store: Option<&dyn OpStore>,
    target: (&str, &str, &str),
    config: &HostConfig,
) -> Result<OperationStatus, AdapterError> {
    let (uuid, os, token) = (
        target.0.to_string(),
        target.1.to_string(),
        target.2.to_string(),
    );
    let (c2, u2, o2, t2) = (cfg.clone(), uuid.clone(), os.clone(), token.clone());
    let existing = blocking(move || check(&c2, &u2, &o2, &t2)).await?;
    if let Some(record) = existing {
        return Ok(status_of(&uuid, &record));
    }
    let seed = if config.is_custom() {
        let base = cfg.callback_base.clone().ok_or_else(|| {
            AdapterError::Config(
                "the provisioning callback endpoint is off (set --callback-addr); the new disk's \
                 first boot cannot report, so its configuration cannot be delivered"
                    .into(),
            )
        })?;
        let store = store.ok_or_else(|| {
            AdapterError::Config("configuration needs the dispatcher's operation store".into())
        })?;
        let op = store
            .create(OpRecord::starting(&token, &uuid, &os, ""))
            .await
            .map_err(StoreError::into_adapter)?;
        let bytes = config
            .drive_iso(Some(&op.callback_url(&base)))
            .map_err(|e| AdapterError::Config(format!("the config drive: {e}")))?;
        let (c2, u2, t2) = (cfg.clone(), uuid.clone(), token.clone());
        Some(blocking(move || drive::upload(&c2, &u2, &t2, &bytes)).await?)
    } else {
        None
    };
    let (c2, u2) = (cfg.clone(), uuid.clone());
    blocking(move || record_intent(&c2, &u2, &os, &token, seed)).await
}

/// This token's record when the domain has it already; refusals (another operation, an unknown
/// OS) before anything is written.
fn check(
    cfg: &LibvirtConfig,
    uuid: &str,
    os: &str,
    token: &str,
) -> Result<Option<Record>, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    let record = read_record(&d)?.unwrap_or_default();
    if record.token.as_deref() == Some(token) {
        return Ok(Some(record));
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
    Ok(None)
}

/// Write the domain's record of the operation (after [`check`]).
fn record_intent(
    cfg: &LibvirtConfig,
    uuid: &str,
    os: &str,
    token: &str,
    seed: Option<String>,
) -> Result<OperationStatus, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    if let Some(record) = check(cfg, uuid, os, token)? {
        return Ok(status_of(uuid, &record));
    }
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
        installer: None,
        seed,
    };
    write_record(&d, &next)?;
    Ok(status_of(uuid, &next))
}

/// A worker gives up after this many steps (the machine needs at most nine).
const MAX_STEPS: usize = 16;

/// What the operation record says of a seeded operation's report: the outcome (a record gone
/// reads as cancelled), its message, and whether the callback timeout passed without one.
#[derive(Clone, Debug, Default)]
pub(super) struct Report {
    pub outcome: Option<OutcomeKind>,
    pub message: Option<String>,
    pub timed_out: bool,
}

/// Read the report of `token` (only operations with a seed have a record).
async fn report(
    cfg: &LibvirtConfig,
    store: Option<&dyn OpStore>,
    token: &str,
) -> Result<Report, AdapterError> {
    let Some(store) = store else {
        return Ok(Report::default());
    };
    let Some(op) = store.get(token).await.map_err(StoreError::into_adapter)? else {
        return Ok(Report {
            outcome: Some(OutcomeKind::Cancelled),
            message: Some("the request's operation record is gone".into()),
            timed_out: false,
        });
    };
    let waited = Timestamp::now().duration_since(op.started_at);
    Ok(Report {
        outcome: op.outcome.as_ref().map(|o| o.kind),
        message: op.outcome.map(|o| o.message).filter(|m| !m.is_empty()),
        timed_out: std::time::Duration::try_from(waited).unwrap_or_default()
            >= cfg.callback_timeout,
    })
}

/// Carry `token`'s operation on `uuid` as far as it goes now, one step at a time; `Ok(true)` once
/// it is finished. A refusal only a person can fix ends the operation as failed; a transient
/// error returns (the next look resumes). A seeded operation waits for its report: the worker
/// returns, and the report (or the engine's next look) resumes it.
pub(super) async fn work(
    cfg: Arc<LibvirtConfig>,
    store: Option<Arc<dyn OpStore>>,
    uuid: String,
    token: String,
) -> Result<bool, AdapterError> {
    for _ in 0..MAX_STEPS {
        let r = report(&cfg, store.as_deref(), &token).await?;
        let (c2, u2, t2, r2) = (cfg.clone(), uuid.clone(), token.clone(), r.clone());
        let taken = blocking(move || look_and_step(&c2, &u2, &t2, &r2)).await?;
        match taken {
            Some(Step::Wait) => return Ok(false),
            Some(Step::Finished) | None => return Ok(true),
            Some(Step::RecordTimeout) => {
                if let Some(store) = store.as_deref() {
                    let message = format!(
                        "no report from the new disk's first boot within {}s (callbackTimeout)",
                        cfg.callback_timeout.as_secs()
                    );
                    store::record_outcome(store, &token, OutcomeKind::Failed, &message)
                        .await
                        .map_err(StoreError::into_adapter)?;
                }
            }
            Some(Step::MarkFinished(_)) => {
                if let Some(store) = store.as_deref() {
                    store::mutate(store, &token, |op| op.cleaned = true)
                        .await
                        .map_err(StoreError::into_adapter)?;
                }
            }
            Some(_) => {}
        }
    }
    Err(AdapterError::Backend {
        message: format!("the reprovision of {uuid} did not settle in {MAX_STEPS} steps"),
        source: None,
    })
}

/// Look at the domain and take its next step; the step taken, `None` when the domain's record is
/// no longer this token's. A refusal only a person can fix is recorded as the failure.
fn look_and_step(
    cfg: &LibvirtConfig,
    uuid: &str,
    token: &str,
    report: &Report,
) -> Result<Option<Step>, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    let Some(record) = read_record(&d)?.filter(|r| r.token.as_deref() == Some(token)) else {
        return Ok(None);
    };
    match step(cfg, &c, &d, &record, token, report) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            let failed = Record {
                progress: Some(Progress::Failed),
                message: Some(e.to_string()),
                ..record
            };
            write_record(&d, &failed)?;
            Ok(Some(Step::Finished))
        }
    }
}

/// Take the next step; the step taken.
fn step(
    cfg: &LibvirtConfig,
    c: &Connect,
    d: &Domain,
    record: &Record,
    token: &str,
    report: &Report,
) -> Result<Step, AdapterError> {
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
    let seed = match &record.seed {
        Some(path) => Some(Seed {
            attached: seed::attached(&inactive, path).map_err(seed_err)?,
            outcome: report.outcome,
            timed_out: report.timed_out,
        }),
        None => None,
    };
    let observed = Observed {
        record,
        active: d.is_active().map_err(|e| conn::call("domain state", &e))?,
        disk_volume: &disk_volume,
        target_volume: &target,
        target_exists: exists(&target),
        previous_exists: !previous.is_empty() && exists(previous),
        seed,
    };
    let next = steps::next_step(&observed);
    tracing::debug!(domain = %name, ?next, "libvirt reprovision step");
    let seed_path = record.seed.as_deref().unwrap_or_default();
    match next {
        Step::PowerOff => d
            .destroy()
            .map_err(|e| conn::call("powering the domain off", &e))?,
        Step::Clone => clone(cfg, c, &pool, &image, &target)?,
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
        Step::AttachSeed => {
            let with = seed::attach(&inactive, seed_path).map_err(seed_err)?;
            c.define_domain_xml(&with)
                .map_err(|e| conn::call("attaching the config drive", &e))?;
        }
        Step::DetachSeed => {
            if d.is_active().unwrap_or(false) {
                let live = d.xml_desc(0).unwrap_or_default();
                for eject in seed::eject_elements(&live, seed_path) {
                    // Best effort: the definition below is what the next boot sees.
                    if let Err(e) = d.update_device_flags(&eject, sys::VIR_DOMAIN_AFFECT_LIVE) {
                        tracing::warn!(error = %e.message(), "ejecting the config drive from the running domain failed");
                    }
                }
            }
            let without = seed::detach(&inactive, seed_path).map_err(seed_err)?;
            c.define_domain_xml(&without)
                .map_err(|e| conn::call("removing the config drive", &e))?;
        }
        Step::MarkFinished(kind) => {
            // The seed holds the host's configuration and the callback credential.
            if record.seed.is_some() {
                drive::delete(cfg, seed_path)?;
            }
            write_record(
                d,
                &Record {
                    progress: Some(match kind {
                        OutcomeKind::Succeeded => Progress::Done,
                        OutcomeKind::Failed => Progress::Failed,
                        OutcomeKind::Cancelled => Progress::Cancelled,
                    }),
                    message: (kind != OutcomeKind::Succeeded)
                        .then(|| report.message.clone())
                        .flatten(),
                    ..record.clone()
                },
            )?
        }
        Step::Wait | Step::RecordTimeout | Step::Finished => {}
    }
    Ok(next)
}

fn seed_err(e: xml::XmlError) -> AdapterError {
    AdapterError::Config(format!("image strategy config drive: {e}"))
}

/// Clone the image volume into the operation's target volume.
fn clone(
    cfg: &LibvirtConfig,
    c: &Connect,
    pool: &virt::storage_pool::StoragePool,
    image: &str,
    target: &str,
) -> Result<(), AdapterError> {
    let image_pool = c
        .lookup_storage_pool_by_name(&cfg.image_pool)
        .map_err(|e| conn::call("image pool", &e))?;
    let src = image_pool
        .lookup_storage_vol_by_name(image)
        .map_err(|e| conn::call(&format!("image volume {image}"), &e))?;
    let capacity = src
        .info()
        .map_err(|e| conn::call("image volume", &e))?
        .capacity;
    let format = src.xml_desc(0).ok().and_then(|x| xml::volume_format(&x));
    let spec = xml::volume_xml(target, capacity, format.as_deref());
    StorageVol::create_xml_from(pool, &spec, &src, 0)
        .map_err(|e| conn::call(&format!("cloning {image} into {target}"), &e))?;
    Ok(())
}
