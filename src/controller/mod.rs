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
pub mod callback;
pub mod discovery_request;
pub mod dispatchers;
pub mod events;
pub mod hosts;
pub mod leader;
pub mod metrics;
pub mod redfish;
pub mod requests;
pub mod settings;
pub mod world;

use crate::adapter::simulator::SimRegistry;
use crate::adapter::AdapterError;
use crate::api::{ManagedHost, OSDispatcher, OSProvisioningRequest};
use crate::provisioner::inventory::Change;
use crate::provisioner::occupancy::{DispKey, HostKey, Occupancy};
use crate::provisioner::session::Engine;
use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use leader::{Elector, LeaderConfig, LeaderError};
use metrics::{Health, Metrics};
use settings::Settings;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Errors of the controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("adapter error: {0}")]
    Adapter(#[from] AdapterError),
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("serialisation error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cancelling the operation must wait: {0}")]
    CleanupPending(String),
    #[error("metrics endpoint failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("leader election: {0}")]
    Leader(#[from] LeaderError),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(_) => "Kube",
            Error::Adapter(e) => e.reason(),
            Error::Finalizer(_) => "Finalizer",
            Error::MissingField(_) => "MissingField",
            Error::Json(_) => "Serialisation",
            Error::CleanupPending(_) => "CleanupPending",
            Error::Io(_) => "Io",
            Error::Leader(_) => "Leader",
        }
    }

    /// True when the write failed because our view of the object was stale: a resourceVersion
    /// conflict (409), or the finalizer helper's JSON-patch `test` failing (422). The watch will
    /// bring the newer version, which triggers the next reconcile.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        let stale =
            |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 409,
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => stale(e),
                F::UnnamedObject | F::InvalidFinalizer => false,
            },
            _ => false,
        }
    }
}

/// The common error policy: count the error, look again soon after a conflict, else after
/// `fallback`.
pub fn on_error(
    controller: &str,
    err: &Error,
    scope: &Scope,
    fallback: std::time::Duration,
) -> kube::runtime::controller::Action {
    let label = metrics::ErrorLabel {
        controller: controller.into(),
        kind: err.kind().into(),
    };
    scope.shared.metrics.errors.get_or_create(&label).inc();
    if err.is_conflict() {
        // Our view was stale. The watch delivers the newer version and that triggers the next
        // reconcile; this requeue is only a safety net, spread out so that a lagging watch is
        // not answered with a storm of doomed writes.
        tracing::debug!(
            controller,
            "write conflicted; waiting for the newer version"
        );
        let jitter = rand::Rng::random_range(&mut rand::rng(), 0..2000);
        return kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(
            1000 + jitter,
        ));
    }
    tracing::warn!(controller, error = %err, "reconcile failed");
    kube::runtime::controller::Action::requeue(fallback)
}

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

/// What every reconcile shares, whatever its namespace.
pub struct Shared {
    pub client: Client,
    pub settings: Settings,
    pub engine: Arc<Engine>,
    pub sims: Arc<SimRegistry>,
    pub occupancy: Mutex<Occupancy>,
    /// When each (request uid, generation) was first looked at: "fresh" discoveries finish later.
    pub first_seen: Mutex<HashMap<(String, i64), Timestamp>>,
    pub events: events::Publisher,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Outcomes reported to the provisioning callback endpoint.
    pub callbacks: Arc<callback::CallbackHub>,
}

impl Shared {
    pub fn occupancy(&self) -> MutexGuard<'_, Occupancy> {
        self.occupancy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stores and triggers of one watched scope (a namespace, or all namespaces).
pub struct Scope {
    pub shared: Arc<Shared>,
    pub namespace: Option<String>,
    pub requests: Store<OSProvisioningRequest>,
    pub hosts: Store<ManagedHost>,
    pub dispatchers: Store<OSDispatcher>,
    pub request_trigger: mpsc::UnboundedSender<ObjectRef<OSProvisioningRequest>>,
    pub dispatcher_trigger: mpsc::UnboundedSender<ObjectRef<OSDispatcher>>,
    /// The request store was read once to rebuild the occupancy book.
    pub seeded: std::sync::atomic::AtomicBool,
    /// Per dispatcher: the host set (hashed) and time of the last full ManagedHost scan.
    pub host_scans: Mutex<HashMap<DispKey, (u64, std::time::Instant)>>,
    /// Discoveries started for an `osprov.io/discover` annotation value, and when.
    pub discovery_asks: Mutex<HashMap<DispKey, (String, k8s_openapi::jiff::Timestamp)>>,
}

impl Scope {
    /// Whether the dispatcher's ManagedHosts must be scanned for hosts the backend no longer
    /// reports: the reported host set changed, or the last scan is older than the grace period
    /// (at most 30 s). Records the scan when it is due.
    pub fn full_host_scan_due(
        &self,
        key: &DispKey,
        view: &crate::provisioner::inventory::DispatcherView,
        grace: std::time::Duration,
    ) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for name in view.hosts.keys() {
            name.hash(&mut hasher);
        }
        let set = hasher.finish();
        let now = std::time::Instant::now();
        let mut scans = self.host_scans.lock().unwrap_or_else(|p| p.into_inner());
        let due = match scans.get(key) {
            Some((last_set, at)) => {
                *last_set != set
                    || now.duration_since(*at) >= grace.min(std::time::Duration::from_secs(30))
            }
            None => true,
        };
        if due {
            scans.insert(key.clone(), (set, now));
        }
        due
    }

    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }

    /// Wake the requests that hold or wait for `host`.
    pub fn wake_host(&self, host: &HostKey) {
        let occ = self.shared.occupancy();
        let mut names: Vec<String> = occ.waiting_for(host).into_iter().map(|(n, _)| n).collect();
        if let Some(h) = occ.holder(host) {
            names.push(h.to_string());
        }
        drop(occ);
        for name in names {
            let _ = self
                .request_trigger
                .send(ObjectRef::new(&name).within(&host.namespace));
        }
    }
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
}

/// Run the controllers until `shutdown` resolves (no leader election).
pub async fn run(
    client: Client,
    settings: Settings,
    sims: Arc<SimRegistry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(client, settings, sims, Runtime::default(), shutdown).await
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
    sims: Arc<SimRegistry>,
    runtime: Runtime,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Runtime {
        election,
        metrics,
        health,
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
    // Callbacks can reach any replica behind the Service: every replica records the outcome in
    // the operation's Secret, where the leader's adapter reads it.
    let callbacks = Arc::new(callback::CallbackHub::default());
    let _callback_endpoint = settings.callback_addr.0.map(|addr| {
        let state = Arc::new(callback::CallbackState {
            client: client.clone(),
            hub: callbacks.clone(),
            namespaces: settings.namespaces.clone(),
        });
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = callback::serve(addr, state).await {
                tracing::error!(error = %e, "provisioning callback endpoint stopped");
            }
        }))
    });
    let Some(config) = election else {
        set_leading(&metrics, &health, true);
        return reconcile(
            client,
            settings,
            sims,
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
            sims,
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
    sims: Arc<SimRegistry>,
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
        sims,
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
    Ok(())
}

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
        dispatchers::release_deleted(scope.clone(), std::time::Duration::from_secs(2), shutdown)
            .boxed(),
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
