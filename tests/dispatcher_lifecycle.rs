//! An OSDispatcher deleted while one of its hosts is being reprovisioned: the outcome is unknown
//! to osprov, so the request waits with `DispatcherUnavailable` (it is neither failed nor started
//! again); a dispatcher re-created under the same name resumes it from the recorded token with no
//! second reprovision, and deleting a request whose dispatcher is gone still releases it. On both
//! API backends: on the real one, kube-controller-manager's garbage collector removes the hosts.
mod cluster;
mod harness;
mod replica;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::{Api, DeleteParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase};
use std::sync::Arc;

on_both_backends!(
    a_deleted_dispatcher_leaves_requests_waiting_and_a_new_one_resumes_them,
    every_dispatcher_reconcile_is_timed_however_it_ends,
);

/// The reconcile duration histogram counts every dispatcher reconcile, also those that end early
/// (here: a dispatcher of another provisioner, which is left alone).
async fn every_dispatcher_reconcile_is_timed_however_it_ends(t: TestCluster) {
    let ctl = RunningController::start(
        t.client.clone(),
        fast_settings_in(&t.ns),
        Arc::new(SimRegistry::default()),
    );
    let dispatchers: Api<OSDispatcher> = t.api();
    let mut theirs = sim_dispatcher("theirs", sim(1, 50));
    theirs.spec.provisioner = "someone-else".into();
    let label = [("controller", "dispatcher")];
    let before = ctl.metric("osprov_reconciles_total", &label);
    create(&dispatchers, &theirs).await;
    // The positive signal: the controller reconciled it (and returned at once).
    eventually(
        30,
        "a reconcile of the other provisioner's dispatcher",
        || async { (ctl.metric("osprov_reconciles_total", &label) > before).then_some(()) },
    )
    .await;
    eventually(10, "as many timed reconciles as reconciles", || async {
        let runs = ctl.metric("osprov_reconciles_total", &label);
        let timed = ctl.metric("osprov_reconcile_duration_seconds_count", &label);
        (runs > 0.0 && timed == runs).then_some(())
    })
    .await;
}

async fn a_deleted_dispatcher_leaves_requests_waiting_and_a_new_one_resumes_them(t: TestCluster) {
    let c = t.client.clone();
    let requests: Api<OSProvisioningRequest> = t.api();
    let dispatchers: Api<OSDispatcher> = t.api();
    let hosts: Api<ManagedHost> = t.api();
    let sims = Arc::new(SimRegistry::default());
    let metrics = replica::free_addr();
    let mut settings = fast_settings_in(&t.ns);
    settings.metrics_addr = osprov::controller::settings::MetricsAddr(Some(metrics));
    let _ctl = RunningController::start(c.clone(), settings, sims.clone());
    // The dispatcher's metric series, as Prometheus would scrape them.
    let label = format!("dispatcher=\"{}\"", t.key("sim"));
    let series = || async {
        let (_, body) = replica::http_get(metrics, "/metrics").await;
        body.lines().filter(|l| l.contains(&label)).count()
    };

    let spec = sim(2, 3000);
    create(&dispatchers, &sim_dispatcher("sim", spec.clone())).await;
    eventually(20, "2 ManagedHosts", || async {
        let l = hosts.list(&Default::default()).await.ok()?;
        (l.items.len() == 2 && l.items.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;
    assert!(series().await > 0, "the dispatcher has metric series");
    create(&requests, &request("r", "sim-000", "debian-12")).await;
    wait_phase(&requests, "r", Phase::Provisioning, 20).await;

    dispatchers
        .delete("sim", &DeleteParams::default())
        .await
        .expect("delete dispatcher");
    // Its ManagedHosts go with it (owner references); the request waits, saying why.
    eventually(20, "ManagedHosts garbage-collected", || async {
        hosts
            .list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let waiting = eventually(20, "request waiting for its dispatcher", || async {
        let st = requests.get("r").await.ok()?.status?;
        (st.reason.as_deref() == Some("DispatcherUnavailable")).then_some(st)
    })
    .await;
    assert_eq!(waiting.phase, Some(Phase::Provisioning));
    let token = waiting.operation.as_ref().expect("operation").token.clone();
    // Released: no metric series is left behind for it.
    eventually(10, "the dispatcher's metric series removed", || async {
        (series().await == 0).then_some(())
    })
    .await;

    // The same dispatcher again: the recorded operation is looked up, not started again.
    create(&dispatchers, &sim_dispatcher("sim", spec)).await;
    wait_phase(&requests, "r", Phase::Succeeded, 30).await;
    let stats = sims.get(&t.key("sim")).expect("fleet").stats();
    assert_eq!(stats.started(), 1, "{stats:?}");
    assert_eq!(stats.reprovision_calls.get(&token), Some(&1), "{stats:?}");

    // In flight again, the dispatcher deleted again, then the request deleted: it is released
    // without a dispatcher to cancel through.
    create(&requests, &request("s", "sim-001", "rocky-9")).await;
    wait_phase(&requests, "s", Phase::Provisioning, 20).await;
    dispatchers
        .delete("sim", &DeleteParams::default())
        .await
        .expect("delete dispatcher");
    eventually(20, "request waiting for its dispatcher", || async {
        let st = requests.get("s").await.ok()?.status?;
        (st.reason.as_deref() == Some("DispatcherUnavailable")).then_some(())
    })
    .await;
    requests
        .delete("s", &DeleteParams::default())
        .await
        .expect("delete request");
    eventually(20, "request released and gone", || async {
        requests.get_opt("s").await.ok()?.is_none().then_some(())
    })
    .await;
}
