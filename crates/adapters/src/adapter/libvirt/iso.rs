//! The `iso` strategy against libvirt: the steps of [`super::iso_steps`] performed.
//!
//! - `start` refuses what cannot work before anything is written (no callback endpoint, an image
//!   that is not a volume, a domain whose XML the strategy cannot change), then creates the
//!   operation record (a Secret holding the callback secret, shared with the Redfish adapter's
//!   callback endpoint) and the domain's metadata record.
//! - `work` takes steps until the installer runs (then it returns; the callback or the next look
//!   resumes it) or the operation is finished. Each step reads libvirt and the record afresh.
//! - The live domain: detaching ejects the ISO from the running domain too, so a reboot of the
//!   freshly installed guest does not start the installer again; the definition's boot order and
//!   SMBIOS strings are restored for its next cold start.
use super::adapter::{catalogue_volume, connect, domain, read_record, write_record};
use super::conn::{self, blocking};
use super::drive;
use super::installer::{self, Undo};
use super::iso_steps::{self, Observed, Step};
use super::xml::{Installer, Progress, Record};
use super::LibvirtConfig;
use crate::adapter::store::{self, OpRecord, OpStore, Outcome, OutcomeKind, StoreError};
use crate::adapter::{AdapterError, HostConfig};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;
use virt::domain::Domain;
use virt::sys;

/// A worker gives up after this many steps (a whole operation takes at most eight).
const MAX_STEPS: usize = 16;

fn store_err(e: StoreError) -> AdapterError {
    e.into_adapter()
}

fn config_err(e: super::xml::XmlError) -> AdapterError {
    AdapterError::Config(format!("iso strategy: {e}"))
}

fn inactive_xml(d: &Domain) -> Result<String, AdapterError> {
    d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(|e| conn::call("domain XML", &e))
}

/// Check and record `token`'s intent to install `os` on `uuid`; the domain's record of this
/// token. A custom `config` is rendered on a config drive, uploaded as a volume of the image pool
/// before the domain's record names it.
pub(super) async fn start(
    cfg: &std::sync::Arc<LibvirtConfig>,
    store: &dyn OpStore,
    target: (&str, &str, &str),
    config: &HostConfig,
) -> Result<Record, AdapterError> {
    let (uuid, os, token) = target;
    let base = cfg.callback_base.clone().ok_or_else(|| {
        AdapterError::Config(
            "the provisioning callback endpoint is off (set --callback-addr); an iso reprovision \
             cannot complete without it"
                .into(),
        )
    })?;
    let (c2, u2, o2, t2, b2) = (
        cfg.clone(),
        uuid.to_string(),
        os.to_string(),
        token.to_string(),
        base.clone(),
    );
    let checked = blocking(move || {
        let c = connect(&c2)?;
        let d = domain(&c, &u2)?;
        let record = read_record(&d)?.unwrap_or_default();
        if record.token.as_deref() == Some(t2.as_str()) {
            return Ok(Err(record));
        }
        if record.progress == Some(Progress::Recorded) {
            return Err(AdapterError::HostBusy {
                host: u2.clone(),
                token: record.token.unwrap_or_default(),
            });
        }
        let iso = catalogue_volume(&c, &c2, &u2, &o2)?
            .path()
            .map_err(|e| conn::call("the image volume's path", &e))?;
        // Refuse a domain the strategy cannot change before anything is recorded.
        installer::attach(&inactive_xml(&d)?, &iso, Some(&iso), &b2).map_err(config_err)?;
        Ok(Ok(iso))
    })
    .await?;
    let iso = match checked {
        Err(existing) => return Ok(existing),
        Ok(iso) => iso,
    };
    let op = store
        .create(OpRecord {
            boot_override: Some("cdrom".into()),
            ..OpRecord::starting(token, uuid, os, &iso)
        })
        .await
        .map_err(store_err)?;
    let drive = if config.is_custom() {
        let url = op.callback_url(&base);
        let bytes = config
            .drive_iso(Some(&url))
            .map_err(|e| AdapterError::Config(format!("the config drive: {e}")))?;
        let (c2, u2, t2) = (cfg.clone(), uuid.to_string(), token.to_string());
        Some(blocking(move || drive::upload(&c2, &u2, &t2, &bytes)).await?)
    } else {
        None
    };
    let record = Record {
        os: Some(os.to_string()),
        token: Some(token.to_string()),
        progress: Some(Progress::Recorded),
        previous: None,
        message: None,
        installer: Some(Installer {
            iso,
            drive,
            ..Default::default()
        }),
        seed: None,
    };
    let (c2, u2, r2) = (cfg.clone(), uuid.to_string(), record.clone());
    blocking(move || write_record(&domain(&connect(&c2)?, &u2)?, &r2)).await?;
    Ok(record)
}

/// Record a cancel as the operation's outcome (the worker then restores the domain).
pub(super) async fn cancel(store: &dyn OpStore, token: &str) -> Result<bool, AdapterError> {
    let mut cancelled = false;
    store::mutate(store, token, |r| {
        if r.outcome.is_none() {
            r.outcome = Some(Outcome {
                kind: OutcomeKind::Cancelled,
                message: "cancelled through osprov".into(),
                at: Timestamp::now(),
            });
        }
    })
    .await
    .map_err(store_err)?
    .inspect(|r| {
        cancelled = r
            .outcome
            .as_ref()
            .is_some_and(|o| o.kind == OutcomeKind::Cancelled)
    });
    Ok(cancelled)
}

/// What one look at libvirt found.
struct Look {
    d: Domain,
    record: Record,
    xml: String,
    observed: Observed,
}

fn look(
    cfg: &LibvirtConfig,
    uuid: &str,
    token: &str,
    outcome: Option<OutcomeKind>,
    timed_out: bool,
) -> Result<Option<Look>, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    let Some(record) = read_record(&d)?.filter(|r| r.token.as_deref() == Some(token)) else {
        return Ok(None);
    };
    let inst = record.installer.clone().unwrap_or_default();
    let xml = inactive_xml(&d)?;
    let attached = match &inst.undo {
        Some(u) => installer::attached(&xml, &u.cdrom, &inst.iso).map_err(config_err)?,
        None => false,
    };
    let active = d.is_active().map_err(|e| conn::call("domain state", &e))?;
    let observed = Observed {
        finished: record.progress.is_some_and(Progress::is_finished),
        attached,
        active,
        id: if active { d.id() } else { None },
        reset_from: inst.reset_from.clone(),
        started: inst.started,
        run: inst.run.is_some(),
        installed_boot: inst.installed_boot,
        outcome,
        timed_out,
    };
    Ok(Some(Look {
        d,
        record,
        xml,
        observed,
    }))
}

fn with_installer(record: &Record, f: impl FnOnce(&mut Installer)) -> Record {
    let mut next = record.clone();
    let mut inst = next.installer.take().unwrap_or_default();
    f(&mut inst);
    next.installer = Some(inst);
    next
}

/// Carry `token`'s operation on `uuid` as far as it goes now. `Ok(true)` once it is finished.
pub(super) async fn work(
    cfg: std::sync::Arc<LibvirtConfig>,
    store: std::sync::Arc<dyn OpStore>,
    uuid: String,
    token: String,
) -> Result<bool, AdapterError> {
    for _ in 0..MAX_STEPS {
        let op = store.get(&token).await.map_err(store_err)?;
        // A record gone means the request is gone (its Secret is garbage-collected with it).
        let outcome = match &op {
            Some(op) => op.outcome.as_ref().map(|o| o.kind),
            None => Some(OutcomeKind::Cancelled),
        };
        let timed_out = op.as_ref().is_some_and(|op| {
            op.outcome.is_none()
                && op.reset_requested_at.is_some_and(|t| {
                    let waited = Timestamp::now().duration_since(t);
                    Duration::try_from(waited).unwrap_or(Duration::ZERO) >= cfg.callback_timeout
                })
        });
        let (c2, u2, t2) = (cfg.clone(), uuid.clone(), token.clone());
        let Some(l) = blocking(move || look(&c2, &u2, &t2, outcome, timed_out)).await? else {
            return Ok(true);
        };
        let step = iso_steps::next_step(&l.observed);
        tracing::debug!(domain = %uuid, ?step, "libvirt iso step");
        let began = std::time::Instant::now();
        match step {
            Step::Wait => return Ok(false),
            Step::Finished => return Ok(true),
            Step::RecordTimeout => {
                let message = format!(
                    "no callback from the installer within {}s of the power cycle (callbackTimeout)",
                    cfg.callback_timeout.as_secs()
                );
                store::record_outcome(store.as_ref(), &token, OutcomeKind::Failed, &message)
                    .await
                    .map_err(store_err)?;
            }
            Step::RecordReset => {
                store::mutate(store.as_ref(), &token, |r| {
                    r.reset_requested_at.get_or_insert(Timestamp::now());
                })
                .await
                .map_err(store_err)?;
                let from = iso_steps::reset_from(l.observed.active, l.observed.id);
                let next = with_installer(&l.record, |i| i.reset_from = Some(from));
                blocking(move || write_record(&l.d, &next)).await?;
            }
            Step::MarkFinished(kind) => {
                let message = op
                    .as_ref()
                    .and_then(|o| o.outcome.as_ref())
                    .map(|o| o.message.clone())
                    .filter(|m| !m.is_empty());
                if op.is_some() {
                    store::mutate(store.as_ref(), &token, |r| r.cleaned = true)
                        .await
                        .map_err(store_err)?;
                }
                // The drive holds the host's secrets and the callback credential: gone with
                // the operation.
                if let Some(path) = l.record.installer.as_ref().and_then(|i| i.drive.clone()) {
                    let c2 = cfg.clone();
                    blocking(move || drive::delete(&c2, &path)).await?;
                }
                let next = Record {
                    progress: Some(match kind {
                        OutcomeKind::Succeeded => Progress::Done,
                        OutcomeKind::Failed => Progress::Failed,
                        OutcomeKind::Cancelled => Progress::Cancelled,
                    }),
                    message: message.or_else(|| {
                        (kind == OutcomeKind::Cancelled && op.is_none())
                            .then(|| "the request's operation record is gone".to_string())
                    }),
                    ..l.record.clone()
                };
                blocking(move || write_record(&l.d, &next)).await?;
            }
            Step::Attach => {
                let base = cfg.callback_base.clone().unwrap_or_default();
                let url = op
                    .as_ref()
                    .map(|o| o.callback_url(&base))
                    .unwrap_or_default();
                blocking(move || attach(&l, &url)).await?;
            }
            Step::PowerOff
            | Step::Start
            | Step::AdoptStart
            | Step::RecordRun
            | Step::BootInstalled
            | Step::Detach => {
                blocking(move || libvirt_step(step, &l)).await?;
            }
        }
        tracing::debug!(domain = %uuid, ?step, elapsed = ?began.elapsed(), "libvirt iso step taken");
    }
    Err(AdapterError::Backend {
        message: format!("the iso reprovision of {uuid} did not settle in {MAX_STEPS} steps"),
        source: None,
    })
}

/// Record the undo, then redefine the domain with the installer attached.
fn attach(l: &Look, url: &str) -> Result<(), AdapterError> {
    let inst = l.record.installer.clone().unwrap_or_default();
    let drive = inst.drive.as_deref();
    let (_, undo) = installer::attach(&l.xml, &inst.iso, drive, url).map_err(config_err)?;
    if inst.undo.as_ref() != Some(&undo) {
        write_record(&l.d, &with_installer(&l.record, |i| i.undo = Some(undo)))?;
    }
    // Read again: the definition must carry the record just written.
    let (xml, _) =
        installer::attach(&inactive_xml(&l.d)?, &inst.iso, drive, url).map_err(config_err)?;
    let c =
        l.d.connect()
            .map_err(|e| conn::call("domain connection", &e))?;
    c.define_domain_xml(&xml)
        .map_err(|e| conn::call("attaching the installer ISO", &e))?;
    Ok(())
}

/// What attaching changed, as the domain's record keeps it.
fn undo_of(l: &Look) -> Undo {
    l.record
        .installer
        .as_ref()
        .and_then(|i| i.undo.clone())
        .unwrap_or_default()
}

/// Redefine the domain without what attaching changed.
fn restore(l: &Look) -> Result<(), AdapterError> {
    let undo = undo_of(l);
    // Read again: the definition carries the record as last written.
    let restored = installer::detach(&inactive_xml(&l.d)?, &undo).map_err(config_err)?;
    let c =
        l.d.connect()
            .map_err(|e| conn::call("domain connection", &e))?;
    c.define_domain_xml(&restored)
        .map_err(|e| conn::call("restoring the domain after the install", &e))?;
    Ok(())
}

/// Ejects one CD-ROM from the running domain; whether it came out. The guest may hold the tray
/// locked (a mounted installer medium does), so the eject is forced, and it is tried again while
/// QEMU refuses (seen in CI: "Tray of device … is not open", when the guest closed the tray
/// between libvirt's open and its removal of the medium). Drivers without live media changes
/// (libvirt's test driver, ESX) say so at once.
fn eject_live(d: &Domain, eject: &str) -> bool {
    let flags = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_DEVICE_MODIFY_FORCE;
    for attempt in 1..=EJECT_TRIES {
        match d.update_device_flags(eject, flags) {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e.message(), attempt, "ejecting a CD-ROM of the operation from the running domain failed");
                // A driver that cannot change media on a running domain will not learn to.
                if conn::unsupported(&e) {
                    return false;
                }
                if attempt < EJECT_TRIES {
                    std::thread::sleep(EJECT_PAUSE);
                }
            }
        }
    }
    false
}

const EJECT_TRIES: u32 = 5;
const EJECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

fn libvirt_step(step: Step, l: &Look) -> Result<(), AdapterError> {
    let d = &l.d;
    match step {
        Step::PowerOff => d
            .destroy()
            .map_err(|e| conn::call("powering the domain off", &e)),
        Step::AdoptStart => write_record(d, &with_installer(&l.record, |i| i.started = true)),
        Step::RecordRun => {
            let run = d
                .id()
                .map(|id| id.to_string())
                .unwrap_or_else(|| "?".into());
            write_record(d, &with_installer(&l.record, |i| i.run = Some(run)))
        }
        Step::BootInstalled => {
            let booted = with_installer(&l.record, |i| i.installed_boot = true);
            write_record(d, &booted)?;
            restore(l)?;
            d.create()
                .map(|_| ())
                .map_err(|e| conn::call("starting the installed OS", &e))
        }
        Step::Start => {
            write_record(d, &with_installer(&l.record, |i| i.started = true))?;
            if let Err(e) = d.create() {
                // libvirt said no: the domain did not start, so a later try is no second start.
                write_record(d, &l.record)?;
                return Err(conn::call("starting the domain with the installer", &e));
            }
            Ok(())
        }
        Step::Detach => {
            let undo = undo_of(l);
            let stuck = l.observed.active
                && !installer::eject_elements(&l.xml, &undo)
                    .iter()
                    .all(|eject| eject_live(d, eject));
            if !stuck {
                return restore(l);
            }
            // A medium that stays in would boot the installer again on the guest's next
            // reboot: power the domain off, restore, and start it from the restored definition.
            // A controller that dies in between leaves the domain off, never re-installing.
            tracing::warn!(
                "a CD-ROM of the operation stayed in the running domain: restarting it without"
            );
            d.destroy()
                .map_err(|e| conn::call("powering off a domain that kept the installer", &e))?;
            restore(l)?;
            d.create()
                .map(|_| ())
                .map_err(|e| conn::call("starting the domain without the installer", &e))
        }
        Step::Attach
        | Step::RecordReset
        | Step::Wait
        | Step::RecordTimeout
        | Step::MarkFinished(_)
        | Step::Finished => Ok(()),
    }
}
