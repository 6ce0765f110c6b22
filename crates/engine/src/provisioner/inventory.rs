//! The in-memory inventory cache: what every dispatcher last reported, kept current by events.
//!
//! The controller answers "which dispatcher has host X, what can it take, what does it run" from
//! here at memory speed; the API server is only written when these facts change. Pure data and
//! diffing: the session task ([`super::session`]) feeds it.
use super::keys::DispKey;
use crate::adapter::{HostInfo, Inventory};
use crate::api::{DispatcherState, HostProvisioningState};
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

/// What the cache knows about one dispatcher.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatcherView {
    pub state: DispatcherState,
    /// Machine-readable reason of the state (e.g. `Discovered`, `AuthenticationFailed`).
    pub reason: String,
    pub message: String,
    /// Hosts by ManagedHost name.
    pub hosts: BTreeMap<String, HostInfo>,
    /// When the last successful discovery finished.
    pub last_discovery: Option<Timestamp>,
    /// When the last successful discovery started (what it reports is at least this fresh).
    pub last_discovery_started: Option<Timestamp>,
    /// Successful discoveries since the session started.
    pub discoveries: u64,
}

impl Default for DispatcherView {
    fn default() -> Self {
        DispatcherView {
            state: DispatcherState::Connecting,
            reason: "Connecting".into(),
            message: "subscribing to events and discovering".into(),
            hosts: BTreeMap::new(),
            last_discovery: None,
            last_discovery_started: None,
            discoveries: 0,
        }
    }
}

impl DispatcherView {
    /// Every OS image any host can take, sorted and unique.
    pub fn catalogue(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .hosts
            .values()
            .flat_map(|h| h.available_os.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The host with backend id `id`.
    pub fn host_by_id(&self, id: &str) -> Option<(&String, &HostInfo)> {
        self.hosts.iter().find(|(_, h)| h.id == id)
    }

    /// True when a host reports a provisioning in progress.
    pub fn host_busy(host: &HostInfo) -> bool {
        host.provisioning == HostProvisioningState::Provisioning
    }
}

/// A change the cache saw, for the controller to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// State, catalogue or host set of the dispatcher changed.
    Dispatcher(DispKey),
    /// One host's facts changed (or it appeared / disappeared).
    Host(DispKey, String),
}

/// Turn a backend host name into a valid Kubernetes object name (RFC 1123 subdomain).
pub fn object_name(raw: &str) -> String {
    let mapped: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name: String = trimmed.chars().take(253).collect();
    while name.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        name.pop();
    }
    if name.is_empty() {
        "host".to_string()
    } else {
        name
    }
}

/// Replace the dispatcher's hosts with a fresh inventory; returns what changed.
pub fn apply_inventory(
    key: &DispKey,
    view: &mut DispatcherView,
    inv: Inventory,
    now: Timestamp,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut fresh = BTreeMap::new();
    for host in inv.hosts {
        fresh.insert(object_name(&host.name), host);
    }
    for (name, host) in &fresh {
        if view.hosts.get(name) != Some(host) {
            changes.push(Change::Host(key.clone(), name.clone()));
        }
    }
    for name in view.hosts.keys() {
        if !fresh.contains_key(name) {
            changes.push(Change::Host(key.clone(), name.clone()));
        }
    }
    let before = (view.state, view.catalogue(), view.hosts.len());
    view.hosts = fresh;
    view.state = DispatcherState::Ready;
    view.reason = "Discovered".into();
    view.message = format!("{} hosts discovered", view.hosts.len());
    view.last_discovery = Some(now);
    view.discoveries += 1;
    if before != (view.state, view.catalogue(), view.hosts.len())
        || !changes.is_empty()
        || view.discoveries == 1
    {
        changes.push(Change::Dispatcher(key.clone()));
    }
    changes
}

/// Apply one host update from an event; returns what changed.
pub fn apply_host(key: &DispKey, view: &mut DispatcherView, host: HostInfo) -> Vec<Change> {
    let name = object_name(&host.name);
    if view.hosts.get(&name) == Some(&host) {
        return Vec::new();
    }
    let new_host = !view.hosts.contains_key(&name);
    view.hosts.insert(name.clone(), host);
    let mut changes = vec![Change::Host(key.clone(), name)];
    if new_host {
        changes.push(Change::Dispatcher(key.clone()));
    }
    changes
}

/// Remove a host (by backend id) after a removal event.
pub fn remove_host(key: &DispKey, view: &mut DispatcherView, id: &str) -> Vec<Change> {
    let Some(name) = view.host_by_id(id).map(|(n, _)| n.clone()) else {
        return Vec::new();
    };
    view.hosts.remove(&name);
    vec![
        Change::Host(key.clone(), name),
        Change::Dispatcher(key.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::adapter::test_host as host;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(object_name("Server_01.Lab"), "server-01.lab");
        assert_eq!(object_name("--x--"), "x");
        assert_eq!(object_name("???"), "host");
    }

    #[test]
    fn inventory_diff_reports_only_changes() {
        let key = DispKey {
            namespace: "ns".into(),
            name: "d".into(),
        };
        let mut view = DispatcherView::default();
        let now = Timestamp::UNIX_EPOCH;
        let inv = Inventory {
            hosts: vec![host("h1", "a"), host("h2", "a")],
        };
        let first = apply_inventory(&key, &mut view, inv.clone(), now);
        assert_eq!(first.len(), 3);
        assert_eq!(view.state, DispatcherState::Ready);
        assert!(
            apply_inventory(&key, &mut view, inv, now).is_empty(),
            "same facts, no change"
        );
        let changed = apply_inventory(
            &key,
            &mut view,
            Inventory {
                hosts: vec![host("h1", "b")],
            },
            now,
        );
        assert!(changed.contains(&Change::Host(key.clone(), "h1".into())));
        assert!(changed.contains(&Change::Host(key.clone(), "h2".into())));
        assert!(changed.contains(&Change::Dispatcher(key.clone())));
        assert_eq!(view.catalogue(), vec!["a".to_string(), "b".to_string()]);
        assert!(apply_host(&key, &mut view, host("h1", "b")).is_empty());
        assert_eq!(apply_host(&key, &mut view, host("h1", "a")).len(), 1);
        assert_eq!(remove_host(&key, &mut view, "id-h1").len(), 2);
        assert!(view.hosts.is_empty());
    }
}
