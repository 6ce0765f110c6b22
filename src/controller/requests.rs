//! The OSProvisioningRequest controller: the thin I/O layer around the pure planner.
//!
//! Per reconcile: gather the world (inventory cache, adapter's word on a recorded operation,
//! occupancy), ask [`plan`], then perform the one action. Safety rules live here:
//! the slot is claimed before anything else, the intent (token) is written to status with a
//! resourceVersion precondition *before* the adapter is called, and a request whose intent is
//! recorded is only ever resumed with the same token. Deletion goes through kube-runtime's
//! finalizer helper: an in-flight operation is cancelled where the backend can, and the host is
//! always released.
use super::events::{EventType, Note};
use super::hostconfig;
use super::perform::{perform, Ports};
use super::world::{self, is_terminal};
use super::{Error, Scope};
use crate::adapter::{AdapterError, OperationState};
use crate::api::{
    OSProvisioningRequest, OSProvisioningRequestStatus, Phase, FIELD_MANAGER, REQUEST_FINALIZER,
};
use crate::provisioner::decision::{decide, CallOutcome, Claim, ClaimOutcome, Facts, Requeue};
use crate::provisioner::keys::{DispKey, HostKey};
use crate::provisioner::occupancy::Limits;
use crate::provisioner::plan::{
    self, Cleanup, ConfigLookup, OpObservation, RequestView, RetryPolicy, World,
};
use crate::provisioner::status::cancelled_status;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

type Request = OSProvisioningRequest;

/// Request reconciles running at once: enough to keep every backend busy, few enough that a
/// burst of thousands of requests does not flood the API server (no reconcile waits for a
/// provisioning, so each is short).
pub const CONCURRENCY: u16 = 64;
/// How often the per-phase and in-flight gauges are recomputed from the request store.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// The controller over requests, fed by the scope's request watch (which also fills `store`).
pub fn controller(
    requests: impl futures::Stream<Item = Result<Request, watcher::Error>> + Send + 'static,
    store: kube::runtime::reflector::Store<Request>,
) -> Controller<Request> {
    Controller::for_stream(requests, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
}

/// Run the controller until shutdown.
pub async fn run(
    controller: Controller<Request>,
    scope: Arc<Scope>,
    triggers: mpsc::UnboundedReceiver<ObjectRef<Request>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let fallback = scope.shared.settings.poll_interval;
    super::drive(
        controller, scope, triggers, shutdown, "request", fallback, reconcile,
    )
    .await;
}

#[instrument(skip_all, fields(request = %req.name_any(), namespace = req.namespace().unwrap_or_default()))]
async fn reconcile(req: Arc<Request>, scope: Arc<Scope>) -> Result<Action, Error> {
    let started = Instant::now();
    let label = super::metrics::ControllerLabel {
        controller: "request".into(),
    };
    scope.shared.metrics.reconciles.get_or_create(&label).inc();
    world::seed(&scope).await;
    let ns = req
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if !world::ours(&req, &scope, &ns) {
        return Ok(Action::await_change());
    }
    let api: Api<Request> = Api::namespaced(scope.shared.client.clone(), &ns);
    let result = finalizer(&api, REQUEST_FINALIZER, req, |event| async {
        match event {
            Finalizer::Apply(r) => apply(r, &scope, &ns).await,
            Finalizer::Cleanup(r) => cleanup(r, &scope, &ns).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    scope
        .shared
        .metrics
        .durations
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn apply(req: Arc<Request>, scope: &Scope, ns: &str) -> Result<Action, Error> {
    let shared = &scope.shared;
    let uid = req.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let generation = req.meta().generation.unwrap_or(1);
    let name = req.name_any();
    let st = req.status.clone().unwrap_or_default();
    let host = HostKey {
        namespace: ns.to_string(),
        host: req.spec.host.clone(),
    };
    if is_terminal(&st, generation) {
        close(scope, &uid, &host);
        return Ok(Action::await_change());
    }
    let created = req
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    shared.occupancy().note_open(&uid, &name, &host, created);
    let first_seen = *shared
        .first_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((uid.clone(), generation))
        .or_insert_with(Timestamp::now);
    let located = world::locate(scope, ns, &req, first_seen);
    let (operation, op_id) = world::observe(scope, ns, &req, &st).await;
    let lim = world::limits(scope, located.dispatcher.as_ref());
    let occupancy = shared
        .occupancy()
        .view(&uid, &host, located.dispatcher.as_ref(), lim);
    let settings = &shared.settings;
    // The configuration matters only before an attempt starts: a running one is not re-read.
    let config = if st.phase == Some(Phase::Provisioning) {
        ConfigLookup::NotRequested
    } else {
        hostconfig::lookup(&shared.client, ns, &req.spec).await?
    };
    let world = World {
        host: located.lookup.clone(),
        config,
        operation,
        occupancy,
        now: Timestamp::now(),
        policy: RetryPolicy {
            max_attempts: settings.max_attempts,
            base: settings.retry_base,
            cap: settings.retry_cap,
        },
        jitter: rand::rng().random_range(0.8..1.2),
        poll_every: settings.poll_interval,
    };
    let view = RequestView {
        uid: &uid,
        generation,
        spec: &req.spec,
        status: &st,
        timeout: req.spec.timeout.as_deref().map(|t| {
            super::settings::parse_duration(t).and_then(|d| {
                // A zero timeout would reset the host and cancel at once, attempt after attempt.
                if d.is_zero() {
                    Err(format!("{t:?} must be more than zero"))
                } else {
                    Ok(d)
                }
            })
        }),
    };
    let action = plan::plan(&view, &world);
    debug!(?action, "planned");
    let facts = Facts {
        status: &st,
        os: &req.spec.os,
        generation,
        now: world.now,
        op_id: op_id.as_deref(),
        host_known: located.backend_id.is_some(),
        poll_every: settings.poll_interval,
    };
    let decision = decide(&action, &facts);
    let ports = KubePorts {
        scope,
        ns,
        uid: &uid,
        name: &name,
        host: &host,
        backend_id: located.backend_id,
        current: Mutex::new(req.as_ref().clone()),
    };
    Ok(match perform(&ports, decision, &facts).await? {
        Requeue::AwaitChange => Action::await_change(),
        Requeue::After(wait) => Action::requeue(wait),
    })
}

/// The ports of one request's decision: the API (through the latest written object), the
/// occupancy book, the engine's sessions and the event publisher.
struct KubePorts<'a> {
    scope: &'a Scope,
    ns: &'a str,
    uid: &'a str,
    name: &'a str,
    host: &'a HostKey,
    /// The host's id in the backend, from the inventory.
    backend_id: Option<String>,
    /// The request as last read or written: the next write's resourceVersion precondition.
    current: Mutex<Request>,
}

impl KubePorts<'_> {
    fn disp(&self, name: &str) -> DispKey {
        DispKey {
            namespace: self.ns.to_string(),
            name: name.to_string(),
        }
    }

    fn current(&self) -> Request {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl Ports for KubePorts<'_> {
    fn claim(&self, claim: &Claim) -> ClaimOutcome {
        let disp = self.disp(claim.dispatcher());
        let limits = if claim.limited() {
            world::limits(self.scope, Some(&disp))
        } else {
            Limits::default()
        };
        let mut occ = self.scope.shared.occupancy();
        let held_before = occ.holder(self.host) == Some(self.name);
        match (
            occ.try_claim(self.uid, self.name, self.host, &disp, limits),
            held_before,
        ) {
            (true, false) => ClaimOutcome::Taken,
            (true, true) => ClaimOutcome::AlreadyHeld,
            (false, _) => ClaimOutcome::Refused,
        }
    }

    fn release(&self) {
        self.scope.shared.occupancy().release(self.uid);
        self.scope.wake_host(self.host);
    }

    fn close(&self) {
        close(self.scope, self.uid, self.host);
    }

    fn discover(&self, dispatcher: Option<&str>) {
        let engine = &self.scope.shared.engine;
        match dispatcher {
            Some(name) => engine.discover_now(&self.disp(name)),
            None => {
                for key in engine.keys().into_iter().filter(|k| k.namespace == self.ns) {
                    engine.discover_now(&key);
                }
            }
        }
    }

    async fn write_status(&self, status: &OSProvisioningRequestStatus) -> Result<(), Error> {
        let written = write(self.scope, self.ns, &self.current(), status).await?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = written;
        Ok(())
    }

    async fn announce(&self, status: &OSProvisioningRequestStatus) {
        publish(self.scope, &self.current(), status).await;
    }

    async fn cancel(&self, dispatcher: &str, token: &str) {
        let shared = &self.scope.shared;
        let (Some(adapter), Some(id)) = (
            shared.engine.adapter(&self.disp(dispatcher)),
            self.backend_id.as_deref(),
        ) else {
            return;
        };
        match adapter.cancel(id, token).await {
            Ok(outcome) => {
                info!(?outcome, token = %token, "cancelled the attempt that ran past spec.timeout")
            }
            Err(e) => {
                warn!(error = %e, token = %token, "cancelling the attempt failed; asking again at the next look")
            }
        }
    }

    async fn reprovision(&self, dispatcher: &str, token: &str) -> CallOutcome {
        let shared = &self.scope.shared;
        let (Some(adapter), Some(id)) = (
            shared.engine.adapter(&self.disp(dispatcher)),
            self.backend_id.as_deref(),
        ) else {
            return CallOutcome::NotYet;
        };
        let spec = self.current().spec;
        let config = match hostconfig::resolve(&shared.client, self.ns, &spec, token).await {
            Ok(Ok(config)) => config,
            Ok(Err(unusable)) => return CallOutcome::Refused(unusable.message),
            Err(e) => {
                warn!(error = %e, "reading the request's configuration; the same token is retried");
                return CallOutcome::NotYet;
            }
        };
        match adapter.reprovision(id, &spec.os, token, &config).await {
            Ok(op) => {
                shared.metrics.reprovisions_started.inc();
                info!(token = %token, operation = %op.id, "reprovision handed to the backend");
                match op.state {
                    OperationState::Running { .. } => CallOutcome::Running,
                    OperationState::Succeeded
                    | OperationState::Failed { .. }
                    | OperationState::Cancelled => CallOutcome::Answered,
                }
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, "backend did not take the reprovision yet; the same token is retried");
                CallOutcome::NotYet
            }
            Err(AdapterError::RecordLost(why)) => CallOutcome::RecordLost(why),
            Err(e) => CallOutcome::Refused(e.to_string()),
        }
    }
}

/// Write `status` over `req`, with `req`'s resourceVersion as the precondition.
async fn write(
    scope: &Scope,
    ns: &str,
    req: &Request,
    status: &OSProvisioningRequestStatus,
) -> Result<Request, Error> {
    let api: Api<Request> = Api::namespaced(scope.shared.client.clone(), ns);
    let mut obj = req.clone();
    obj.metadata.managed_fields = None;
    obj.status = Some(status.clone());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Ok(api.replace_status(&req.name_any(), &pp, &obj).await?)
}

async fn publish(scope: &Scope, req: &Request, st: &OSProvisioningRequestStatus) {
    let phase = st.phase.map(Phase::as_str).unwrap_or("Unknown");
    let type_ = match st.phase {
        Some(Phase::Failed | Phase::Rejected) => EventType::Warning,
        _ => EventType::Normal,
    };
    let note = Note {
        type_,
        reason: st.reason.clone().unwrap_or_else(|| phase.to_string()),
        note: format!("{phase}: {}", st.message.as_deref().unwrap_or_default()),
        action: phase.to_string(),
    };
    if let Err(e) = scope
        .shared
        .events
        .publish(&req.object_ref(&()), &note)
        .await
    {
        debug!(error = %e, "could not publish event");
    }
}

/// The request is finished or gone: free its slot, forget it, and wake the next in line.
fn close(scope: &Scope, uid: &str, host: &HostKey) {
    let released = scope.shared.occupancy().note_closed(uid);
    scope
        .shared
        .first_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(u, _), _| u != uid);
    if released.is_some() {
        scope.wake_host(host);
    }
}

async fn cleanup(req: Arc<Request>, scope: &Scope, ns: &str) -> Result<Action, Error> {
    let uid = req.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let generation = req.meta().generation.unwrap_or(1);
    let st = req.status.clone().unwrap_or_default();
    let host = HostKey {
        namespace: ns.to_string(),
        host: req.spec.host.clone(),
    };
    let in_flight = st.phase == Some(Phase::Provisioning) && st.operation.is_some();
    let dispatcher_exists = st.operation.as_ref().is_some_and(|op| {
        scope
            .dispatchers
            .get(&ObjectRef::new(&op.dispatcher).within(ns))
            .is_some_and(|d| d.meta().deletion_timestamp.is_none())
    });
    let observation = if in_flight && dispatcher_exists {
        world::observe(scope, ns, &req, &st).await.0
    } else {
        OpObservation::NoneRecorded
    };
    match plan::plan_cleanup(&st, &observation) {
        Cleanup::Release => {}
        Cleanup::RetryLater => return Err(Error::CleanupPending(format!("{observation:?}"))),
        Cleanup::Cancel { token } => {
            let disp = st.operation.as_ref().map(|op| DispKey {
                namespace: ns.to_string(),
                name: op.dispatcher.clone(),
            });
            let adapter = disp.as_ref().and_then(|d| scope.shared.engine.adapter(d));
            let id = disp
                .as_ref()
                .and_then(|d| {
                    scope
                        .shared
                        .engine
                        .with_view(d, |v| v.hosts.get(&req.spec.host).map(|h| h.id.clone()))
                })
                .flatten();
            if let (Some(adapter), Some(id)) = (adapter, id) {
                match adapter.cancel(&id, &token).await {
                    Ok(outcome) => {
                        info!(?outcome, token = %token, "cancelled the in-flight reprovision")
                    }
                    Err(e) if e.is_transient() => return Err(Error::CleanupPending(e.to_string())),
                    Err(e) => {
                        warn!(error = %e, "the backend refused the cancel; releasing the host anyway")
                    }
                }
            }
        }
    }
    // The operation records are kept (finalizer) until here: the request is done with them.
    super::records::release(&scope.shared.client, ns, &uid)
        .await
        .map_err(|e| Error::CleanupPending(format!("releasing the operation records: {e}")))?;
    if !is_terminal(&st, generation) {
        let status = cancelled_status(&st, generation, Timestamp::now());
        match write(scope, ns, &req, &status).await {
            Ok(_) if st.phase != status.phase => publish(scope, &req, &status).await,
            Ok(_) => {}
            Err(e) => debug!(error = %e, "could not record the cancellation"),
        }
    }
    close(scope, &uid, &host);
    Ok(Action::await_change())
}

/// Keep the per-phase and in-flight gauges current.
pub async fn report_gauges(scopes: Vec<Arc<Scope>>) {
    loop {
        let mut counts = std::collections::BTreeMap::new();
        for scope in &scopes {
            for r in scope.requests.state() {
                if let Some(phase) = r.status.as_ref().and_then(|s| s.phase) {
                    *counts.entry(phase.as_str()).or_insert(0i64) += 1;
                }
            }
        }
        if let Some(scope) = scopes.first() {
            let m = &scope.shared.metrics;
            for phase in Phase::ALL {
                let l = super::metrics::PhaseLabel {
                    phase: phase.as_str().into(),
                };
                m.requests
                    .get_or_create(&l)
                    .set(counts.get(phase.as_str()).copied().unwrap_or(0));
            }
            m.in_flight.set(i64::from(scope.shared.occupancy().total()));
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
}
