//! Gathering the world a request decision needs: whether the request is ours, where its host is
//! (inventory cache), what the backend says of a recorded operation, the concurrency limits, and
//! the one-time rebuild of the occupancy book from the request store. Reads only; no writes.
use super::Scope;
use crate::adapter::AdapterError;
use crate::api::{
    OSDispatcher, OSProvisioningRequest, OSProvisioningRequestStatus, Phase, PROVISIONER_LABEL,
};
use crate::provisioner::keys::{DispKey, HostKey};
use crate::provisioner::occupancy::Limits;
use crate::provisioner::plan::{HostFacts, HostLookup, OpObservation};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type Request = OSProvisioningRequest;

/// True once the request's status is final for its current generation.
pub fn is_terminal(st: &OSProvisioningRequestStatus, generation: i64) -> bool {
    st.observed_generation == Some(generation) && st.phase.is_some_and(Phase::is_terminal)
}

/// Rebuild the occupancy book from the store once, before the first decision.
pub async fn seed(scope: &Scope) {
    if scope.seeded.load(Ordering::Acquire) {
        return;
    }
    let _ = scope.requests.wait_until_ready().await;
    let mut occ = scope.shared.occupancy();
    if scope.seeded.swap(true, Ordering::AcqRel) {
        return;
    }
    for r in scope.requests.state() {
        let (Some(ns), Some(uid)) = (r.namespace(), r.uid()) else {
            continue;
        };
        let st = r.status.clone().unwrap_or_default();
        let generation = r.meta().generation.unwrap_or(1);
        let host = HostKey {
            namespace: ns.clone(),
            host: r.spec.host.clone(),
        };
        if is_terminal(&st, generation) || r.meta().deletion_timestamp.is_some() {
            continue;
        }
        let created = r
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        occ.note_open(&uid, &r.name_any(), &host, created);
        if let (Some(Phase::Provisioning), Some(op)) = (st.phase, st.operation.as_ref()) {
            let disp = DispKey {
                namespace: ns,
                name: op.dispatcher.clone(),
            };
            occ.try_claim(&uid, &r.name_any(), &host, &disp, Limits::default());
        }
    }
}

/// Whether this provisioner answers for the request (see "Several provisioners in one cluster"
/// in `docs/architecture.md`).
pub fn ours(req: &Request, scope: &Scope, ns: &str) -> bool {
    let me = &scope.shared.settings.identifier;
    if let Some(mh) = scope.hosts.get(&ObjectRef::new(&req.spec.host).within(ns)) {
        return mh.labels().get(PROVISIONER_LABEL).is_none_or(|p| p == me);
    }
    let dispatchers: Vec<Arc<OSDispatcher>> = scope
        .dispatchers
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(ns))
        .collect();
    if let Some(wanted) = req.spec.dispatcher.as_deref() {
        return dispatchers
            .iter()
            .find(|d| d.name_any() == wanted)
            .is_none_or(|d| d.spec.provisioner == *me);
    }
    dispatchers.iter().any(|d| d.spec.provisioner == *me)
        || (dispatchers.is_empty() && me == crate::api::DEFAULT_PROVISIONER)
}

/// Where the host is, according to the cache.
pub struct Located {
    pub lookup: HostLookup,
    pub dispatcher: Option<DispKey>,
    pub backend_id: Option<String>,
}

pub fn locate(scope: &Scope, ns: &str, req: &Request, first_seen: Timestamp) -> Located {
    let shared = &scope.shared;
    let me = &shared.settings.identifier;
    let ours: Vec<Arc<OSDispatcher>> = scope
        .dispatchers
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(ns) && d.spec.provisioner == *me)
        .collect();
    let mut located = shared.engine.with_cache(|cache| {
        let mut all_fresh = true;
        let mut any_unready = false;
        let mut keys: Vec<DispKey> = ours
            .iter()
            .map(|d| DispKey {
                namespace: ns.to_string(),
                name: d.name_any(),
            })
            .collect();
        keys.sort();
        for key in &keys {
            let Some(view) = cache.get(key) else {
                any_unready = true;
                continue;
            };
            if let Some(host) = view.hosts.get(&req.spec.host) {
                let fresh = view.last_discovery.is_some_and(|t| t > first_seen);
                return Located {
                    lookup: HostLookup::Found(HostFacts {
                        dispatcher: key.name.clone(),
                        dispatcher_state: view.state,
                        fresh,
                        current_os: host.current_os.clone(),
                        available_os: host.available_os.clone(),
                        backend_busy: crate::provisioner::inventory::DispatcherView::host_busy(
                            host,
                        ),
                        delivers_config: false,
                    }),
                    dispatcher: Some(key.clone()),
                    backend_id: Some(host.id.clone()),
                };
            }
            if view.discoveries == 0 {
                any_unready = true;
            }
            all_fresh &= view.last_discovery.is_some_and(|t| t > first_seen);
        }
        let lookup = if any_unready {
            HostLookup::DispatchersNotReady
        } else if keys.is_empty() {
            // No dispatcher yet: give one a couple of lookup intervals to appear.
            let waited = Timestamp::now().duration_since(first_seen);
            let grace = shared.settings.lookup_interval.saturating_mul(2);
            HostLookup::NotFound {
                fresh: Duration::try_from(waited).unwrap_or(Duration::ZERO) >= grace,
            }
        } else {
            HostLookup::NotFound { fresh: all_fresh }
        };
        Located {
            lookup,
            dispatcher: None,
            backend_id: None,
        }
    });
    if let HostLookup::Found(facts) = &mut located.lookup {
        facts.delivers_config = located
            .dispatcher
            .as_ref()
            .and_then(|k| shared.engine.adapter(k))
            .is_some_and(|a| a.delivers_config(crate::controller::hostconfig::format(&req.spec)));
    }
    located
}

/// Ask the backend about the operation recorded in status; also returns the backend's own id of
/// the operation when it knows it.
pub async fn observe(
    scope: &Scope,
    ns: &str,
    req: &Request,
    st: &OSProvisioningRequestStatus,
) -> (OpObservation, Option<String>) {
    let Some(op) = st.operation.as_ref() else {
        return (OpObservation::NoneRecorded, None);
    };
    let key = DispKey {
        namespace: ns.to_string(),
        name: op.dispatcher.clone(),
    };
    let Some(adapter) = scope.shared.engine.adapter(&key) else {
        return (
            OpObservation::Unreachable(format!("OSDispatcher {} has no session", op.dispatcher)),
            None,
        );
    };
    let Some(id) = scope
        .shared
        .engine
        .with_view(&key, |v| v.hosts.get(&req.spec.host).map(|h| h.id.clone()))
        .flatten()
    else {
        return (
            OpObservation::Unreachable(format!(
                "host {} is not in {}'s inventory",
                req.spec.host, op.dispatcher
            )),
            None,
        );
    };
    match adapter.operation(&id, &op.token).await {
        Ok(Some(s)) => (OpObservation::State(s.state), Some(s.id)),
        Ok(None) => (OpObservation::UnknownToBackend, None),
        Err(AdapterError::RecordLost(why)) => (OpObservation::RecordLost(why), None),
        Err(e) => (OpObservation::Unreachable(e.to_string()), None),
    }
}

pub fn limits(scope: &Scope, key: Option<&DispKey>) -> Limits {
    let dispatcher = key.and_then(|k| {
        scope
            .dispatchers
            .get(&ObjectRef::new(&k.name).within(&k.namespace))
            .and_then(|d| d.spec.max_concurrent)
            .and_then(|m| u32::try_from(m).ok())
    });
    Limits {
        dispatcher,
        global: scope.shared.settings.max_concurrent,
    }
}
