//! The `image` strategy against libvirt: the intent recorded, then the steps of [`super::steps`]
//! performed, one libvirt call per step, each decided from what libvirt shows (see that module
//! for why a restart at any point repeats nothing).
use super::adapter::{
    connect, domain, image_volume, read_record, source_volume, status_of, volume_name, write_record,
};
use super::conn;
use super::steps::{self, Observed, Step};
use super::xml::{self, DiskSource, Progress, Record};
use super::LibvirtConfig;
use crate::adapter::{AdapterError, OperationStatus};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;
use virt::sys;

/// Record the intent of `token` on `uuid` (after the checks a refusal must come from).
pub(super) fn record_intent(
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
        installer: None,
    };
    write_record(&d, &next)?;
    Ok(status_of(uuid, &next))
}

/// A worker gives up after this many steps (the machine needs at most six).
const MAX_STEPS: usize = 16;

/// Carry `token`'s operation on `uuid` to its end, one step at a time. A refusal only a person
/// can fix ends the operation as failed; a transient error returns (the next look resumes).
pub(super) fn work(cfg: &LibvirtConfig, uuid: &str, token: &str) -> Result<(), AdapterError> {
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
