//! The `iso` strategy on vSphere performed: the checks before anything is recorded (for both
//! strategies), the worker that takes the steps of [`super::steps`] (each decided from a fresh
//! read of the VM and the operation record), vCenter tasks awaited to their end, and cancel.
//! The `template` strategy's worker is in `template_work.rs`.
use super::adapter::{soap_err, status_of, Inner};
use super::model::{self, keys, Vm};
use super::soap::{esc, MoRef, SoapError};
use super::steps::{self, Observed, Step};
use super::template_work;
use crate::adapter::store::{self, OpRecord, Outcome, OutcomeKind, StoreError};
use crate::adapter::{AdapterError, HostConfig, OperationStatus};
use crate::api::VsphereStrategy;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker gives up after this many steps (a whole `iso` operation takes four, a `template`
/// one eight).
pub(super) const MAX_STEPS: usize = 12;
/// How long a vCenter task (reconfigure, reset) may take.
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn store_err(e: StoreError) -> AdapterError {
    e.into_adapter()
}

/// Note in `token`'s record (when it still has one) that the VM holds nothing of the operation
/// any more.
pub(super) async fn mark_cleaned(
    inner: &Inner,
    token: &str,
    has_record: bool,
) -> Result<(), AdapterError> {
    if has_record {
        store::mutate(inner.store.as_ref(), token, |r| r.cleaned = true)
            .await
            .map_err(store_err)?;
    }
    Ok(())
}

/// Check, record and start `token`'s reprovision of `host` with `os`.
pub(super) async fn start(
    inner: &Arc<Inner>,
    target: (&str, &str, &str),
    config: &HostConfig,
) -> Result<OperationStatus, AdapterError> {
    let (host, os, token) = target;
    let image = inner
        .cfg
        .images
        .iter()
        .find(|i| i.name == os)
        .ok_or_else(|| AdapterError::UnknownOs {
            host: host.to_string(),
            os: os.to_string(),
        })?;
    let moref = inner.moref_of(host).await?;
    // The VM as discovery and the change feed keep it (the worker reads it before acting).
    let known = inner
        .known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&moref)
        .cloned();
    let vm = match known {
        Some(vm) => vm,
        None => inner
            .vm(&moref)
            .await
            .map_err(soap_err)?
            .ok_or_else(|| AdapterError::UnknownHost(host.to_string()))?,
    };
    let existing = inner.store.get(token).await.map_err(store_err)?;
    if let Some(rec) = existing {
        if rec.host_id != host || rec.os != os {
            return Err(AdapterError::Config(format!(
                "token {token} was used for {} with {}, not {host} with {os}",
                rec.host_id, rec.os
            )));
        }
        let status = status_of(&rec, Some(&vm), inner.cfg.strategy);
        if !status.state.is_terminal() {
            inner.ensure_worker(host, token);
        }
        return Ok(status);
    }
    if let Some(other) = vm
        .extra(keys::TOKEN)
        .filter(|t| *t != token && vm.extra(keys::PROGRESS) == Some("recorded"))
    {
        return Err(AdapterError::HostBusy {
            host: host.to_string(),
            token: other.to_string(),
        });
    }
    let guestinfo = if config.is_custom() {
        config
            .vmware_guestinfo()
            .map_err(|e| AdapterError::Config(format!("the configuration: {e}")))?
    } else {
        Default::default()
    };
    // Refuse what cannot work before anything is recorded.
    let rec = match inner.cfg.strategy {
        VsphereStrategy::Iso => {
            let iso = image.iso.as_deref().ok_or_else(|| {
                AdapterError::Config(format!("image {os} has no iso (strategy iso)"))
            })?;
            let base = inner.cfg.callback_base.clone().ok_or_else(|| {
                AdapterError::Config(
                    "the provisioning callback endpoint is off (set --callback-addr); a vSphere \
                     iso reprovision cannot complete without it"
                        .into(),
                )
            })?;
            model::attach(&vm, &moref, (token, os, iso), &base, &guestinfo)
                .map_err(AdapterError::Config)?;
            OpRecord {
                boot_override: Some("cdrom".into()),
                guestinfo,
                ..OpRecord::starting(token, host, os, iso)
            }
        }
        VsphereStrategy::Template => {
            let source = template_work::template_disk(inner, image).await?;
            super::template::target_file(&vm, token).map_err(AdapterError::Config)?;
            let file = source.file.unwrap_or_default();
            OpRecord {
                guestinfo,
                ..OpRecord::starting(token, host, os, &file)
            }
        }
    };
    let rec = inner.store.create(rec).await.map_err(store_err)?;
    inner.ensure_worker(host, token);
    Ok(status_of(&rec, Some(&vm), inner.cfg.strategy))
}

/// Record a cancel as the outcome and restore the VM now; false when it had already ended.
pub(super) async fn cancel(
    inner: &Arc<Inner>,
    host: &str,
    token: &str,
) -> Result<bool, AdapterError> {
    let mut cancelled = false;
    let rec = store::mutate(inner.store.as_ref(), token, |r| {
        if r.outcome.is_none() {
            r.outcome = Some(Outcome {
                kind: OutcomeKind::Cancelled,
                message: "cancelled through osprov".into(),
                at: Timestamp::now(),
            });
        }
    })
    .await
    .map_err(store_err)?;
    if let Some(r) = rec {
        cancelled = r
            .outcome
            .as_ref()
            .is_some_and(|o| o.kind == OutcomeKind::Cancelled);
        run(inner, host, token).await?;
    }
    Ok(cancelled)
}

/// Wait for a vCenter task to end; its error message when it failed.
async fn wait_task(inner: &Inner, task: &MoRef) -> Result<(), SoapError> {
    let sc = inner.soap.service_content().await?;
    let body = format!(
        "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}<specSet><propSet><type>Task</type>\
         <pathSet>info.state</pathSet><pathSet>info.error</pathSet></propSet><objectSet>{}\
         <skip>false</skip></objectSet></specSet><options/></RetrievePropertiesEx>",
        sc.property_collector.xml("_this"),
        task.xml("obj")
    );
    let began = Instant::now();
    // A reconfigure or a reset takes vCenter a fraction of a second to a few seconds: the first
    // look comes after a pause that usually finds the end, then the pauses grow.
    let mut pause = Duration::from_millis(300);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        let text = inner.soap.call(&body).await?;
        let doc =
            roxmltree::Document::parse(&text).map_err(|e| SoapError::Malformed(e.to_string()))?;
        let prop = |name: &str| {
            doc.descendants()
                .filter(|n| n.has_tag_name("propSet"))
                .find(|p| super::soap::child_text(*p, "name").as_deref() == Some(name))
        };
        let state = prop("info.state").and_then(|p| super::soap::child_text(p, "val"));
        match state.as_deref() {
            Some("success") => return Ok(()),
            Some("error") => {
                let error = prop("info.error");
                let message = error
                    .and_then(|p| {
                        p.descendants()
                            .find(|n| n.has_tag_name("localizedMessage"))
                            .and_then(|n| n.text())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "the task failed".into());
                // The fault's own type (e.g. `InvalidPowerState`, `FileNotFound`) when given.
                let kind = error
                    .and_then(|p| p.descendants().find(|n| n.has_tag_name("fault")))
                    .and_then(super::soap::xsi_type)
                    .unwrap_or_else(|| "TaskError".into());
                return Err(SoapError::Fault { kind, message });
            }
            _ if began.elapsed() > TASK_TIMEOUT => {
                return Err(SoapError::Fault {
                    kind: "TaskTimeout".into(),
                    message: format!("task {} did not end in {TASK_TIMEOUT:?}", task.value),
                })
            }
            _ => {}
        }
    }
}

/// Call a `*_Task` method on `vm` and wait for the task.
pub(super) async fn task(
    inner: &Inner,
    method: &str,
    vm: &MoRef,
    args: &str,
) -> Result<(), SoapError> {
    let body = format!(
        "<{method} xmlns=\"urn:vim25\">{}{args}</{method}>",
        vm.xml("_this")
    );
    let text = inner.soap.call(&body).await?;
    let t = super::adapter::returnval_moref(&text)?;
    wait_task(inner, &t).await
}

/// Run a task-returning body (a reconfigure built by [`model`], a disk copy) and wait for it.
pub(super) async fn reconfigure(inner: &Inner, body: &str) -> Result<(), SoapError> {
    let text = inner.soap.call(body).await?;
    let t = super::adapter::returnval_moref(&text)?;
    wait_task(inner, &t).await
}

fn observe(vm: &Vm, rec: Option<&OpRecord>, token: &str, timeout: Duration) -> Observed {
    let recorded = vm.extra(keys::TOKEN) == Some(token);
    let iso = rec.map(|r| r.image.as_str()).unwrap_or_default();
    Observed {
        recorded,
        finished: recorded
            && matches!(
                vm.extra(keys::PROGRESS),
                Some("done" | "failed" | "cancelled")
            ),
        attached: model::attached(vm, iso),
        reset_requested: rec.is_some_and(|r| r.reset_requested_at.is_some()),
        // A record gone means the request is gone (its Secret is collected with it).
        outcome: match rec {
            Some(r) => r.outcome.as_ref().map(|o| o.kind),
            None => Some(OutcomeKind::Cancelled),
        },
        timed_out: rec.is_some_and(|r| {
            r.outcome.is_none()
                && r.reset_requested_at.is_some_and(|t| {
                    let waited = Timestamp::now().duration_since(t);
                    Duration::try_from(waited).unwrap_or(Duration::ZERO) >= timeout
                })
        }),
    }
}

/// Carry `token`'s operation on `host` as far as it goes now; true once it is finished.
pub(super) async fn run(inner: &Arc<Inner>, host: &str, token: &str) -> Result<bool, AdapterError> {
    if inner.cfg.strategy == VsphereStrategy::Template {
        return template_work::run(inner, host, token).await;
    }
    // The VM as this run left it after a task it saw succeed (no need to read it again).
    let mut attached_now: Option<Vm> = None;
    for _ in 0..MAX_STEPS {
        let rec = inner.store.get(token).await.map_err(store_err)?;
        let moref = inner.moref_of(host).await?;
        let vm = match attached_now.take() {
            Some(vm) => vm,
            None => inner
                .vm(&moref)
                .await
                .map_err(soap_err)?
                .ok_or_else(|| AdapterError::UnknownHost(host.to_string()))?,
        };
        let step = steps::next_step(&observe(
            &vm,
            rec.as_ref(),
            token,
            inner.cfg.callback_timeout,
        ));
        tracing::debug!(host, ?step, "vSphere iso step");
        match (step, rec) {
            (Step::Wait, _) => return Ok(false),
            (Step::Finished, _) => return Ok(true),
            (Step::Detach(kind), rec) => {
                let progress = match kind {
                    OutcomeKind::Succeeded => "done",
                    OutcomeKind::Failed => "failed",
                    OutcomeKind::Cancelled => "cancelled",
                };
                reconfigure(inner, &model::detach(&vm, &moref, progress))
                    .await
                    .map_err(soap_err)?;
                mark_cleaned(inner, token, rec.is_some()).await?;
                // Restored and recorded in one task: nothing is left (no read to find that out).
                return Ok(true);
            }
            (_, None) => return Ok(true),
            (Step::RecordTimeout, Some(_)) => {
                let message = format!(
                    "no callback from the installer within {}s of the reset (callbackTimeout)",
                    inner.cfg.callback_timeout.as_secs()
                );
                store::record_outcome(inner.store.as_ref(), token, OutcomeKind::Failed, &message)
                    .await
                    .map_err(store_err)?;
            }
            (Step::Attach, Some(rec)) => {
                let base = inner.cfg.callback_base.clone().unwrap_or_default();
                let body = model::attach(
                    &vm,
                    &moref,
                    (token, &rec.os, &rec.image),
                    &rec.callback_url(&base),
                    &rec.guestinfo,
                )
                .map_err(AdapterError::Config)?;
                reconfigure(inner, &body).await.map_err(soap_err)?;
                // The task succeeded: the VM now is what the reconfigure made it.
                let mut now = vm.clone();
                now.extra.insert(keys::TOKEN.into(), token.into());
                now.extra.insert(keys::PROGRESS.into(), "recorded".into());
                if let Some(cd) = now.cdrom.as_mut() {
                    cd.iso = Some(rec.image.clone());
                    cd.start_connected = true;
                }
                attached_now = Some(now);
            }
            (Step::Reset, Some(_)) => {
                store::mutate(inner.store.as_ref(), token, |r| {
                    r.reset_requested_at.get_or_insert(Timestamp::now());
                })
                .await
                .map_err(store_err)?;
                let method = if vm.power == "poweredOn" {
                    "ResetVM_Task"
                } else {
                    "PowerOnVM_Task"
                };
                if let Err(e) = task(inner, method, &moref, "").await {
                    // vCenter refused, or the task failed: nothing was reset, so a later try is
                    // no second reset. A lost answer or a task still running may have reset the
                    // VM: the record keeps "requested" and the callback timeout decides.
                    let refused =
                        matches!(&e, SoapError::Fault { kind, .. } if kind != "TaskTimeout");
                    if refused {
                        store::mutate(inner.store.as_ref(), token, |r| r.reset_requested_at = None)
                            .await
                            .map_err(store_err)?;
                    }
                    return Err(soap_err(e));
                }
                store::mutate(inner.store.as_ref(), token, |r| {
                    r.reset_at.get_or_insert(Timestamp::now());
                })
                .await
                .map_err(store_err)?;
                // Reset requested and done: the installer runs, nothing to do until it reports.
                return Ok(false);
            }
        }
    }
    Err(AdapterError::Backend {
        message: format!(
            "the reprovision of {host} did not settle in {MAX_STEPS} steps ({})",
            esc(token)
        ),
        source: None,
    })
}
