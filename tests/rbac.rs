//! RBAC checked against reality: the real controller (with leader election, as the chart runs
//! it) goes through a scenario that takes every API path it has (discovery, ManagedHost create /
//! status / delete, request finalizers, retries, failures, backend refusal, rejection,
//! cancellation on delete, repeated events, lease acquire / renew / release; and a Redfish
//! dispatcher against a real sushy-emulator: its credentials and CA Secrets, a reprovision with its
//! operation Secret, the installer's callback and a callback for an unknown key). The embedded
//! API's access record of what it was served — (verb, group, resource, subresource) — is then
//! compared both ways with the rules the Helm chart renders (through the real Helm SDK, by
//! `tests/python/chart_rules.py`): a use the chart does not grant fails, and so does a grant
//! the controller never used. The scenario and the comparison live in `rbac_support`, shared
//! with `tests/helm_install.rs`, which runs them on the real control plane.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod harness;
mod rbac_support;
mod redfish_support;
mod replica;
mod support;

use harness::*;
use osprov::adapter::simulator::SimRegistry;
use osprov::controller::settings::MetricsAddr;
use rbac_support::*;
use replica::*;
use std::net::SocketAddr;
use std::sync::Arc;
use support::TestApi;

/// The controller's User-Agent in this test.
const AGENT: &str = "osprov-controller-rbac";

/// Drive the controller through every path that talks to the API; returns its access record.
async fn scenario(namespaces: &[&str]) -> Access {
    let api = TestApi::start().await;
    let c = api.client.clone();
    for ns in namespaces.iter().filter(|n| **n != "default") {
        let nsapi: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(c.clone());
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
    let callback = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    settings.callback_addr = MetricsAddr(Some(callback));
    let controller = Replica::start(
        "ctl",
        client_as(&api.server, AGENT).await,
        settings,
        Some(election("ctl")),
        sims.clone(),
    );
    drive(&c, ns, callback, Some(&sims)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_matches_what_the_controller_uses_cluster_wide() {
    let used = scenario(&[]).await;
    save("cluster-wide.json", &used);
    let grants = chart_grants(&serde_json::json!({}));
    // Watching every namespace: a ClusterRole for the osprov kinds and events; Roles in the
    // release namespace ("osprov-system" in chart_rules.py) for the lease and for Secrets
    // (never cluster-wide).
    let cluster = grants_in(&grants, "*");
    let release = grants_in(&grants, "osprov-system");
    let (namespaced_used, rest_used): (Access, Access) = used
        .iter()
        .cloned()
        .partition(|t| is_lease(t) || t.2 == "secrets");
    compare(&rest_used, &cluster, "ClusterRole");
    assert_race_paths_granted(&cluster, "ClusterRole");
    compare(&namespaced_used, &release, "Roles in the release namespace");
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
