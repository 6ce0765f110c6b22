//! The Kubernetes side of osprov: kube-runtime controllers over the provisioner engine.
//!
//! - [`dispatchers`]: OSDispatcher → engine session, dispatcher status, ManagedHost sync;
//! - [`requests`]: OSProvisioningRequest → pure planner → status, adapter calls, events;
//! - [`hosts`]: the pure ManagedHost diff used by the dispatcher controller;
//! - [`settings`], [`metrics`]: configuration and observability;
//! - [`leader`]: Lease-based leader election among replicas.
//!
//! [`run`] wires them for one or more namespaces (all when none is given) and runs until the
//! shutdown future resolves; [`run_with`] does the same behind leader election, serving the
//! health and metrics endpoint and the provisioning callback endpoint on standbys too.
pub mod adapters;
pub mod callback;
pub mod callback_server;
mod context;
pub mod discovery_request;
pub mod dispatchers;
mod drive;
mod error;
pub mod events;
pub mod hostconfig;
pub mod hosts;
pub mod leader;
pub mod libvirt;
pub mod metered;
pub mod metrics;
pub mod perform;
pub mod records;
pub mod redfish;
pub mod requests;
pub mod settings;
pub mod vsphere;
pub mod world;

pub use context::{Scope, Shared};
pub use error::{on_error, Error};

use crate::api::{ManagedHost, OSProvisioningRequest};
use crate::provisioner::inventory::Change;
use crate::provisioner::keys::HostKey;
use crate::provisioner::occupancy::Occupancy;
use crate::provisioner::session::Engine;
use adapters::AdapterFactory;
use futures::FutureExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use leader::{Elector, LeaderConfig};
use metrics::{Health, Metrics};
use settings::Settings;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Drive one controller until shutdown: its watch, the engine's triggers, the reconciler and the
/// shared error policy (labelled `name` in metrics and logs, `fallback` requeue on errors).
pub async fn drive<K, Fut>(
    controller: kube::runtime::Controller<K>,
    scope: Arc<Scope>,
    triggers: mpsc::UnboundedReceiver<ObjectRef<K>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    name: &'static str,
    fallback: std::time::Duration,
    reconcile: impl FnMut(Arc<K>, Arc<Scope>) -> Fut,
) where
    K: Clone
        + kube::Resource<DynamicType = ()>
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    Fut: futures::TryFuture<Ok = kube::runtime::controller::Action, Error = Error> + Send + 'static,
{
    use futures::StreamExt;
    controller
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            triggers,
        ))
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            move |_obj, err, scope| on_error(name, err, &scope, fallback),
            scope,
        )
        .for_each(|_| async {})
        .await;
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// How [`run_with`] runs besides the settings: leader election, and the metrics and health
/// state it exports (tests keep a handle on them).
#[derive(Default)]
pub struct Runtime {
    /// Take part in leader election and reconcile only while leading; `None` always reconciles.
    pub election: Option<LeaderConfig>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Builds the dispatchers' adapters (and holds the simulated fleets).
    pub adapters: AdapterFactory,
}

/// Run the controllers until `shutdown` resolves (no leader election).
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(client, settings, Runtime::default(), shutdown).await
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` (when an address is set) for as long as this
/// process runs, then, with leader election, stand by until this replica holds the lease and
/// reconcile while it keeps it. Losing the lease ends with [`Error::Leader`]: the process exits
/// and restarts as a standby with fresh caches; a clean shutdown releases the lease.
pub async fn run_with(
    client: Client,
    settings: Settings,
    runtime: Runtime,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Runtime {
        election,
        metrics,
        health,
        adapters,
    } = runtime;
    let shutdown = shutdown.boxed().shared();
    let _endpoint = settings.metrics_addr.0.map(|addr| {
        let (m, h) = (metrics.clone(), health.clone());
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, h).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        }))
    });
    // Callbacks can reach any replica behind the Service: the leader records the outcome in the
    // operation's record; a standby answers 503 so the installer tries again.
    let callbacks = Arc::new(callback::CallbackHub::default());
    let tls = match (&settings.callback_tls_cert, &settings.callback_tls_key) {
        (Some(cert), Some(key)) => {
            Some(callback_server::acceptor(cert, key).map_err(Error::Setting)?)
        }
        _ => None,
    };
    let _callback_endpoint = settings.callback_addr.0.map(|addr| {
        let state = Arc::new(callback::CallbackState {
            hub: callbacks.clone(),
            health: health.clone(),
        });
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = callback::serve(addr, tls, state).await {
                tracing::error!(error = %e, "provisioning callback endpoint stopped");
            }
        }))
    });
    let Some(config) = election else {
        set_leading(&metrics, &health, true);
        return reconcile(
            client,
            settings,
            adapters,
            Endpoints {
                metrics: &metrics,
                health: &health,
                callbacks,
            },
            None,
            shutdown,
        )
        .await;
    };
    let identity = config.identity.clone();
    let mut elector = Elector::new(client.clone(), config);
    tracing::info!(lease = %elector.config().lease_name, %identity, "standing by for the lease");
    let h = health.clone();
    tokio::select! {
        _ = elector.acquire(|ok| h.standby_ok.store(ok, Ordering::Relaxed)) => {}
        _ = shutdown.clone() => return Ok(()),
    }
    tracing::info!(%identity, "leading: starting the controllers");
    set_leading(&metrics, &health, true);
    let result = tokio::select! {
        r = reconcile(
            client,
            settings,
            adapters,
            Endpoints { metrics: &metrics, health: &health, callbacks },
            Some(identity),
            shutdown,
        ) => r,
        lost = elector.hold() => Err(Error::Leader(lost)),
    };
    set_leading(&metrics, &health, false);
    match result {
        Ok(()) => {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "could not release the lease");
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped reconciling");
            Err(e)
        }
    }
}

fn set_leading(metrics: &Metrics, health: &Health, leading: bool) {
    health.leading.store(leading, Ordering::Relaxed);
    if !leading {
        health.ready.store(false, Ordering::Relaxed);
    }
    metrics.leader.set(i64::from(leading));
}

/// The process-wide parts the controllers report to.
struct Endpoints<'a> {
    metrics: &'a Arc<Metrics>,
    health: &'a Arc<Health>,
    callbacks: Arc<callback::CallbackHub>,
}

/// The controllers themselves, until `shutdown` resolves.
async fn reconcile(
    client: Client,
    settings: Settings,
    adapters: AdapterFactory,
    endpoints: Endpoints<'_>,
    instance: Option<String>,
    shutdown: futures::future::Shared<futures::future::BoxFuture<'static, ()>>,
) -> Result<(), Error> {
    let Endpoints {
        metrics,
        health,
        callbacks,
    } = endpoints;
    let controller_name = format!("osprov-{}", settings.identifier);
    let reporter = events::Reporter {
        instance: instance
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| controller_name.clone()),
        controller: controller_name,
    };
    let shared = Arc::new(Shared {
        events: events::Publisher::new(client.clone(), reporter),
        client: client.clone(),
        engine: Arc::new(Engine::new()),
        adapters,
        occupancy: Mutex::new(Occupancy::default()),
        first_seen: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        health: health.clone(),
        settings: settings.clone(),
        callbacks,
    });
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks = Vec::new();
    let mut scopes = Vec::new();
    for ns in namespaces {
        let (scope, futs) = scope_tasks(shared.clone(), ns, shutdown.clone());
        scopes.push(scope);
        tasks.extend(futs);
    }
    tasks.push(route_changes(shared.clone(), scopes.clone()).boxed());
    tasks.push(requests::report_gauges(scopes.clone()).boxed());
    let ready_scopes = scopes.clone();
    let ready_health = health.clone();
    tasks.push(
        async move {
            for scope in &ready_scopes {
                let _ = scope.requests.wait_until_ready().await;
                let _ = scope.dispatchers.wait_until_ready().await;
                let _ = scope.hosts.wait_until_ready().await;
            }
            ready_health.ready.store(true, Ordering::Relaxed);
        }
        .boxed(),
    );
    let all = futures::future::join_all(tasks);
    tokio::select! {
        _ = all => {}
        _ = shutdown => {}
    }
    // Log out of what the adapters hold at their backends (Redfish sessions), bounded.
    let _ = tokio::time::timeout(SHUTDOWN_CLOSE, shared.engine.close_all()).await;
    Ok(())
}

/// How long a shutdown waits for the adapters to give back their backend sessions.
const SHUTDOWN_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

type Task = futures::future::BoxFuture<'static, ()>;

fn strip_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn scope_tasks(
    shared: Arc<Shared>,
    namespace: Option<String>,
    shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> (Arc<Scope>, Vec<Task>) {
    let client = shared.client.clone();
    let ns = namespace.as_deref();
    // One watch and one store per kind. Stored copies drop managedFields: the controller never
    // reads them and they are a large part of each object.
    let (host_store, host_writer) = reflector::store::<ManagedHost>();
    let host_stream = watcher(api::<ManagedHost>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(host_writer)
        .touched_objects();
    let (request_store, request_writer) = reflector::store::<OSProvisioningRequest>();
    let request_stream = watcher(
        api::<OSProvisioningRequest>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(strip_managed_fields)
    .reflect(request_writer)
    .touched_objects();
    let (request_trigger, request_rx) = mpsc::unbounded_channel();
    let (dispatcher_trigger, dispatcher_rx) = mpsc::unbounded_channel();
    let request_controller = requests::controller(request_stream, request_store);
    let dispatcher_controller = dispatchers::controller(api(&client, ns), host_stream);
    let scope = Arc::new(Scope {
        shared,
        namespace,
        requests: request_controller.store(),
        hosts: host_store,
        dispatchers: dispatcher_controller.store(),
        request_trigger,
        dispatcher_trigger,
        seeded: Default::default(),
        host_scans: Mutex::new(HashMap::new()),
        discovery_asks: Mutex::new(HashMap::new()),
    });
    scope.shared.callbacks.add_scope(&scope);
    let tasks: Vec<Task> = vec![
        requests::run(
            request_controller,
            scope.clone(),
            request_rx,
            shutdown.clone(),
        )
        .boxed(),
        dispatchers::run(
            dispatcher_controller,
            scope.clone(),
            dispatcher_rx,
            shutdown.clone(),
        )
        .boxed(),
        dispatchers::release_deleted(scope.clone(), dispatchers::SWEEP_EVERY, shutdown).boxed(),
    ];
    (scope, tasks)
}

/// Turn engine cache changes into reconcile triggers.
async fn route_changes(shared: Arc<Shared>, scopes: Vec<Arc<Scope>>) {
    let mut changes = shared.engine.changes();
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "change feed lagged; waking every dispatcher");
                for key in shared.engine.keys() {
                    for scope in scopes.iter().filter(|s| s.covers(&key.namespace)) {
                        let _ = scope
                            .dispatcher_trigger
                            .send(ObjectRef::new(&key.name).within(&key.namespace));
                    }
                }
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (key, host) = match &change {
            Change::Dispatcher(k) => (k, None),
            Change::Host(k, h) => (k, Some(h)),
        };
        for scope in scopes.iter().filter(|s| s.covers(&key.namespace)) {
            let _ = scope
                .dispatcher_trigger
                .send(ObjectRef::new(&key.name).within(&key.namespace));
            if let Some(host) = host {
                scope.wake_host(&HostKey {
                    namespace: key.namespace.clone(),
                    host: host.clone(),
                });
            }
        }
    }
}
