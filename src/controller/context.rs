//! What reconciles share: [`Shared`] across every watched namespace (client, settings, engine,
//! occupancy book, publishers) and [`Scope`] per watched namespace (stores and triggers).
use super::adapters::AdapterFactory;
use super::metrics::{Health, Metrics};
use super::settings::Settings;
use super::{callback, events};
use crate::api::{ManagedHost, OSDispatcher, OSProvisioningRequest};
use crate::provisioner::keys::{DispKey, HostKey};
use crate::provisioner::occupancy::Occupancy;
use crate::provisioner::session::Engine;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// The longest a dispatcher's ManagedHosts go without a full scan for hosts the backend no
/// longer reports, whatever the grace period: a missed removal is noticed within this.
const MAX_SCAN_GAP: std::time::Duration = std::time::Duration::from_secs(30);

/// What every reconcile shares, whatever its namespace.
pub struct Shared {
    pub client: Client,
    pub settings: Settings,
    pub engine: Arc<Engine>,
    pub adapters: AdapterFactory,
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
    /// (at most [`MAX_SCAN_GAP`]). Records the scan when it is due.
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
                *last_set != set || now.duration_since(*at) >= grace.min(MAX_SCAN_GAP)
            }
            None => true,
        };
        if due {
            scans.insert(key.clone(), (set, now));
        }
        due
    }

    pub(crate) fn covers(&self, namespace: &str) -> bool {
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
