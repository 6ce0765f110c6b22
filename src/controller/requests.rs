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
use super::world::{self, is_terminal, Located};
use super::{Error, Scope};
use crate::adapter::{AdapterError, OperationState};
use crate::api::{OSProvisioningRequest, OSProvisioningRequestStatus, Phase, REQUEST_FINALIZER};
use crate::provisioner::occupancy::{DispKey, HostKey, Limits};
use crate::provisioner::plan::{
    self, Action as Plan, Cleanup, OpObservation, RequestView, RetryPolicy, World,
};
use crate::provisioner::status::{cancelled_status, next_status};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

type Request = OSProvisioningRequest;

/// One decision being carried out: the request and where it lives.
struct Job<'a> {
    scope: &'a Scope,
    ns: &'a str,
    req: &'a Request,
    uid: &'a str,
    host: &'a HostKey,
    generation: i64,
    /// The backend's id of the recorded operation, recorded in status with the next write.
    op_id: Option<String>,
}

/// The controller over requests, fed by the scope's request watch (which also fills `store`).
pub fn controller(
    requests: impl futures::Stream<Item = Result<Request, watcher::Error>> + Send + 'static,
    store: kube::runtime::reflector::Store<Request>,
) -> Controller<Request> {
    // A bounded number of reconciles at once keeps a burst of thousands of requests from
    // flooding the API server; each reconcile is short (no call waits for a provisioning).
    Controller::for_stream(requests, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(64))
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
    let world = World {
        host: located.lookup.clone(),
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
    };
    let action = plan::plan(&view, &world);
    debug!(?action, "planned");
    let job = Job {
        scope,
        ns,
        req: &req,
        uid: &uid,
        host: &host,
        generation,
        op_id,
    };
    perform(&job, located, action).await
}

async fn perform(job: &Job<'_>, located: Located, action: Plan) -> Result<Action, Error> {
    let Job {
        scope,
        ns,
        req,
        uid,
        host,
        generation,
        ..
    } = *job;
    let shared = &scope.shared;
    let st = req.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let os = req.spec.os.as_str();
    match &action {
        Plan::Done => {
            close(scope, uid, host);
            Ok(Action::await_change())
        }
        Plan::Wait {
            retry_in, discover, ..
        } => {
            if *discover {
                for key in shared
                    .engine
                    .keys()
                    .into_iter()
                    .filter(|k| k.namespace == ns)
                {
                    shared.engine.discover_now(&key);
                }
            }
            write(
                scope,
                ns,
                req,
                &st,
                with_op_id(
                    next_status(&st, &action, os, generation, now),
                    job.op_id.as_deref(),
                ),
            )
            .await?;
            Ok(Action::requeue(*retry_in))
        }
        Plan::Reject { .. } | Plan::Succeed { .. } | Plan::Fail { .. } => {
            write(
                scope,
                ns,
                req,
                &st,
                with_op_id(
                    next_status(&st, &action, os, generation, now),
                    job.op_id.as_deref(),
                ),
            )
            .await?;
            close(scope, uid, host);
            Ok(Action::await_change())
        }
        Plan::RetryLater { at, .. } => {
            write(
                scope,
                ns,
                req,
                &st,
                with_op_id(
                    next_status(&st, &action, os, generation, now),
                    job.op_id.as_deref(),
                ),
            )
            .await?;
            shared.occupancy().release(uid);
            scope.wake_host(host);
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
            Ok(Action::requeue(wait.max(Duration::from_millis(10))))
        }
        Plan::Poll { retry_in, .. } => {
            if let (Some(op), Some(name)) = (st.operation.as_ref(), req.meta().name.as_deref()) {
                let disp = DispKey {
                    namespace: ns.to_string(),
                    name: op.dispatcher.clone(),
                };
                shared
                    .occupancy()
                    .try_claim(uid, name, host, &disp, Limits::default());
            }
            write(
                scope,
                ns,
                req,
                &st,
                with_op_id(
                    next_status(&st, &action, os, generation, now),
                    job.op_id.as_deref(),
                ),
            )
            .await?;
            Ok(Action::requeue(*retry_in))
        }
        Plan::Start { .. } | Plan::Resume { .. } => start(job, located, action).await,
    }
}

async fn start(job: &Job<'_>, located: Located, action: Plan) -> Result<Action, Error> {
    let Job {
        scope,
        ns,
        req,
        uid,
        host,
        generation,
        ..
    } = *job;
    let shared = &scope.shared;
    let st = req.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let name = req.name_any();
    let (disp, token, fresh_start) = match &action {
        Plan::Start { token, .. } => (located.dispatcher.clone(), token.clone(), true),
        Plan::Resume { token } => (
            st.operation.as_ref().map(|op| DispKey {
                namespace: ns.to_string(),
                name: op.dispatcher.clone(),
            }),
            token.clone(),
            false,
        ),
        _ => return Ok(Action::requeue(shared.settings.poll_interval)),
    };
    let (Some(disp), Some(backend_id)) = (disp, located.backend_id.clone()) else {
        return Ok(Action::requeue(shared.settings.poll_interval));
    };
    // 1. Claim the host and a slot before anything else.
    let lim = if fresh_start {
        world::limits(scope, Some(&disp))
    } else {
        Limits::default()
    };
    let held_before = shared.occupancy().holder(host) == Some(name.as_str());
    if !shared.occupancy().try_claim(uid, &name, host, &disp, lim) {
        let wait = Plan::Wait {
            phase: Phase::Queued,
            reason: plan::reason::WAITING_FOR_CAPACITY,
            message: "waiting for a free reprovisioning slot".into(),
            retry_in: shared.settings.poll_interval,
            discover: false,
        };
        write(
            scope,
            ns,
            req,
            &st,
            next_status(&st, &wait, &req.spec.os, generation, now),
        )
        .await?;
        return Ok(Action::requeue(shared.settings.poll_interval));
    }
    // 2. Record the intent; the resourceVersion precondition makes a stale view fail here.
    // A failed write gives back only a claim this call took (a stale view of a request that
    // already started must not free the host it really holds).
    if let Err(e) = write(
        scope,
        ns,
        req,
        &st,
        next_status(&st, &action, &req.spec.os, generation, now),
    )
    .await
    {
        if !held_before {
            shared.occupancy().release(uid);
        }
        return Err(e);
    }
    // 3. Only now call the backend, with the recorded token.
    let Some(adapter) = shared.engine.adapter(&disp) else {
        return Ok(Action::requeue(shared.settings.poll_interval));
    };
    match adapter.reprovision(&backend_id, &req.spec.os, &token).await {
        Ok(op) => {
            shared.metrics.reprovisions_started.inc();
            info!(token = %token, operation = %op.id, "reprovision handed to the backend");
            if matches!(op.state, OperationState::Running { .. }) {
                Ok(Action::requeue(shared.settings.poll_interval))
            } else {
                Ok(Action::requeue(Duration::from_millis(10)))
            }
        }
        Err(e) if e.is_transient() => {
            warn!(error = %e, "backend did not take the reprovision yet; the same token is retried");
            Ok(Action::requeue(shared.settings.poll_interval))
        }
        Err(e) => backend_refused(job, &disp, e).await,
    }
}

/// The backend refused the reprovision outright (unknown OS/host): a failed attempt, and a fresh
/// discovery so the next decision sees the backend's current catalogue.
async fn backend_refused(
    job: &Job<'_>,
    disp: &DispKey,
    err: AdapterError,
) -> Result<Action, Error> {
    let Job {
        scope,
        ns,
        req,
        uid,
        host,
        generation,
        ..
    } = *job;
    let shared = &scope.shared;
    shared.engine.discover_now(disp);
    let api: Api<Request> = Api::namespaced(shared.client.clone(), ns);
    let fresh = api.get_status(&req.name_any()).await?;
    let st = fresh.status.clone().unwrap_or_default();
    let action = Plan::Fail {
        reason: plan::reason::BACKEND_REJECTED,
        message: err.to_string(),
    };
    write(
        scope,
        ns,
        &fresh,
        &st,
        next_status(&st, &action, &req.spec.os, generation, Timestamp::now()),
    )
    .await?;
    close(scope, uid, host);
    Ok(Action::await_change())
}

/// Record the backend's operation id alongside a status write that happens anyway.
fn with_op_id(
    status: Option<OSProvisioningRequestStatus>,
    id: Option<&str>,
) -> Option<OSProvisioningRequestStatus> {
    let mut status = status?;
    if let (Some(op), Some(id)) = (status.operation.as_mut(), id) {
        if op.id.is_none() {
            op.id = Some(id.to_string());
        }
    }
    Some(status)
}

/// Write `status` when it differs; publish an event when the phase changed.
async fn write(
    scope: &Scope,
    ns: &str,
    req: &Request,
    old: &OSProvisioningRequestStatus,
    status: Option<OSProvisioningRequestStatus>,
) -> Result<Option<Request>, Error> {
    let Some(status) = status else {
        return Ok(None);
    };
    let api: Api<Request> = Api::namespaced(scope.shared.client.clone(), ns);
    let mut obj = req.clone();
    obj.metadata.managed_fields = None;
    obj.status = Some(status.clone());
    let pp = PostParams {
        field_manager: Some("osprov".into()),
        ..Default::default()
    };
    let written = api.replace_status(&req.name_any(), &pp, &obj).await?;
    if old.phase != status.phase {
        publish(scope, req, &status).await;
    }
    Ok(Some(written))
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
    if !is_terminal(&st, generation) {
        let status = cancelled_status(&st, generation, Timestamp::now());
        if let Err(e) = write(scope, ns, &req, &st, Some(status)).await {
            debug!(error = %e, "could not record the cancellation");
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
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
