//! The OSDispatcher controller: keeps one engine session per dispatcher this provisioner owns,
//! mirrors the session's view into the dispatcher's status, and syncs ManagedHosts from it.
use super::hosts::{self, HostOp};
use super::{Error, Scope};
use crate::adapter::AdapterError;
use crate::api::conditions::{self, Desired};
use crate::api::{
    AdapterKind, DispatcherState, ManagedHost, OSDispatcher, OSDispatcherStatus, DISPATCHER_LABEL,
    PROVISIONER_LABEL,
};
use crate::provisioner::keys::{DispKey, HostKey};
use crate::provisioner::session::SessionConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, instrument};

/// Dispatcher reconciles running at once.
pub const CONCURRENCY: u16 = 16;
/// A burst of ManagedHost changes within this window becomes one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Requeue after a failed reconcile (not a conflict): the session keeps discovering meanwhile,
/// so this only bounds how stale the dispatcher's status and ManagedHosts can get.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// How soon to look again while a session starts or an asked-for discovery runs.
const SOON: Duration = Duration::from_secs(1);
/// Upper bound of the periodic requeue (hosts missing from the backend are removed after the
/// grace period; a longer grace is still checked this often).
const MAX_RESYNC: Duration = Duration::from_secs(300);
/// How often the sweep looks for sessions of deleted dispatchers (see [`release_deleted`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The controller over OSDispatchers, also woken by changes to their ManagedHosts (the scope's
/// host watch). Bursts of host changes are debounced into one reconcile. At most
/// [`CONCURRENCY`] dispatchers reconcile at once: each reconcile holds its inventory's ManagedHost
/// writes, so a start-up over many dispatchers would otherwise hold all of them at the same time.
pub fn controller(
    dispatchers: Api<OSDispatcher>,
    hosts: impl futures::Stream<Item = Result<ManagedHost, watcher::Error>> + Send + 'static,
) -> Controller<OSDispatcher> {
    Controller::new(dispatchers, watcher::Config::default())
        .owns_stream(hosts)
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(CONCURRENCY),
        )
}

/// Run the controller until shutdown.
pub async fn run(
    controller: Controller<OSDispatcher>,
    scope: Arc<Scope>,
    triggers: mpsc::UnboundedReceiver<ObjectRef<OSDispatcher>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    super::drive(
        controller,
        scope,
        triggers,
        shutdown,
        "dispatcher",
        ERROR_RETRY,
        reconcile,
    )
    .await;
}

/// Release the sessions of dispatchers that no longer exist. A controller never reconciles an
/// object that is gone (and a relist after a watch gap reports no deletions at all), so without
/// this sweep a deleted dispatcher's backend would be polled, with its credentials, forever.
/// Requests in flight on it then wait with `DispatcherUnavailable`; a dispatcher re-created under
/// the same name resumes them from their recorded tokens.
pub async fn release_deleted(
    scope: Arc<Scope>,
    every: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let sweep = async {
        if scope.dispatchers.wait_until_ready().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for key in scope.shared.engine.keys() {
                let gone = scope.covers(&key.namespace)
                    && scope
                        .dispatchers
                        .get(&ObjectRef::new(&key.name).within(&key.namespace))
                        .is_none();
                if gone {
                    info!(dispatcher = %key, "OSDispatcher deleted; releasing its session");
                    release(&scope, &key);
                }
            }
        }
    };
    tokio::select! {
        _ = sweep => {}
        _ = shutdown => {}
    }
}

/// Stop talking to a dispatcher and forget what was kept for it: its session and inventory, its
/// metric series, its host-scan record.
fn release(scope: &Scope, key: &DispKey) {
    let shared = &scope.shared;
    shared.engine.remove(key);
    scope
        .host_scans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
    scope
        .discovery_asks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
    let m = &shared.metrics;
    m.hosts.remove(&super::metrics::DispatcherLabel {
        dispatcher: key.to_string(),
    });
    for state in DispatcherState::ALL {
        m.dispatcher_state.remove(&state_label(key, state));
    }
    for adapter in AdapterKind::ALL {
        for call in super::metered::CALLS {
            for outcome in std::iter::once("ok").chain(AdapterError::REASONS) {
                m.backend_calls.remove(&super::metrics::BackendCallLabel {
                    dispatcher: key.to_string(),
                    adapter: adapter.as_str().into(),
                    call: call.into(),
                    outcome: outcome.into(),
                });
            }
        }
    }
}

/// The metric labels of one dispatcher state.
fn state_label(key: &DispKey, state: DispatcherState) -> super::metrics::DispatcherStateLabel {
    super::metrics::DispatcherStateLabel {
        dispatcher: key.to_string(),
        state: state.as_str().into(),
    }
}

/// The lookup interval of a dispatcher: its override, else the global one.
pub fn lookup_interval(d: &OSDispatcher, default: Duration) -> Duration {
    d.spec
        .lookup_interval
        .as_deref()
        .and_then(|s| super::settings::parse_duration(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

#[instrument(skip_all, fields(dispatcher = %d.name_any(), namespace = d.namespace().unwrap_or_default()))]
/// A dispatcher that sends its account over plain HTTP (which its spec had to allow explicitly)
/// gets a Warning Event each time its session is (re)built.
async fn warn_plain_http(scope: &Scope, d: &OSDispatcher) {
    let Some(endpoint) = d.spec.plain_http_endpoint() else {
        return;
    };
    let note = super::events::Note {
        type_: super::events::EventType::Warning,
        action: "Connect".into(),
        reason: "InsecureEndpoint".into(),
        note: format!(
            "{endpoint} is plain HTTP (insecureHttp): the account and every answer cross the \
             network unencrypted"
        ),
    };
    if let Err(e) = scope.shared.events.publish(&d.object_ref(&()), &note).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}

/// One reconcile of a dispatcher, counted and timed whichever way it ends.
async fn reconcile(d: Arc<OSDispatcher>, scope: Arc<Scope>) -> Result<Action, Error> {
    let started = Instant::now();
    let label = super::metrics::ControllerLabel {
        controller: "dispatcher".into(),
    };
    let metrics = scope.shared.metrics.clone();
    metrics.reconciles.get_or_create(&label).inc();
    let result = reconcile_dispatcher(d, scope).await;
    metrics
        .durations
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_dispatcher(d: Arc<OSDispatcher>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = &scope.shared;
    let ns = d
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let key = DispKey {
        namespace: ns.clone(),
        name: d.name_any(),
    };
    if d.spec.provisioner != shared.settings.identifier || d.meta().deletion_timestamp.is_some() {
        // Another provisioner's dispatcher, or going away: stop talking to it.
        if shared.engine.adapter(&key).is_some() || shared.engine.view(&key).is_some() {
            info!(provisioner = %d.spec.provisioner, "releasing dispatcher");
            release(&scope, &key);
        }
        return Ok(Action::await_change());
    }
    let interval = lookup_interval(&d, shared.settings.lookup_interval);
    // What the adapter reads from the API (Secrets) is part of the fingerprint: fixing a Secret
    // reconnects.
    let inputs = shared.adapters.inputs(&scope, &d, &ns).await;
    let fingerprint = format!(
        "{}|{:?}{}",
        serde_json::to_string(&d.spec)?,
        interval,
        inputs.fingerprint()
    );
    if !shared.engine.is_current(&key, &fingerprint) {
        warn_plain_http(&scope, &d).await;
        let adapter = shared.adapters.build(&key, &d, &scope, inputs);
        shared.engine.ensure(SessionConfig {
            key: key.clone(),
            fingerprint,
            lookup_interval: interval,
            adapter,
        });
    }
    let Some(view) = shared.engine.view(&key) else {
        return Ok(Action::requeue(SOON));
    };
    let now = Timestamp::now();

    // ManagedHosts first, so the status counts what exists.
    let mut conflicts = Vec::new();
    if view.discoveries > 0 {
        conflicts = sync_hosts(&scope, &d, &key, &view, now).await?;
    }

    let mut status = d.status.clone().unwrap_or_default();
    let generation = d.meta().generation;
    status.state = Some(view.state);
    status.host_count = Some(i32::try_from(view.hosts.len()).unwrap_or(i32::MAX));
    status.os_catalogue = view.catalogue();
    status.last_discovery = view.last_discovery.map(Time);
    let asked = discovery_ask(&scope, &d, &key, &status, view.last_discovery_started);
    if let Some(value) = &asked {
        status.last_discovery_request = value.clone();
    }
    status.observed_generation = generation;
    let ready = if view.state == DispatcherState::Ready {
        conditions::TRUE
    } else {
        conditions::FALSE
    };
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: conditions::kind::READY,
            status: ready,
            reason: &view.reason,
            message: view.message.clone(),
        },
        generation,
        now,
    );
    let (conflict_status, conflict_msg) = if conflicts.is_empty() {
        (
            conditions::FALSE,
            "every discovered host has a ManagedHost".to_string(),
        )
    } else {
        (
            conditions::TRUE,
            format!(
                "host names already used by another dispatcher's ManagedHost: {}",
                conflicts.join(", ")
            ),
        )
    };
    conditions::set(
        &mut status.conditions,
        Desired {
            type_: conditions::kind::HOST_NAME_CONFLICT,
            status: conflict_status,
            reason: if conflicts.is_empty() {
                "NoConflict"
            } else {
                "NameTaken"
            },
            message: conflict_msg,
        },
        generation,
        now,
    );
    if d.status.as_ref() != Some(&status) {
        write_status(&scope, &d, &ns, status).await?;
    }
    let m = &shared.metrics;
    let dlabel = super::metrics::DispatcherLabel {
        dispatcher: key.to_string(),
    };
    m.hosts
        .get_or_create(&dlabel)
        .set(i64::try_from(view.hosts.len()).unwrap_or(i64::MAX));
    for state in DispatcherState::ALL {
        m.dispatcher_state
            .get_or_create(&state_label(&key, state))
            .set(i64::from(state == view.state));
    }
    if matches!(asked, Some(None)) {
        // A discovery asked for through the annotation is running: look again soon.
        return Ok(Action::requeue(SOON));
    }
    // Hosts missing from the backend are removed after the grace period; look again then.
    Ok(Action::requeue(shared.settings.host_grace.min(MAX_RESYNC)))
}

/// Performs the decision about the `osprov.io/discover` annotation: None when nothing is asked,
/// Some(None) while the discovery runs, Some(Some(value)) when `value` is answered.
fn discovery_ask(
    scope: &Scope,
    d: &OSDispatcher,
    key: &DispKey,
    status: &OSDispatcherStatus,
    last_started: Option<Timestamp>,
) -> Option<Option<String>> {
    use super::discovery_request::{decide, Ask};
    let wanted = d.annotations().get(crate::api::DISCOVER_ANNOTATION);
    let mut asks = scope
        .discovery_asks
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let pending = asks.get(key).map(|(v, at)| (v.as_str(), *at));
    match decide(
        wanted.map(String::as_str),
        status.last_discovery_request.as_deref(),
        pending,
        last_started,
    ) {
        Ask::Nothing => None,
        Ask::Trigger => {
            let value = wanted.cloned().unwrap_or_default();
            info!(request = %value, "discovery asked for through the annotation");
            asks.insert(key.clone(), (value, Timestamp::now()));
            scope.shared.engine.discover_now(key);
            Some(None)
        }
        Ask::Waiting => Some(None),
        Ask::Answer(value) => {
            asks.remove(key);
            Some(Some(value))
        }
    }
}

async fn write_status(
    scope: &Scope,
    d: &OSDispatcher,
    ns: &str,
    status: OSDispatcherStatus,
) -> Result<(), Error> {
    let api: Api<OSDispatcher> = Api::namespaced(scope.shared.client.clone(), ns);
    let mut obj = d.clone();
    obj.status = Some(status);
    obj.metadata.managed_fields = None;
    api.replace_status(
        &d.name_any(),
        &PostParams {
            field_manager: Some(crate::api::FIELD_MANAGER.into()),
            ..Default::default()
        },
        &obj,
    )
    .await?;
    Ok(())
}

async fn sync_hosts(
    scope: &Scope,
    d: &OSDispatcher,
    key: &DispKey,
    view: &crate::provisioner::inventory::DispatcherView,
    now: Timestamp,
) -> Result<Vec<String>, Error> {
    // The hosts this dispatcher reports, looked up by name; the scan for its ManagedHosts the
    // backend stopped reporting runs only when the host set changed or now and then.
    let ns = key.namespace.as_str();
    let mut existing: BTreeMap<String, Arc<ManagedHost>> = view
        .hosts
        .keys()
        .filter_map(|name| {
            scope
                .hosts
                .get(&ObjectRef::new(name).within(ns))
                .map(|h| (name.clone(), h))
        })
        .collect();
    if scope.full_host_scan_due(key, view, scope.shared.settings.host_grace) {
        for h in scope.hosts.state() {
            if h.namespace().as_deref() == Some(ns) && h.spec.dispatcher == key.name {
                existing.entry(h.name_any()).or_insert(h);
            }
        }
    }
    let holders: BTreeMap<String, String> = {
        let occ = scope.shared.occupancy();
        view.hosts
            .keys()
            .filter_map(|name| {
                occ.holder(&HostKey {
                    namespace: key.namespace.clone(),
                    host: name.clone(),
                })
                .map(|h| (name.clone(), h.to_string()))
            })
            .collect()
    };
    let ops = hosts::diff(
        &key.name,
        view,
        &existing,
        &holders,
        now,
        scope.shared.settings.host_grace,
    );
    let api: Api<ManagedHost> = Api::namespaced(scope.shared.client.clone(), &key.namespace);
    let pp = PostParams {
        field_manager: Some(crate::api::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut conflicts = Vec::new();
    for op in ops {
        match op {
            HostOp::Create { name, spec, status } => {
                let mut mh = ManagedHost::new(&name, spec);
                mh.metadata.namespace = Some(key.namespace.clone());
                mh.metadata.labels = Some(BTreeMap::from([
                    (DISPATCHER_LABEL.to_string(), key.name.clone()),
                    (PROVISIONER_LABEL.to_string(), d.spec.provisioner.clone()),
                ]));
                mh.metadata.owner_references = Some(vec![owner_ref(d)?]);
                let created = match api.create(&pp, &mh).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await?,
                    Err(e) => return Err(e.into()),
                };
                let mut with_status = created;
                with_status.status = Some(status);
                api.replace_status(&name, &pp, &with_status).await?;
            }
            HostOp::UpdateStatus { name, status } => {
                let Some(mut mh) = existing.get(&name).map(|h| (**h).clone()) else {
                    continue;
                };
                mh.status = Some(status);
                mh.metadata.managed_fields = None;
                api.replace_status(&name, &pp, &mh).await?;
            }
            HostOp::Delete { name } => {
                info!(host = %name, "removing ManagedHost no longer reported by the backend");
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            HostOp::NameConflict { name, owner } => {
                conflicts.push(format!("{name} (owned by {owner})"))
            }
        }
    }
    Ok(conflicts)
}

fn owner_ref(d: &OSDispatcher) -> Result<OwnerReference, Error> {
    d.controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))
}
