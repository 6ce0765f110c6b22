//! Dispatcher sessions and the [`Engine`] that owns them.
//!
//! One tokio task per dispatcher, in the order the original OS Provisioner used: subscribe to the
//! backend's events first, then discover, fill the cache, keep it current from events, and
//! re-discover every `lookupInterval` (with ±10 % jitter) or on demand. A failed call marks the
//! dispatcher Unreachable (transient errors) or Degraded (errors a person must fix) and the session
//! starts over after a backoff, re-subscribing before re-discovering. Changes are published on a
//! broadcast channel for the controller.
use super::inventory::{self, Change, DispatcherView};
use super::keys::DispKey;
use crate::adapter::{Adapter, AdapterError, BackendEvent};
use crate::api::DispatcherState;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

/// What a session needs to run.
pub struct SessionConfig {
    pub key: DispKey,
    /// Changes when the dispatcher's spec changes; a new fingerprint restarts the session.
    pub fingerprint: String,
    pub lookup_interval: Duration,
    /// The adapter, or why none could be built (shown as a Degraded dispatcher).
    pub adapter: Result<Arc<dyn Adapter>, AdapterError>,
}

struct Session {
    fingerprint: String,
    adapter: Option<Arc<dyn Adapter>>,
    discover_now: Arc<Notify>,
    /// The session's task; none when the adapter could not be built (nothing runs).
    task: Option<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        // The adapter gives back what it holds at the backend (a Redfish session) on its own
        // task: the drop happens under the sessions lock.
        if let (Some(adapter), Ok(rt)) =
            (self.adapter.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move { adapter.close().await });
        }
    }
}

struct Shared {
    cache: RwLock<HashMap<DispKey, DispatcherView>>,
    changes: broadcast::Sender<Change>,
}

impl Shared {
    fn update(&self, key: &DispKey, f: impl FnOnce(&mut DispatcherView) -> Vec<Change>) {
        let changes = {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            let view = cache.entry(key.clone()).or_default();
            f(view)
        };
        for c in changes {
            let _ = self.changes.send(c);
        }
    }

    fn set_state(&self, key: &DispKey, state: DispatcherState, reason: &str, message: String) {
        self.update(key, |view| {
            if view.state == state && view.reason == reason && view.message == message {
                return Vec::new();
            }
            view.state = state;
            view.reason = reason.to_string();
            view.message = message;
            vec![Change::Dispatcher(key.clone())]
        });
    }

    fn mark_error(&self, key: &DispKey, err: &AdapterError) {
        let state = if err.is_transient() {
            DispatcherState::Unreachable
        } else {
            DispatcherState::Degraded
        };
        self.set_state(key, state, err.reason(), err.to_string());
    }
}

/// Owns every dispatcher session and the inventory cache.
pub struct Engine {
    shared: Arc<Shared>,
    sessions: Mutex<HashMap<DispKey, Session>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        // Bounded: a lagging reader gets a Lagged error and the controller then wakes every
        // dispatcher, so nothing is lost; a huge ring would keep old changes alive.
        let (changes, _) = broadcast::channel(8192);
        Engine {
            shared: Arc::new(Shared {
                cache: RwLock::new(HashMap::new()),
                changes,
            }),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Subscribe to cache changes.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// True when a session with this fingerprint already runs.
    pub fn is_current(&self, key: &DispKey, fingerprint: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|s| s.fingerprint == fingerprint)
    }

    /// Start the session, or restart it when the fingerprint changed. Hosts stay in the cache
    /// across a restart so requests do not see them vanish.
    pub fn ensure(&self, cfg: SessionConfig) {
        if self.is_current(&cfg.key, &cfg.fingerprint) {
            return;
        }
        let discover_now = Arc::new(Notify::new());
        let shared = self.shared.clone();
        let key = cfg.key.clone();
        let (adapter, task) = match cfg.adapter {
            Ok(adapter) => {
                shared.set_state(
                    &key,
                    DispatcherState::Connecting,
                    "Connecting",
                    "subscribing to events and discovering".into(),
                );
                let span = info_span!("dispatcher_session", dispatcher = %key);
                let task = tokio::spawn(
                    run_session(
                        key.clone(),
                        adapter.clone(),
                        cfg.lookup_interval,
                        discover_now.clone(),
                        shared,
                    )
                    .instrument(span),
                );
                (Some(adapter), Some(task))
            }
            Err(err) => {
                shared.mark_error(&key, &err);
                (None, None)
            }
        };
        let session = Session {
            fingerprint: cfg.fingerprint,
            adapter,
            discover_now,
            task,
        };
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, session);
    }

    /// End every session and wait for each adapter to give back what it holds at its backend.
    pub async fn close_all(&self) {
        let adapters: Vec<Arc<dyn Adapter>> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, mut s)| s.adapter.take())
            .collect();
        futures::future::join_all(adapters.iter().map(|a| a.close())).await;
    }

    /// Stop a session and forget its cache entry (the dispatcher was deleted or is not ours).
    pub fn remove(&self, key: &DispKey) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let removed = self
            .shared
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(view) = removed {
            for name in view.hosts.into_keys() {
                let _ = self.shared.changes.send(Change::Host(key.clone(), name));
            }
        }
    }

    /// Ask for a discovery now.
    pub fn discover_now(&self, key: &DispKey) {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            s.discover_now.notify_one();
        }
    }

    /// The adapter of a running session.
    pub fn adapter(&self, key: &DispKey) -> Option<Arc<dyn Adapter>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(|s| s.adapter.clone())
    }

    /// Dispatchers with a session.
    pub fn keys(&self) -> Vec<DispKey> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// A copy of one dispatcher's view.
    pub fn view(&self, key: &DispKey) -> Option<DispatcherView> {
        self.shared
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Read one dispatcher's view under the lock, without copying it.
    pub fn with_view<R>(&self, key: &DispKey, f: impl FnOnce(&DispatcherView) -> R) -> Option<R> {
        self.shared
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(f)
    }

    /// Read the whole cache under one lock.
    pub fn with_cache<R>(&self, f: impl FnOnce(&HashMap<DispKey, DispatcherView>) -> R) -> R {
        f(&self.shared.cache.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..1.1))
}

async fn run_session(
    key: DispKey,
    adapter: Arc<dyn Adapter>,
    interval: Duration,
    discover_now: Arc<Notify>,
    shared: Arc<Shared>,
) {
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            // Transient errors back off quickly up to the lookup interval; an on-demand discovery
            // request cuts the wait short.
            let delay =
                Duration::from_millis(250u64.saturating_mul(1 << failures.min(10))).min(interval);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = discover_now.notified() => {}
            }
        }
        let mut events = match adapter.subscribe().await {
            Ok(events) => events,
            Err(err) => {
                warn!(error = %err, "subscribing to dispatcher events failed");
                shared.mark_error(&key, &err);
                failures = failures.saturating_add(if err.is_transient() { 1 } else { 10 });
                continue;
            }
        };
        if let Err(err) = discover(&key, adapter.as_ref(), &shared).await {
            failures = failures.saturating_add(if err.is_transient() { 1 } else { 10 });
            continue;
        }
        failures = 0;
        info!("dispatcher connected and discovered");
        let mut next = tokio::time::Instant::now() + jittered(interval);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => apply_event(&key, &shared, event),
                    None => {
                        debug!("event stream ended; re-subscribing");
                        break;
                    }
                },
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + jittered(interval);
                    if discover(&key, adapter.as_ref(), &shared).await.is_err() {
                        failures = 1;
                        break;
                    }
                }
                _ = discover_now.notified() => {
                    if discover(&key, adapter.as_ref(), &shared).await.is_err() {
                        failures = 1;
                        break;
                    }
                }
            }
        }
    }
}

async fn discover(
    key: &DispKey,
    adapter: &dyn Adapter,
    shared: &Shared,
) -> Result<(), AdapterError> {
    let started = Timestamp::now();
    match adapter.discover().await {
        Ok(inv) => {
            debug!(hosts = inv.hosts.len(), "discovery finished");
            shared.update(key, |view| {
                view.last_discovery_started = Some(started);
                inventory::apply_inventory(key, view, inv, Timestamp::now())
            });
            Ok(())
        }
        Err(err) => {
            warn!(error = %err, "discovery failed");
            shared.mark_error(key, &err);
            Err(err)
        }
    }
}

fn apply_event(key: &DispKey, shared: &Shared, event: BackendEvent) {
    match event {
        BackendEvent::HostChanged(host) => {
            shared.update(key, |view| inventory::apply_host(key, view, host))
        }
        BackendEvent::HostRemoved { id } => {
            shared.update(key, |view| inventory::remove_host(key, view, &id))
        }
        BackendEvent::OperationChanged { host_id, .. } => shared.update(key, |view| {
            view.host_by_id(&host_id)
                .map(|(name, _)| vec![Change::Host(key.clone(), name.clone())])
                .unwrap_or_default()
        }),
    }
}
