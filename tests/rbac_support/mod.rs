//! What the RBAC tests share: the scenario that takes every API path the controller has, and the
//! two-way comparison of the (verb, group, resource) it used with what the Helm chart grants.
//!
//! `tests/rbac.rs` runs the scenario with the controller in process against the embedded API
//! (whose access record says what was served); `tests/helm_install.rs` runs it with the real
//! `osprov` binary, installed by the real `helm`, against the real kube-apiserver (whose audit
//! log says what was asked, and whose RBAC authorizer decides every call).
#![allow(dead_code)]
use crate::harness::*;
use crate::redfish_support::{self, Emulator, IsoServer};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, SimulatorFailures};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// (verb, API group, resource or resource/subresource).
pub type Access = BTreeSet<(String, String, String)>;

/// The number of ManagedHosts dispatcher `dispatcher` has in `hosts`' namespace (other
/// dispatchers, such as the examples' `lab`, may share the namespace).
async fn hosts_of(hosts: &Api<ManagedHost>, dispatcher: &str) -> Option<Vec<ManagedHost>> {
    let l = hosts.list(&Default::default()).await.ok()?;
    Some(
        l.items
            .into_iter()
            .filter(|h| h.spec.dispatcher == dispatcher)
            .collect(),
    )
}

/// Drive a running controller (which watches `ns` and serves the callback endpoint on
/// `callback`) through every path that talks to the API: discovery, ManagedHost create / status /
/// delete, request finalizers, retries, failures, rejection, cancellation on delete, and the
/// Redfish paths (`redfish`). `sims` is the controller's simulator registry when it runs in this
/// process: only then can the simulated backend be changed behind the controller's back, which
/// the backend-refusal path needs (the one path a controller in another process cannot be
/// driven through; see [`IN_PROCESS_ONLY`]).
pub async fn drive(c: &kube::Client, ns: &str, callback: SocketAddr, sims: Option<&SimRegistry>) {
    let requests: Api<OSProvisioningRequest> = Api::namespaced(c.clone(), ns);
    let dispatchers: Api<OSDispatcher> = Api::namespaced(c.clone(), ns);
    let hosts: Api<ManagedHost> = Api::namespaced(c.clone(), ns);

    // A dispatcher whose first reprovision fails (retry), with a stale-catalogue host later.
    let mut s = sim(4, 300);
    s.failures = Some(SimulatorFailures {
        fail_nth: vec![1],
        ..Default::default()
    });
    let mut d = sim_dispatcher("sim", s.clone());
    d.spec.lookup_interval = Some("1h".into());
    create(&dispatchers, &d).await;
    eventually(30, "4 ManagedHosts", || async {
        let l = hosts_of(&hosts, "sim").await?;
        (l.len() == 4 && l.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;

    create(&requests, &request("retry", "sim-000", "debian-12")).await;
    create(&requests, &request("ghost", "nowhere", "debian-12")).await;
    create(&requests, &request("long", "sim-001", "rocky-9")).await;
    wait_phase(&requests, "retry", Phase::Succeeded, 30).await;
    wait_phase(&requests, "ghost", Phase::Rejected, 30).await;
    wait_phase(&requests, "long", Phase::Succeeded, 30).await;

    // Backend refusal: the backend drops an OS image the cached catalogue still offers.
    if let Some(sims) = sims {
        let fleet = sims.get(&format!("{ns}/sim")).expect("fleet");
        let mut fewer = s.clone();
        fewer.os_images.retain(|o| o != "rocky-9");
        fleet.configure(&fewer);
        create(&requests, &request("refused", "sim-002", "rocky-9")).await;
        eventually(30, "refused to fail an attempt", || async {
            let r = requests.get("refused").await.ok()?;
            (r.status?.attempts.unwrap_or(0) >= 1).then_some(())
        })
        .await;
    }

    // Cancellation: delete a request while it provisions (finalizer removal).
    dispatchers
        .patch(
            "sim",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"simulator": {"provisionMillis": 60000}}})),
        )
        .await
        .expect("patch");
    create(&requests, &request("cancel", "sim-003", "debian-12")).await;
    wait_phase(&requests, "cancel", Phase::Provisioning, 30).await;
    requests
        .delete("cancel", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "cancelled request gone", || async {
        requests
            .get_opt("cancel")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // The backend forgets hosts: their ManagedHosts are deleted after the grace period.
    dispatchers
        .patch(
            "sim",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"lookupInterval": "300ms", "simulator": {"hosts": 1}}}),
            ),
        )
        .await
        .expect("patch");
    eventually(30, "ManagedHosts removed", || async {
        (hosts_of(&hosts, "sim").await?.len() == 1).then_some(())
    })
    .await;
    redfish(c, ns, callback).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The Redfish paths, against a real sushy-emulator (basic auth, TLS with a CA Secret): the
/// dispatcher reads its credentials and CA Secrets; a reprovision creates its operation Secret
/// and updates it as it goes (anchoring it in the request's status, which it reads); the
/// installer's callback finds it (by name) and records the outcome in it; a callback for a key
/// nobody knows is looked for by name in the dispatchers' namespaces (get), never listed.
async fn redfish(c: &kube::Client, ns: &str, callback: SocketAddr) {
    let emu = Emulator::start(1).await;
    let iso = IsoServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    let requests: Api<OSProvisioningRequest> = Api::namespaced(c.clone(), ns);
    let hosts: Api<ManagedHost> = Api::namespaced(c.clone(), ns);
    redfish_support::create_bmc_secrets(&secrets, &emu, redfish_support::PASSWORD).await;
    let spec = redfish_support::redfish_spec(&emu, &iso, true);
    create(
        &Api::namespaced(c.clone(), ns),
        &redfish_support::redfish_dispatcher("bmc", spec),
    )
    .await;
    eventually(60, "the Redfish ManagedHost", || async {
        hosts.get("node-0").await.ok()?.status.map(|_| ())
    })
    .await;
    create(&requests, &request("bmc-0", "node-0", "ubuntu-24.04")).await;
    let url = redfish_support::wait_inserted(&emu, &iso, 0).await;
    assert!(
        url.starts_with(&format!("http://{callback}/callback/")),
        "{url}"
    );
    wait_phase(&requests, "bmc-0", Phase::Provisioning, 30).await;
    let unknown = format!("http://{callback}/callback/osprov-none.{}", "0".repeat(48));
    assert_eq!(
        crate::harness::post(&unknown, r#"{"status":"succeeded"}"#).await,
        404
    );
    assert_eq!(
        crate::harness::post(&url, r#"{"status":"succeeded"}"#).await,
        200
    );
    wait_phase(&requests, "bmc-0", Phase::Succeeded, 60).await;
    // Deleting the request releases its record: the finalizer comes off, the Secret goes.
    requests
        .delete("bmc-0", &Default::default())
        .await
        .expect("delete bmc-0");
    eventually(60, "bmc-0 and its operation record gone", || async {
        let lp =
            kube::api::ListParams::default().labels(osprov::controller::records::OPERATION_LABEL);
        let left = secrets.list(&lp).await.ok()?.items.len();
        (requests.get_opt("bmc-0").await.ok()?.is_none() && left == 0).then_some(())
    })
    .await;
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart's RBAC for the controller's ServiceAccount, rendered with `values` (JSON) by the
/// Helm SDK: the set of (verb, group, resource) granted, per namespace or "*" for cluster-wide.
pub fn chart_grants(values: &serde_json::Value) -> serde_json::Value {
    crate::replica::chart_query("chart_rules.py", values)
}

/// The grants of one scope of [`chart_grants`].
pub fn grants_in(grants: &serde_json::Value, scope: &str) -> Access {
    grants[scope]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let s = |i: usize| t[i].as_str().unwrap_or("").to_string();
                    (s(0), s(1), s(2))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Keep `access` in `target/osprov-rbac/<name>` for people reading a failure.
pub fn save(name: &str, access: &Access) {
    let dir = root().join("target/osprov-rbac");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join(name),
        serde_json::to_string_pretty(access).unwrap_or_default(),
    );
}

/// Granted although no scenario can take the path on purpose:
/// - `get` of a ManagedHost runs only when creating it answered 409 AlreadyExists, i.e. when the
///   host appeared in the API after the controller's cache was read (a race between two
///   reconciles);
/// - `patch` of an Event continues a series: only when the very same event (phase, reason and
///   message) repeats for a request within six minutes, which the controller's own phase
///   changes do not do on cue (`tests/events.rs` shows the publisher patching on a repeat).
///
/// Kept as short as possible. (The Secret races — create answered 409, update answered 409 —
/// retry with `get`, which the scenario uses anyway, so they need no entry.)
pub const RACE_ONLY: [(&str, &str, &str); 2] = [
    ("get", "osprov.io", "managedhosts"),
    ("patch", "events.k8s.io", "events"),
];

/// Used only when the scenario can reach into the controller's simulated backend ([`drive`]
/// with `sims`): re-reading a request's status before recording a backend refusal. A refusal
/// needs the backend to drop an OS image behind the controller's back; a simulated backend
/// follows its dispatcher's spec, and changing the spec makes the controller rediscover (so it
/// rejects with OSNotAvailable instead). `tests/rbac.rs` covers this path.
pub const IN_PROCESS_ONLY: [(&str, &str, &str); 1] =
    [("get", "osprov.io", "osprovisioningrequests/status")];

/// Both ways: every use is granted, every grant was used (or is a listed race-only path).
pub fn compare(used: &Access, granted: &Access, what: &str) {
    compare_allowing(used, granted, what, &[]);
}

/// [`compare`], also allowing the grants in `unreachable` to go unused.
pub fn compare_allowing(
    used: &Access,
    granted: &Access,
    what: &str,
    unreachable: &[(&str, &str, &str)],
) {
    let missing: Vec<_> = used.difference(granted).collect();
    let unused: Vec<_> = granted
        .difference(used)
        .filter(|(v, g, r)| {
            let t = (v.as_str(), g.as_str(), r.as_str());
            !RACE_ONLY.contains(&t) && !unreachable.contains(&t)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: the controller used what the chart does not grant: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "{what}: the chart grants what the controller never used: {unused:?}"
    );
}

/// The race-only paths must still be granted, or they would fail with 403 on a real cluster.
pub fn assert_race_paths_granted(granted: &Access, what: &str) {
    for (v, g, r) in RACE_ONLY {
        assert!(
            granted.contains(&(v.to_string(), g.to_string(), r.to_string())),
            "{what}: the race-only path {v} {g}/{r} is not granted"
        );
    }
}

/// True for the leader election's Lease.
pub fn is_lease(t: &(String, String, String)) -> bool {
    t.1 == "coordination.k8s.io"
}
