//! The `template` strategy on vSphere performed: the worker that takes the steps of
//! [`super::template`], each decided from a fresh read of the VM and the operation record, with
//! vCenter's tasks awaited to their end. A fault vCenter reports (a missing template file, a
//! refused reconfigure) becomes the request's failure; an unreachable vCenter only pauses the
//! worker until the next look.
use super::adapter::{soap_err, Inner};
use super::model::{keys, Disk, Vm};
use super::soap::{MoRef, SoapError};
use super::template::{self, keys as tkeys, Observed, Step};
use super::work::{mark_cleaned, reconfigure, store_err, task, MAX_STEPS};
use crate::adapter::store::{self, OpRecord, OutcomeKind};
use crate::adapter::AdapterError;
use crate::api::VsphereImage;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;

/// The boot disk of `image`'s template (a VM marked as template, found by name).
pub(super) async fn template_disk(
    inner: &Arc<Inner>,
    image: &VsphereImage,
) -> Result<Disk, AdapterError> {
    let name = image.template.as_deref().ok_or_else(|| {
        AdapterError::Config(format!(
            "image {} has no template (strategy template)",
            image.name
        ))
    })?;
    let find = |inner: &Inner| {
        inner
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|v| v.template && v.name == name)
            .cloned()
    };
    let vm = match find(inner) {
        Some(vm) => vm,
        None => {
            inner.discover().await?;
            find(inner).ok_or_else(|| {
                AdapterError::Config(format!(
                    "template {name} (image {}) is not a template in vCenter",
                    image.name
                ))
            })?
        }
    };
    vm.boot_disk()
        .filter(|d| d.file.is_some())
        .cloned()
        .ok_or_else(|| AdapterError::Config(format!("template {name} has no file-backed disk")))
}

/// The datacenter above `vm` (copies and deletes of datastore files name it).
async fn datacenter(inner: &Inner, vm: &MoRef) -> Result<MoRef, SoapError> {
    let sc = inner.soap.service_content().await?;
    let text = inner
        .soap
        .call(&template::datacenter_of(&sc.property_collector, vm))
        .await?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| SoapError::Malformed(e.to_string()))?;
    doc.descendants()
        .filter(|n| n.has_tag_name("obj"))
        .map(super::soap::moref)
        .find(|m| m.kind == "Datacenter")
        .ok_or_else(|| SoapError::Malformed(format!("no datacenter above {}", vm.value)))
}

async fn disk_manager(inner: &Inner) -> Result<MoRef, SoapError> {
    inner
        .soap
        .service_content()
        .await?
        .virtual_disk_manager
        .ok_or_else(|| SoapError::Malformed("the service has no VirtualDiskManager".into()))
}

fn observe(vm: &Vm, rec: Option<&OpRecord>, token: &str) -> Observed {
    let recorded = vm.extra(keys::TOKEN) == Some(token);
    let target = vm.extra(tkeys::DISK).filter(|_| recorded);
    Observed {
        recorded,
        finished: recorded
            && matches!(
                vm.extra(keys::PROGRESS),
                Some("done" | "failed" | "cancelled")
            ),
        copied: rec.is_some_and(|r| r.copied_at.is_some()),
        swapped: target.is_some_and(|t| vm.disks.iter().any(|d| d.file.as_deref() == Some(t))),
        boot_stale: template::boot_stale(vm),
        running: vm.power == "poweredOn",
        // A record gone means the request is gone (its Secret is collected with it).
        outcome: match rec {
            Some(r) => r.outcome.as_ref().map(|o| o.kind),
            None => Some(OutcomeKind::Cancelled),
        },
    }
}

/// A fault vCenter reported is the request's failure; anything else is retried later.
async fn failed(inner: &Inner, token: &str, what: &str, e: SoapError) -> Result<(), AdapterError> {
    let SoapError::Fault { kind, message } = &e else {
        return Err(soap_err(e));
    };
    if kind == "TaskTimeout" {
        return Err(soap_err(e));
    }
    let message = format!("{what} failed: {message} ({kind})");
    store::record_outcome(inner.store.as_ref(), token, OutcomeKind::Failed, &message)
        .await
        .map_err(store_err)?;
    Ok(())
}

/// Whether `e` says the VM already is in the power state asked for (nothing to do).
fn already(e: &SoapError) -> bool {
    matches!(e, SoapError::Fault { kind, .. } if kind == "InvalidPowerState")
}

/// Carry `token`'s operation on `host` as far as it goes now; true once it is finished.
pub(super) async fn run(inner: &Arc<Inner>, host: &str, token: &str) -> Result<bool, AdapterError> {
    for _ in 0..MAX_STEPS {
        let rec = inner.store.get(token).await.map_err(store_err)?;
        let moref = inner.moref_of(host).await?;
        let vm = inner
            .vm(&moref)
            .await
            .map_err(soap_err)?
            .ok_or_else(|| AdapterError::UnknownHost(host.to_string()))?;
        let step = template::next_step(&observe(&vm, rec.as_ref(), token));
        tracing::debug!(host, ?step, "vSphere template step");
        let target = vm.extra(tkeys::DISK).unwrap_or_default().to_string();
        match (step, rec) {
            (Step::Finished, _) => return Ok(true),
            (Step::MarkDone(kind), rec) => {
                let progress = if kind == OutcomeKind::Failed {
                    "failed"
                } else {
                    "done"
                };
                reconfigure(inner, &template::finish(&moref, progress))
                    .await
                    .map_err(soap_err)?;
                mark_cleaned(inner, token, rec.is_some()).await?;
                return Ok(true);
            }
            (Step::Abandon(kind), rec) => {
                abandon(inner, &vm, &moref, &target, kind).await?;
                mark_cleaned(inner, token, rec.is_some()).await?;
                return Ok(true);
            }
            (Step::PowerOn, _) => match task(inner, "PowerOnVM_Task", &moref, "").await {
                Ok(()) => {}
                Err(e) if already(&e) => {}
                Err(e) => failed(inner, token, "powering the VM on", e).await?,
            },
            (Step::FixBoot, _) => {
                let body =
                    template::fix_boot(&vm, &moref, &target).map_err(AdapterError::Config)?;
                reconfigure(inner, &body).await.map_err(soap_err)?;
            }
            (_, None) => return Ok(true),
            (Step::Record, Some(rec)) => {
                let image = inner.cfg.images.iter().find(|i| i.name == rec.os);
                let capacity = match image {
                    Some(i) => template_disk(inner, i).await?.capacity_kb,
                    None => None,
                };
                let target = template::target_file(&vm, token).map_err(AdapterError::Config)?;
                let body = template::record(
                    &vm,
                    &moref,
                    (token, &rec.os, &target),
                    capacity.unwrap_or_default(),
                    &rec.guestinfo,
                );
                reconfigure(inner, &body).await.map_err(soap_err)?;
            }
            (Step::Copy, Some(rec)) => {
                let copied = async {
                    let (vdm, dc) = (disk_manager(inner).await?, datacenter(inner, &moref).await?);
                    reconfigure(inner, &template::copy(&vdm, &dc, &rec.image, &target)).await
                }
                .await;
                match copied {
                    Ok(()) => {
                        store::mutate(inner.store.as_ref(), token, |r| {
                            r.copied_at.get_or_insert(Timestamp::now());
                        })
                        .await
                        .map_err(store_err)?;
                    }
                    Err(e) => failed(inner, token, "copying the template's disk", e).await?,
                }
            }
            (Step::PowerOff, Some(_)) => match task(inner, "PowerOffVM_Task", &moref, "").await {
                Ok(()) => {}
                Err(e) if already(&e) => {}
                Err(e) => failed(inner, token, "powering the VM off", e).await?,
            },
            (Step::Swap, Some(_)) => {
                let body = template::swap(&vm, &moref, &target).map_err(AdapterError::Config)?;
                if let Err(e) = reconfigure(inner, &body).await {
                    failed(inner, token, "replacing the VM's disk", e).await?;
                }
            }
            (Step::RecordSuccess, Some(rec)) => {
                let message = format!("the VM runs {} from a copy of its template's disk", rec.os);
                store::record_outcome(
                    inner.store.as_ref(),
                    token,
                    OutcomeKind::Succeeded,
                    &message,
                )
                .await
                .map_err(store_err)?;
            }
        }
    }
    Err(AdapterError::Backend {
        message: format!("the reprovision of {host} did not settle in {MAX_STEPS} steps"),
        source: None,
    })
}

/// Before the swap: delete the copy (if any), power the VM on again if it ran before, and write
/// how it ended. Each part is safe to repeat.
async fn abandon(
    inner: &Inner,
    vm: &Vm,
    moref: &MoRef,
    target: &str,
    kind: OutcomeKind,
) -> Result<(), AdapterError> {
    if !target.is_empty() {
        let (vdm, dc) = (
            disk_manager(inner).await.map_err(soap_err)?,
            datacenter(inner, moref).await.map_err(soap_err)?,
        );
        match reconfigure(inner, &template::delete(&vdm, &dc, target)).await {
            Ok(()) => {}
            Err(SoapError::Fault { kind, .. }) if kind == "FileNotFound" => {}
            Err(e) => return Err(soap_err(e)),
        }
    }
    if vm.extra(tkeys::PREVIOUS_POWER) == Some("poweredOn") && vm.power != "poweredOn" {
        match task(inner, "PowerOnVM_Task", moref, "").await {
            Ok(()) => {}
            Err(e) if already(&e) => {}
            Err(e) => return Err(soap_err(e)),
        }
    }
    let progress = match kind {
        OutcomeKind::Cancelled => "cancelled",
        _ => "failed",
    };
    reconfigure(inner, &template::finish(moref, progress))
        .await
        .map_err(soap_err)
}
