//! [`VsphereAdapter`]: vCenter's virtual machines as hosts, reprovisioned with the `iso` or the
//! `template` strategy.
//!
//! - Discovery: one `RetrievePropertiesEx` over a ContainerView of every VM (paged with
//!   `ContinueRetrievePropertiesEx`), templates left out, optionally only some VMs by name. A
//!   host's id is the VM's instance UUID; its current OS is the one osprov last installed (from
//!   the VM's extraConfig record).
//! - Events: `subscribe` creates a PropertyFilter on its own ContainerView and long-polls
//!   `WaitForUpdatesEx`; each VM that changed is read again and reported, so power changes made in
//!   vCenter reach the ManagedHost within a second. A callback report resumes its worker.
//! - `reprovision` checks the image, the VM and its CD-ROM, creates the operation record (the
//!   callback secret) and hands the rest to a worker (`work.rs`) that follows [`super::steps`]
//!   (`iso`) or [`super::template`] (`template`, in `template_work.rs`).
use super::model::{self, keys, Vm};
use super::soap::{MoRef, Soap, SoapError};
use super::work;
use crate::adapter::store::{OpRecord, OpStore, OutcomeKind};
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, HostInfo, Inventory, OperationState,
    OperationStatus,
};
use crate::api::{HostProvisioningState, PowerState, VsphereImage, VsphereStrategy};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// What a vSphere adapter is configured with (from `spec.vsphere` and its Secrets).
#[derive(Clone, Debug)]
pub struct VsphereConfig {
    /// Only these VMs; empty: all.
    pub names: Vec<String>,
    pub images: Vec<VsphereImage>,
    pub strategy: VsphereStrategy,
    pub callback_base: Option<String>,
    pub callback_timeout: Duration,
}

/// Shared by the adapter, its workers and its event stream.
pub(super) struct Inner {
    pub soap: Soap,
    pub cfg: VsphereConfig,
    pub store: Arc<dyn OpStore>,
    /// Host id → VM reference, from the last discovery.
    pub vms: Mutex<HashMap<String, MoRef>>,
    /// The last known state of every VM (discovery, reads, the change feed).
    pub known: Mutex<HashMap<MoRef, Vm>>,
    /// The ContainerView of VMs and the session it belongs to.
    view: tokio::sync::Mutex<Option<(u64, MoRef)>>,
    pub workers: Mutex<HashSet<String>>,
    finished: broadcast::Sender<BackendEvent>,
}

/// The vSphere adapter.
pub struct VsphereAdapter {
    inner: Arc<Inner>,
}

/// The one place a vCenter failure gets its kind (and so, through [`AdapterError::is_transient`],
/// whether it is retried): unreachable or overloaded (5xx, 429) is `Unreachable`; a refused login,
/// or a session the client could not renew, is `AuthenticationFailed`; a fault or an answer osprov
/// cannot read is a `Backend` error that keeps its source.
pub(super) fn soap_err(e: SoapError) -> AdapterError {
    match e {
        SoapError::Connect { .. } => AdapterError::Unreachable(e.to_string()),
        SoapError::InvalidLogin | SoapError::NotAuthenticated => {
            AdapterError::AuthenticationFailed(e.to_string())
        }
        SoapError::Status { status } if status >= 500 || status == 429 => {
            AdapterError::Unreachable(e.to_string())
        }
        SoapError::Fault { .. } | SoapError::Status { .. } | SoapError::Malformed(_) => {
            AdapterError::Backend {
                message: e.to_string(),
                source: Some(Box::new(e)),
            }
        }
    }
}

impl Inner {
    /// The ContainerView of every VM in this session (made again after a re-login).
    pub async fn view(&self) -> Result<MoRef, SoapError> {
        let mut view = self.view.lock().await;
        let sc = self.soap.service_content().await?;
        if let Some((epoch, v)) = view.as_ref() {
            if *epoch == self.soap.epoch() {
                return Ok(v.clone());
            }
        }
        let body = format!(
            "<CreateContainerView xmlns=\"urn:vim25\">{}{}<type>VirtualMachine</type>\
             <recursive>true</recursive></CreateContainerView>",
            sc.view_manager.xml("_this"),
            sc.root_folder.xml("container")
        );
        let text = self.soap.call(&body).await?;
        let v = returnval_moref(&text)?;
        *view = Some((self.soap.epoch(), v.clone()));
        Ok(v)
    }

    /// Forget the view (after vCenter said it does not know it).
    pub async fn drop_view(&self) {
        *self.view.lock().await = None;
    }

    /// Every VM, one property-collector read (paged).
    pub async fn all_vms(&self) -> Result<Vec<Vm>, SoapError> {
        let sc = self.soap.service_content().await?;
        let view = self.view().await?;
        let text = match self
            .soap
            .call(&model::retrieve_all(&sc.property_collector, &view))
            .await
        {
            Err(SoapError::Fault { kind, .. }) if kind == "ManagedObjectNotFound" => {
                self.drop_view().await;
                let view = self.view().await?;
                self.soap
                    .call(&model::retrieve_all(&sc.property_collector, &view))
                    .await?
            }
            other => other?,
        };
        let (mut vms, mut token) = model::parse_vms(&text)?;
        while let Some(t) = token.take() {
            let body = format!(
                "<ContinueRetrievePropertiesEx xmlns=\"urn:vim25\">{}<token>{}</token>\
                 </ContinueRetrievePropertiesEx>",
                sc.property_collector.xml("_this"),
                super::soap::esc(&t)
            );
            let (more, next) = model::parse_vms(&self.soap.call(&body).await?)?;
            vms.extend(more);
            token = next;
        }
        Ok(vms)
    }

    /// One VM, read now.
    pub async fn vm(&self, moref: &MoRef) -> Result<Option<Vm>, SoapError> {
        let sc = self.soap.service_content().await?;
        match self
            .soap
            .call(&model::retrieve_one(&sc.property_collector, moref))
            .await
        {
            Ok(text) => {
                let vm = model::parse_vms(&text)?.0.into_iter().next();
                if let Some(v) = &vm {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(moref.clone(), v.clone());
                }
                Ok(vm)
            }
            Err(SoapError::Fault { kind, .. }) if kind == "ManagedObjectNotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VM of host `id` (discovering when it is not known yet).
    pub async fn moref_of(&self, id: &str) -> Result<MoRef, AdapterError> {
        let known = self
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(m) = known {
            return Ok(m);
        }
        self.discover().await?;
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| AdapterError::UnknownHost(id.to_string()))
    }

    pub fn selected(&self, vm: &Vm) -> bool {
        !vm.template && (self.cfg.names.is_empty() || self.cfg.names.contains(&vm.name))
    }

    pub fn host(&self, vm: &Vm) -> HostInfo {
        let progress = vm.extra(keys::PROGRESS);
        let provisioning = match progress {
            Some("recorded") => HostProvisioningState::Provisioning,
            Some("failed") => HostProvisioningState::Failed,
            _ => HostProvisioningState::Idle,
        };
        let mut details = BTreeMap::new();
        for (k, v) in [
            ("vcpus", &vm.num_cpu),
            ("memoryMiB", &vm.memory_mb),
            ("guestId", &vm.guest_id),
            ("biosUuid", &vm.uuid),
        ] {
            if !v.is_empty() {
                details.insert(k.to_string(), v.clone());
            }
        }
        if let Some(m) = &vm.moref {
            details.insert("moref".into(), m.value.clone());
        }
        HostInfo {
            id: vm.id(),
            name: vm.name.clone(),
            current_os: (progress == Some("done"))
                .then(|| vm.extra(keys::OS).map(str::to_string))
                .flatten(),
            available_os: self.cfg.images.iter().map(|i| i.name.clone()).collect(),
            power: match vm.power.as_str() {
                "poweredOn" => PowerState::On,
                "poweredOff" | "suspended" => PowerState::Off,
                _ => PowerState::Unknown,
            },
            provisioning,
            details,
        }
    }

    pub async fn discover(&self) -> Result<Inventory, AdapterError> {
        let vms = self.all_vms().await.map_err(soap_err)?;
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = vms
            .iter()
            .filter_map(|v| Some((v.moref.clone()?, v.clone())))
            .collect();
        let mut map = HashMap::new();
        let mut hosts = Vec::new();
        for vm in vms.iter().filter(|v| self.selected(v)) {
            if let Some(m) = &vm.moref {
                map.insert(vm.id(), m.clone());
            }
            hosts.push(self.host(vm));
        }
        *self.vms.lock().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(Inventory { hosts })
    }

    /// Carry to their end the operations whose request is gone: a VM still marked `recorded`
    /// for a token with no operation record (the request was deleted while nothing drove its
    /// worker, e.g. across a controller restart, or while a `template` operation could not be
    /// cancelled). Its worker then restores the VM (`iso`; `template` before the swap) or finishes
    /// the install (`template` after it), so the VM does not stay busy for the next request.
    async fn finish_orphans(self: &Arc<Self>) {
        let marked: Vec<(String, String)> = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|v| self.selected(v) && v.extra(keys::PROGRESS) == Some("recorded"))
            .filter_map(|v| Some((v.id(), v.extra(keys::TOKEN)?.to_string())))
            .collect();
        if marked.is_empty() {
            return;
        }
        let Ok(records) = self.store.list().await else {
            return;
        };
        let live: HashSet<String> = records.into_iter().map(|r| r.token).collect();
        for (host, token) in marked {
            if !live.contains(&token) {
                tracing::info!(host = %host, "finishing an operation whose request is gone");
                self.ensure_worker(&host, &token);
            }
        }
    }

    /// Start `token`'s worker on `host` unless one runs.
    pub fn ensure_worker(self: &Arc<Self>, host: &str, token: &str) {
        if !self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string())
        {
            return;
        }
        let (me, host, token) = (self.clone(), host.to_string(), token.to_string());
        tokio::spawn(async move {
            let result = work::run(&me, &host, &token).await;
            me.workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&host);
            match result {
                Ok(true) => {
                    let _ = me.finished.send(BackendEvent::OperationChanged {
                        host_id: host,
                        token,
                        state: OperationState::Running { progress: None },
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "vSphere reprovision step failed; resumed at the next look");
                }
            }
        });
    }
}

/// The moref in a `returnval` (what `CreateContainerView`, `CreateFilter` and `*_Task` return).
pub(super) fn returnval_moref(text: &str) -> Result<MoRef, SoapError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| SoapError::Malformed(e.to_string()))?;
    doc.descendants()
        .find(|n| n.has_tag_name("returnval"))
        .map(super::soap::moref)
        .ok_or_else(|| SoapError::Malformed("no returnval".into()))
}

/// The status of `token`'s operation from its record and the VM.
pub(super) fn status_of(
    rec: &OpRecord,
    vm: Option<&Vm>,
    strategy: VsphereStrategy,
) -> OperationStatus {
    let ours = vm.filter(|v| v.extra(keys::TOKEN) == Some(rec.token.as_str()));
    let restored = match ours {
        Some(v) => matches!(
            v.extra(keys::PROGRESS),
            Some("done" | "failed" | "cancelled")
        ),
        None => true,
    };
    let state = match (&rec.outcome, restored) {
        (Some(o), true) => match o.kind {
            OutcomeKind::Succeeded => OperationState::Succeeded,
            OutcomeKind::Failed => OperationState::Failed {
                message: o.message.clone(),
            },
            OutcomeKind::Cancelled => OperationState::Cancelled,
        },
        (Some(_), false) => OperationState::Running {
            progress: Some(finishing(strategy).into()),
        },
        (None, _) => OperationState::Running {
            progress: Some(match (strategy, rec.reset_at, rec.copied_at) {
                (VsphereStrategy::Iso, Some(_), _) => format!(
                    "installing {} from its ISO; waiting for the installer's callback",
                    rec.os
                ),
                (VsphereStrategy::Iso, None, _) => {
                    format!("attaching the {} installer ISO and resetting", rec.os)
                }
                (VsphereStrategy::Template, _, None) => {
                    format!("copying the {} template's disk", rec.os)
                }
                (VsphereStrategy::Template, _, Some(_)) => {
                    "replacing the VM's disk with the copy and powering on".into()
                }
            }),
        },
    };
    OperationStatus {
        id: format!("{}/{}", rec.host_id, rec.token),
        state,
    }
}

/// What a finished operation still does on the VM.
fn finishing(strategy: VsphereStrategy) -> &'static str {
    match strategy {
        VsphereStrategy::Iso => "the installer reported; restoring the CD-ROM and boot order",
        VsphereStrategy::Template => "recording the outcome on the VM",
    }
}

impl VsphereAdapter {
    pub fn new(soap: Soap, cfg: VsphereConfig, store: Arc<dyn OpStore>) -> Self {
        VsphereAdapter {
            inner: Arc::new(Inner {
                soap,
                cfg,
                store,
                vms: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
                view: tokio::sync::Mutex::new(None),
                workers: Mutex::new(HashSet::new()),
                finished: broadcast::channel(256).0,
            }),
        }
    }

    /// SOAP calls made so far (for the benchmark).
    pub fn soap_calls(&self) -> u64 {
        self.inner.soap.calls()
    }
}

#[async_trait::async_trait]
impl Adapter for VsphereAdapter {
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        let updates = super::events::follow(self.inner.clone())
            .await
            .map_err(soap_err)?;
        let finished =
            tokio_stream::wrappers::BroadcastStream::new(self.inner.finished.subscribe())
                .filter_map(|e| async move { e.ok() });
        let inner = self.inner.clone();
        let reports = tokio_stream::wrappers::BroadcastStream::new(inner.store.reported())
            .filter_map(move |token| {
                let inner = inner.clone();
                async move {
                    let rec = inner.store.get(&token.ok()?).await.ok().flatten()?;
                    inner.ensure_worker(&rec.host_id, &rec.token);
                    None::<BackendEvent>
                }
            });
        Ok(futures::stream::select(futures::stream::select(updates, finished), reports).boxed())
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let inventory = self.inner.discover().await?;
        self.inner.finish_orphans().await;
        Ok(inventory)
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &crate::adapter::HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        work::start(&self.inner, (host_id, os, token), config).await
    }

    /// Both strategies hand the configuration to the guest as cloud-init's VMware datasource
    /// keys (with the installer, or before the template's disk is copied): cloud-init's
    /// convention only, no drive (so no `OEMDRV`).
    fn delivers_config(&self, format: crate::adapter::DriveFormat) -> bool {
        format == crate::adapter::DriveFormat::NoCloud
    }

    async fn operation(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let inner = &self.inner;
        let Some(rec) = inner.store.get(token).await.map_err(work::store_err)? else {
            return Ok(None);
        };
        // Until the installer reports, the record alone says where the operation is; only the
        // end needs the VM (restored yet?), so a poll costs vCenter nothing before then.
        // `cleaned` (set after the VM was restored) makes that read unneeded too.
        // While a worker restores the VM, it reports the end itself.
        let restoring = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(host_id);
        if rec.outcome.is_some() && !rec.cleaned && restoring {
            return Ok(Some(OperationStatus {
                id: format!("{}/{}", rec.host_id, rec.token),
                state: OperationState::Running {
                    progress: Some(finishing(inner.cfg.strategy).into()),
                },
            }));
        }
        let vm = if rec.outcome.is_some() && !rec.cleaned {
            let moref = inner.moref_of(host_id).await?;
            inner.vm(&moref).await.map_err(soap_err)?
        } else {
            None
        };
        let status = status_of(&rec, vm.as_ref(), inner.cfg.strategy);
        // While the installer runs there is nothing to do until it reports (the callback wakes
        // the worker) or the timeout passes: polls then cost vCenter nothing.
        let installing = rec.outcome.is_none()
            && rec.reset_requested_at.is_some_and(|t| {
                let waited = k8s_openapi::jiff::Timestamp::now().duration_since(t);
                Duration::try_from(waited).unwrap_or(Duration::ZERO) < inner.cfg.callback_timeout
            });
        if !status.state.is_terminal() && !installing {
            inner.ensure_worker(host_id, token);
        }
        Ok(Some(status))
    }

    async fn cancel(&self, host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        if self.inner.cfg.strategy == VsphereStrategy::Template {
            // Each step is short and the disk may already be replaced: it runs to its end.
            return Ok(CancelOutcome::Unsupported);
        }
        if !work::cancel(&self.inner, host_id, token).await? {
            return Ok(CancelOutcome::NotRunning);
        }
        Ok(CancelOutcome::Cancelled)
    }

    async fn close(&self) {
        self.inner.soap.logout().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vcenter_failure_gets_one_kind() {
        let status = |s| soap_err(SoapError::Status { status: s });
        assert!(matches!(status(503), AdapterError::Unreachable(_)));
        assert!(matches!(status(429), AdapterError::Unreachable(_)));
        assert!(matches!(status(404), AdapterError::Backend { .. }));
        assert!(matches!(
            soap_err(SoapError::NotAuthenticated),
            AdapterError::AuthenticationFailed(_)
        ));
        assert!(!soap_err(SoapError::InvalidLogin).is_transient());
        let fault = soap_err(SoapError::Fault {
            kind: "InvalidState".into(),
            message: "busy".into(),
        });
        assert!(fault.is_transient(), "a fault is retried at the next look");
        assert!(
            std::error::Error::source(&fault).is_some(),
            "the fault is kept as the source"
        );
    }
}
