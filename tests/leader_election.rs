//! Leader election on both API backends (embedded and the real kube-apiserver): two real controller replicas share one simulated
//! backend; only the lease holder reconciles, a standby takes over once the lease has expired
//! (or at once after a clean release), a leader that cannot renew stops, and no request is
//! reprovisioned twice across a handover. Standbys serve /healthz and /readyz as healthy.
mod cluster;
mod harness;
mod replica;
mod support;

use cluster::{proxy::Proxy, TestCluster};
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase};
use replica::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: &str = "osprov-osp";

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref()?.holder_identity.clone()
}

async fn lease(api: &Api<Lease>) -> Lease {
    api.get(LEASE).await.expect("lease")
}

async fn wait_leading(r: &Replica, secs: u64) {
    eventually(secs, &format!("{} to lead", r.name), || async {
        r.leading().then_some(())
    })
    .await;
}

on_both_backends!(
    only_the_leader_reconciles_and_a_standby_takes_over_after_expiry,
    a_clean_shutdown_releases_the_lease_for_an_immediate_handover,
    a_leader_whose_lease_is_taken_stops_reconciling,
    a_leader_cut_off_from_the_api_stops_before_its_lease_expires,
);

async fn only_the_leader_reconciles_and_a_standby_takes_over_after_expiry(t: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let leases: Api<Lease> = t.api();
    let requests: Api<OSProvisioningRequest> = t.api();
    let dispatchers: Api<OSDispatcher> = t.api();
    let hosts: Api<ManagedHost> = t.api();

    let a = Replica::start(
        "a",
        t.client_as("replica-a").await,
        fast_settings_in(&t.ns),
        Some(election_in("a", &t.ns)),
        sims.clone(),
    );
    wait_leading(&a, 10).await;
    let b_addr = free_addr();
    let b = Replica::start(
        "b",
        t.client_as("replica-b").await,
        osprov::controller::settings::Settings {
            metrics_addr: osprov::controller::settings::MetricsAddr(Some(b_addr)),
            ..fast_settings_in(&t.ns)
        },
        Some(election_in("b", &t.ns)),
        sims.clone(),
    );

    create(&dispatchers, &sim_dispatcher("sim", sim(3, 2500))).await;
    eventually(20, "3 ManagedHosts", || async {
        let l = hosts.list(&Default::default()).await.ok()?;
        (l.items.len() == 3 && l.items.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;
    for i in 0..3 {
        create(
            &requests,
            &request(&format!("r{i}"), &format!("sim-00{i}"), "rocky-9"),
        )
        .await;
    }
    for i in 0..3 {
        wait_phase(&requests, &format!("r{i}"), Phase::Provisioning, 20).await;
    }

    // The standby holds back: no reconcile, only the lease, and it is a ready standby. First the
    // positive sign that b runs: it has looked at the lease (an answered attempt) and stands by.
    eventually(10, "b to look at the lease", || async {
        b.health
            .standby_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;
    assert!(a.leading() && !b.leading());
    assert_eq!(holder(&lease(&leases).await).as_deref(), Some("a"));
    assert_eq!(
        t.resources_used("replica-b").await,
        [("coordination.k8s.io".to_string(), "leases".to_string())],
        "the standby touched only its lease"
    );
    assert!(t.resources_used("replica-a").await.contains(&(
        "osprov.io".to_string(),
        "osprovisioningrequests".to_string()
    )));
    let (code, body) = http_get(b_addr, "/readyz").await;
    assert_eq!((code, body.trim()), (200, "standby: lease observed"));
    assert_eq!(http_get(b_addr, "/healthz").await.0, 200);
    let (_, metrics) = http_get(b_addr, "/metrics").await;
    assert!(metrics.contains("osprov_leader 0"), "{metrics}");

    // Crash the leader mid-provisioning: the standby waits for the lease to expire, then leads.
    let before = lease(&leases).await;
    let last_renew = before.spec.as_ref().and_then(|s| s.renew_time.clone());
    a.kill().await;
    let killed = Instant::now();
    // What the killed leader left in flight: only b can finish it, so its Succeeded below is the
    // positive sign that b looked at those operations before the ledger is checked.
    let mut in_flight = 0;
    for i in 0..3 {
        let r = requests.get(&format!("r{i}")).await.expect("request");
        in_flight += usize::from(r.status.and_then(|s| s.phase) == Some(Phase::Provisioning));
    }
    assert!(in_flight > 0, "the killed leader left nothing in flight");
    wait_leading(&b, 10).await;
    let took = killed.elapsed();
    let after = lease(&leases).await;
    let spec = after.spec.clone().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    let (renewed, acquired) = (
        last_renew.expect("renewTime").0,
        spec.acquire_time.expect("acquireTime").0,
    );
    let gap = acquired.duration_since(renewed);
    assert!(
        gap.as_secs_f64() >= 2.0,
        "took over {gap:?} after the last renewal, before the 2s lease expired"
    );
    assert!(
        took <= Duration::from_millis(2000 + 1000),
        "took over {took:?} after the crash; lease 2s + observation latency"
    );
    eventually(10, "the new leader's caches to sync", || async {
        let (code, body) = http_get(b_addr, "/readyz").await;
        (code == 200 && body.contains("leader: caches synced")).then_some(())
    })
    .await;
    for i in 0..3 {
        wait_phase(&requests, &format!("r{i}"), Phase::Succeeded, 30).await;
    }
    let stats = sims.get(&t.key("sim")).expect("fleet").stats();
    assert_eq!(stats.started(), 3);
    assert!(
        stats.reprovision_calls.values().all(|n| *n == 1),
        "a token was sent twice across the handover: {stats:?}"
    );
    let (_, metrics) = http_get(b_addr, "/metrics").await;
    assert!(metrics.contains("osprov_leader 1"), "{metrics}");
    drop(b);
}

async fn a_clean_shutdown_releases_the_lease_for_an_immediate_handover(t: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let leases: Api<Lease> = t.api();
    let slow = |id: &str| osprov::controller::leader::LeaderConfig {
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(5),
        ..election_in(id, &t.ns)
    };
    let a = Replica::start(
        "a",
        t.client_as("replica-a").await,
        fast_settings_in(&t.ns),
        Some(slow("a")),
        sims.clone(),
    );
    wait_leading(&a, 10).await;
    let b = Replica::start(
        "b",
        t.client_as("replica-b").await,
        fast_settings_in(&t.ns),
        Some(slow("b")),
        sims.clone(),
    );
    // b has looked at the lease (an answered attempt) and stands by: an attempt that took the
    // lease would have written b into it before it returned.
    eventually(10, "b to look at the lease", || async {
        b.health
            .standby_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;
    assert!(!b.leading());
    assert_eq!(holder(&lease(&leases).await).as_deref(), Some("a"));
    a.shutdown().await.expect("clean shutdown");
    let stopped = Instant::now();
    wait_leading(&b, 10).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "took {:?} although the lease was released (lease duration 10s)",
        stopped.elapsed()
    );
    let spec = lease(&leases).await.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_duration_seconds, Some(10));
    assert_eq!(spec.lease_transitions, Some(1));
}

async fn a_leader_whose_lease_is_taken_stops_reconciling(t: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let leases: Api<Lease> = t.api();
    let mut a = Replica::start(
        "a",
        t.client_as("replica-a").await,
        fast_settings_in(&t.ns),
        Some(election_in("a", &t.ns)),
        sims.clone(),
    );
    wait_leading(&a, 10).await;
    // Another holder writes the lease (as a partitioned leader's successor would).
    let mut l = lease(&leases).await;
    if let Some(spec) = l.spec.as_mut() {
        spec.holder_identity = Some("usurper".into());
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
    }
    leases
        .replace(LEASE, &Default::default(), &l)
        .await
        .expect("replace");
    let result = tokio::time::timeout(Duration::from_secs(3), a.wait())
        .await
        .expect("the old leader stops within the renew deadline");
    assert!(
        matches!(result, Err(osprov::controller::Error::Leader(_))),
        "{result:?}"
    );
    assert!(!a.leading());
    assert_eq!(
        holder(&lease(&leases).await).as_deref(),
        Some("usurper"),
        "the old leader did not write the lease back"
    );
}

async fn a_leader_cut_off_from_the_api_stops_before_its_lease_expires(t: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let proxy = Proxy::start(t.api_addr()).await;
    let mut a = Replica::start(
        "a",
        t.client_via(&proxy, "replica-a").await,
        fast_settings_in(&t.ns),
        Some(election_in("a", &t.ns)),
        sims,
    );
    wait_leading(&a, 10).await;
    proxy.cut();
    let cut = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), a.wait())
        .await
        .expect("the leader gives up");
    assert!(matches!(result, Err(osprov::controller::Error::Leader(_))));
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "stopped {:?} after losing the API: must be within the 1s renew deadline (+ one retry), before the 2s lease expires",
        cut.elapsed()
    );
}
