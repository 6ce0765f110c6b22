//! The pure ManagedHost diff: discovered hosts + existing ManagedHosts → the writes to make.
//!
//! Hosts are mirrored, never invented: one ManagedHost per host a dispatcher reports. A host the
//! backend stops reporting first gets `Present=False`, and is deleted once it has been missing for
//! the grace period. A name already taken by another dispatcher's host is reported, not
//! overwritten.
use crate::adapter::HostInfo;
use crate::api::conditions::{self, Desired};
use crate::api::{DispatcherState, ManagedHost, ManagedHostSpec, ManagedHostStatus};
use crate::provisioner::inventory::DispatcherView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Condition type on ManagedHosts.
pub const PRESENT: &str = "Present";

/// One write to make.
#[derive(Clone, Debug, PartialEq)]
pub enum HostOp {
    /// Create the ManagedHost, then set its status.
    Create {
        name: String,
        spec: ManagedHostSpec,
        status: ManagedHostStatus,
    },
    /// Replace the status of an existing ManagedHost.
    UpdateStatus {
        name: String,
        status: ManagedHostStatus,
    },
    /// The host has been missing for longer than the grace period.
    Delete { name: String },
    /// The name belongs to a ManagedHost of another dispatcher.
    NameConflict { name: String, owner: String },
}

fn facts_status(
    existing: Option<&ManagedHostStatus>,
    host: &HostInfo,
    holder: Option<&str>,
    now: Timestamp,
) -> ManagedHostStatus {
    let mut st = existing.cloned().unwrap_or_default();
    st.current_os = host.current_os.clone();
    st.available_os = host.available_os.clone();
    st.power = Some(host.power);
    st.provisioning = Some(host.provisioning);
    st.active_request = holder.map(str::to_string);
    st.details = host.details.clone();
    conditions::set(
        &mut st.conditions,
        Desired {
            type_: PRESENT,
            status: conditions::TRUE,
            reason: "Reported",
            message: "reported by the last discovery".into(),
        },
        None,
        now,
    );
    if existing != Some(&st) {
        st.last_seen = Some(Time(now));
    }
    st
}

/// Compute the writes for one dispatcher. `existing` holds every ManagedHost of the namespace by
/// name; `holders` maps host name → name of the request holding it.
pub fn diff(
    dispatcher: &str,
    view: &DispatcherView,
    existing: &BTreeMap<String, Arc<ManagedHost>>,
    holders: &BTreeMap<String, String>,
    now: Timestamp,
    grace: Duration,
) -> Vec<HostOp> {
    let mut ops = Vec::new();
    for (name, host) in &view.hosts {
        let holder = holders.get(name).map(String::as_str);
        match existing.get(name) {
            None => ops.push(HostOp::Create {
                name: name.clone(),
                spec: ManagedHostSpec {
                    dispatcher: dispatcher.to_string(),
                    backend_id: host.id.clone(),
                },
                status: facts_status(None, host, holder, now),
            }),
            Some(mh) if mh.spec.dispatcher != dispatcher => ops.push(HostOp::NameConflict {
                name: name.clone(),
                owner: mh.spec.dispatcher.clone(),
            }),
            Some(mh) => {
                let status = facts_status(mh.status.as_ref(), host, holder, now);
                if mh.status.as_ref() != Some(&status) {
                    ops.push(HostOp::UpdateStatus {
                        name: name.clone(),
                        status,
                    });
                }
            }
        }
    }
    // Only a completed discovery can say a host is gone.
    if view.state != DispatcherState::Ready {
        return ops;
    }
    for (name, mh) in existing {
        if mh.spec.dispatcher != dispatcher || view.hosts.contains_key(name) {
            continue;
        }
        let mut st = mh.status.clone().unwrap_or_default();
        conditions::set(
            &mut st.conditions,
            Desired {
                type_: PRESENT,
                status: conditions::FALSE,
                reason: "NotReported",
                message: format!(
                    "the management software no longer reports this host; removed after {}s",
                    grace.as_secs()
                ),
            },
            None,
            now,
        );
        let since = conditions::get(&st.conditions, PRESENT)
            .map(|c| c.last_transition_time.0)
            .unwrap_or(now);
        let missing_for = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
        if missing_for >= grace {
            ops.push(HostOp::Delete { name: name.clone() });
        } else if mh.status.as_ref() != Some(&st) {
            ops.push(HostOp::UpdateStatus {
                name: name.clone(),
                status: st,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::adapter::test_host as host;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn materialise(ops: &[HostOp], existing: &mut BTreeMap<String, Arc<ManagedHost>>) {
        for op in ops {
            match op {
                HostOp::Create { name, spec, status } => {
                    let mut mh = ManagedHost::new(name, spec.clone());
                    mh.status = Some(status.clone());
                    existing.insert(name.clone(), Arc::new(mh));
                }
                HostOp::UpdateStatus { name, status } => {
                    if let Some(mh) = existing.get_mut(name) {
                        Arc::make_mut(mh).status = Some(status.clone());
                    }
                }
                HostOp::Delete { name } => {
                    existing.remove(name);
                }
                HostOp::NameConflict { .. } => {}
            }
        }
    }

    #[test]
    fn creates_updates_only_on_change_and_expires_missing_hosts() {
        let mut view = DispatcherView {
            state: DispatcherState::Ready,
            ..Default::default()
        };
        view.hosts.insert("h1".into(), host("h1", "a"));
        view.hosts.insert("h2".into(), host("h2", "a"));
        let mut existing = BTreeMap::new();
        let grace = Duration::from_secs(60);
        let ops = diff("d", &view, &existing, &BTreeMap::new(), t(0), grace);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, HostOp::Create { .. }))
                .count(),
            2
        );
        materialise(&ops, &mut existing);
        assert!(
            diff("d", &view, &existing, &BTreeMap::new(), t(10), grace).is_empty(),
            "no change, no write"
        );
        let holders = BTreeMap::from([("h1".to_string(), "req".to_string())]);
        let ops = diff("d", &view, &existing, &holders, t(20), grace);
        assert_eq!(ops.len(), 1);
        materialise(&ops, &mut existing);
        assert_eq!(
            existing["h1"]
                .status
                .as_ref()
                .and_then(|s| s.active_request.as_deref()),
            Some("req")
        );
        view.hosts.remove("h2");
        let ops = diff("d", &view, &existing, &holders, t(30), grace);
        assert!(matches!(&ops[..], [HostOp::UpdateStatus { name, .. }] if name == "h2"));
        materialise(&ops, &mut existing);
        assert!(diff("d", &view, &existing, &holders, t(60), grace).is_empty());
        assert_eq!(
            diff("d", &view, &existing, &holders, t(95), grace),
            vec![HostOp::Delete { name: "h2".into() }]
        );
        view.state = DispatcherState::Unreachable;
        assert!(
            diff("d", &view, &existing, &holders, t(95), grace).is_empty(),
            "an outage removes nothing"
        );
    }

    #[test]
    fn another_dispatchers_host_is_not_overwritten() {
        let mut view = DispatcherView {
            state: DispatcherState::Ready,
            ..Default::default()
        };
        view.hosts.insert("h1".into(), host("h1", "a"));
        let mut existing = BTreeMap::new();
        existing.insert(
            "h1".to_string(),
            Arc::new(ManagedHost::new(
                "h1",
                ManagedHostSpec {
                    dispatcher: "other".into(),
                    backend_id: "x".into(),
                },
            )),
        );
        assert_eq!(
            diff(
                "d",
                &view,
                &existing,
                &BTreeMap::new(),
                t(0),
                Duration::from_secs(1)
            ),
            vec![HostOp::NameConflict {
                name: "h1".into(),
                owner: "other".into()
            }]
        );
    }
}
