//! RBAC checked against reality: the real controller (with leader election, as the chart runs
//! it) goes through a scenario that takes every API path it has (discovery, ManagedHost create /
//! status / delete, request finalizers, retries, failures, backend refusal, rejection,
//! cancellation on delete, repeated events, lease acquire / renew / release; and a Redfish
//! dispatcher against a real sushy-emulator: its credentials and CA Secrets, a reprovision with its
//! operation Secret, the installer's callback and a callback for an unknown key). The embedded
//! API's access record of what it was served — (verb, group, resource, subresource) — is then
//! compared both ways with the rules the Helm chart renders (through the real Helm SDK, by
//! `tests/python/chart_rules.py`): a use the chart does not grant fails, and so does a grant
//! the controller never used.
mod harness;
mod redfish_support;
mod replica;
mod support;

use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, SimulatorFailures};
use osprov::controller::settings::MetricsAddr;
use redfish_support::{Emulator, IsoServer};
use replica::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::TestApi;

/// The controller's User-Agent in this test.
const AGENT: &str = "osprov-controller-rbac";

type Access = BTreeSet<(String, String, String)>;

/// Drive the controller through every path that talks to the API; returns its access record.
async fn scenario(namespaces: &[&str]) -> Access {
    let api = TestApi::start().await;
    let c = api.client.clone();
    for ns in namespaces.iter().filter(|n| **n != "default") {
        let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
        nsapi
            .create(
                &Default::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns"),
            )
            .await
            .expect("namespace");
    }
    let ns = namespaces.first().copied().unwrap_or("default");
    let sims = Arc::new(SimRegistry::default());
    let mut settings = fast_settings();
    settings.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    let callback = SocketAddr::from(([127, 0, 0, 1], redfish_support::free_port()));
    settings.callback_addr = MetricsAddr(Some(callback));
    let controller = Replica::start(
        "ctl",
        client_as(&api.server, AGENT).await,
        settings,
        Some(election("ctl")),
        sims.clone(),
    );
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
    eventually(20, "4 ManagedHosts", || async {
        let l = hosts.list(&Default::default()).await.ok()?;
        (l.items.len() == 4 && l.items.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;
    let fleet = sims.get(&format!("{ns}/sim")).expect("fleet");

    create(&requests, &request("retry", "sim-000", "debian-12")).await;
    create(&requests, &request("ghost", "nowhere", "debian-12")).await;
    create(&requests, &request("long", "sim-001", "rocky-9")).await;
    wait_phase(&requests, "retry", Phase::Succeeded, 30).await;
    wait_phase(&requests, "ghost", Phase::Rejected, 30).await;
    wait_phase(&requests, "long", Phase::Succeeded, 30).await;

    // Backend refusal: the backend drops an OS image the cached catalogue still offers.
    let mut fewer = s.clone();
    fewer.os_images.retain(|o| o != "rocky-9");
    fleet.configure(&fewer);
    create(&requests, &request("refused", "sim-002", "rocky-9")).await;
    eventually(30, "refused to fail an attempt", || async {
        let r = requests.get("refused").await.ok()?;
        (r.status?.attempts.unwrap_or(0) >= 1).then_some(())
    })
    .await;

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
        (hosts.list(&Default::default()).await.ok()?.items.len() == 1).then_some(())
    })
    .await;
    redfish(&c, ns, callback).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller.shutdown().await.expect("clean shutdown");

    let record = access_record(&c).await;
    let mut out = Access::new();
    for e in record[AGENT].as_array().expect("controller's record") {
        let resource = match e["subresource"].as_str().unwrap_or("") {
            "" => e["resource"].as_str().unwrap_or("").to_string(),
            sub => format!("{}/{sub}", e["resource"].as_str().unwrap_or("")),
        };
        out.insert((
            e["verb"].as_str().unwrap_or("").to_string(),
            e["group"].as_str().unwrap_or("").to_string(),
            resource,
        ));
    }
    out
}

/// The Redfish paths, against a real sushy-emulator (basic auth, TLS with a CA Secret): the
/// dispatcher reads its credentials and CA Secrets; a reprovision creates its operation Secret
/// and updates it as it goes; the installer's callback finds it (by name) and records the
/// outcome in it; a callback for a key this replica never saw is looked for by label (list).
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
    assert_eq!(redfish_support::post(&unknown, "").await, 404);
    assert_eq!(
        redfish_support::post(&url, r#"{"status":"succeeded"}"#).await,
        200
    );
    wait_phase(&requests, "bmc-0", Phase::Succeeded, 60).await;
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart's RBAC for the controller's ServiceAccount, rendered with `values` (JSON):
/// the set of (verb, group, resource) granted, per namespace or "*" for cluster-wide.
fn chart_grants(values: &serde_json::Value) -> serde_json::Value {
    chart_query("chart_rules.py", values)
}

fn grants_in(grants: &serde_json::Value, scope: &str) -> Access {
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

fn save(name: &str, access: &Access) {
    let dir = root().join("target/osprov-rbac");
    let _ = std::fs::create_dir_all(&dir);
    let path: &Path = &dir.join(name);
    let _ = std::fs::write(
        path,
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
const RACE_ONLY: [(&str, &str, &str); 2] = [
    ("get", "osprov.io", "managedhosts"),
    ("patch", "events.k8s.io", "events"),
];

/// Both ways: every use is granted, every grant was used (or is a listed race-only path).
fn compare(used: &Access, granted: &Access, what: &str) {
    let missing: Vec<_> = used.difference(granted).collect();
    let unused: Vec<_> = granted
        .difference(used)
        .filter(|(v, g, r)| !RACE_ONLY.contains(&(v.as_str(), g.as_str(), r.as_str())))
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
fn assert_race_paths_granted(granted: &Access, what: &str) {
    for (v, g, r) in RACE_ONLY {
        assert!(
            granted.contains(&(v.to_string(), g.to_string(), r.to_string())),
            "{what}: the race-only path {v} {g}/{r} is not granted"
        );
    }
}

fn is_lease(t: &(String, String, String)) -> bool {
    t.1 == "coordination.k8s.io"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_matches_what_the_controller_uses_cluster_wide() {
    let used = scenario(&[]).await;
    save("cluster-wide.json", &used);
    let grants = chart_grants(&serde_json::json!({}));
    // Watching every namespace: a ClusterRole for the osprov kinds and events, a Role in the
    // release namespace ("osprov-system" in chart_rules.py) for the lease.
    let cluster = grants_in(&grants, "*");
    let release = grants_in(&grants, "osprov-system");
    let (lease_used, rest_used): (Access, Access) = used.iter().cloned().partition(is_lease);
    compare(&rest_used, &cluster, "ClusterRole");
    assert_race_paths_granted(&cluster, "ClusterRole");
    compare(&lease_used, &release, "Role in the release namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_matches_what_the_controller_uses_per_namespace() {
    let used = scenario(&["default", "lab"]).await;
    save("namespaced.json", &used);
    let grants = chart_grants(&serde_json::json!({"watchNamespaces": ["default", "lab"]}));
    assert!(
        grants_in(&grants, "*").is_empty(),
        "no cluster-wide grant when namespaces are listed: {grants}"
    );
    let (lease_used, rest_used): (Access, Access) = used.iter().cloned().partition(is_lease);
    for ns in ["default", "lab"] {
        let role = grants_in(&grants, ns);
        compare(&rest_used, &role, &format!("Role in {ns}"));
        assert_race_paths_granted(&role, &format!("Role in {ns}"));
    }
    compare(
        &lease_used,
        &grants_in(&grants, "osprov-system")
            .into_iter()
            .filter(is_lease)
            .collect(),
        "lease Role",
    );
}
