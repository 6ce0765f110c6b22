//! The README's Resource Provider (`examples/resource_provider.py`, the official Kubernetes
//! Python client) run as a user runs it, against both API backends: it creates the host's
//! user-data Secret the way that client sends it (no `apiVersion`/`kind` in the body) and an
//! OSProvisioningRequest, watches it to `Succeeded`, and the simulator shows the host got that
//! user-data.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{OSDispatcher, OSProvisioningRequest};
use std::path::Path;
use std::sync::Arc;

on_both_backends!(the_python_resource_provider_gets_its_host_reprovisioned);

async fn the_python_resource_provider_gets_its_host_reprovisioned(c: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let _ctl = RunningController::start(c.client.clone(), fast_settings_in(&c.ns), sims.clone());
    let dispatchers: Api<OSDispatcher> = c.api();
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 50))).await;
    wait_hosts_named(&c, "sim-000").await;
    let python = std::env::var("OSPROV_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/resource_provider.py");
    let (kubeconfig, ns) = (c.kubeconfig.clone(), c.ns.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--namespace", &ns, "--host", "sim-000", "--os", "debian-12"])
            .args(["--timeout", "60"])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("python runs")
    })
    .await
    .expect("the script's thread");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("phase Succeeded"), "{text}");
    let requests: Api<OSProvisioningRequest> = c.api();
    let r = requests
        .get("sim-000-debian-12")
        .await
        .expect("the request");
    let token = r
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("an operation");
    let given = sims
        .get(&c.key("sim"))
        .expect("fleet")
        .config(&token)
        .expect("the operation got the configuration");
    let user_data = String::from_utf8(given.user_data.unwrap_or_default()).expect("utf-8");
    assert!(user_data.contains("hostname: sim-000"), "{user_data}");
}

/// Wait until the ManagedHost `name` is mirrored (the script's request then finds its host).
async fn wait_hosts_named(c: &TestCluster, name: &str) {
    let hosts: Api<osprov::api::ManagedHost> = c.api();
    eventually(30, &format!("ManagedHost {name}"), || async {
        hosts.get(name).await.ok().map(|_| ())
    })
    .await;
}
