//! End-to-end: the real controller (real kube client over HTTP) with the simulator, on both API
//! backends: the embedded API and the real kube-apiserver (`cluster/`). Each test has its own
//! namespace, fleet registry and controller watching only that namespace.
mod cluster;
mod harness;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{
    conditions, DispatcherState, ManagedHost, OSDispatcher, OSProvisioningRequest, Phase,
    SimulatorFailures, DISCOVER_ANNOTATION,
};
use std::sync::Arc;
use std::time::Duration;

struct Env {
    c: TestCluster,
    sims: Arc<SimRegistry>,
    requests: Api<OSProvisioningRequest>,
    dispatchers: Api<OSDispatcher>,
    hosts: Api<ManagedHost>,
}

async fn env(c: TestCluster) -> Env {
    Env {
        requests: c.api(),
        dispatchers: c.api(),
        hosts: c.api(),
        c,
        sims: Arc::new(SimRegistry::default()),
    }
}

impl Env {
    fn controller(&self) -> RunningController {
        RunningController::start(
            self.c.client.clone(),
            fast_settings_in(&self.c.ns),
            self.sims.clone(),
        )
    }
    fn fleet(&self, name: &str) -> Arc<osprov::adapter::simulator::SimFleet> {
        self.sims.get(&self.c.key(name)).expect("fleet exists")
    }
    async fn wait_hosts(&self, n: usize) {
        eventually(20, &format!("{n} ManagedHosts"), || async {
            let list = self.hosts.list(&Default::default()).await.ok()?;
            (list.items.len() == n && list.items.iter().all(|h| h.status.is_some())).then_some(())
        })
        .await;
    }
}

on_both_backends!(
    requests_converge_and_hosts_are_mirrored,
    unknown_host_and_os_are_rejected_with_reasons,
    already_running_os_succeeds_without_reprovision,
    two_requests_for_one_host_run_one_after_the_other,
    max_concurrent_is_never_exceeded,
    injected_failures_retry_then_succeed_or_end_failed,
    backend_outage_marks_dispatcher_unreachable_then_requests_finish,
    restart_mid_provisioning_never_reprovisions_twice,
    deleting_an_in_flight_request_cancels_and_releases_the_host,
    lookup_interval_sets_discovery_frequency,
    other_provisioners_dispatchers_are_left_alone,
    a_new_os_in_the_backend_is_found_by_an_on_demand_discovery,
    a_host_gone_from_the_backend_is_marked_then_removed,
    changing_the_os_converges_again_with_a_new_generation,
    requests_for_another_provisioners_hosts_are_not_touched,
);

async fn requests_converge_and_hosts_are_mirrored(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(4, 50))).await;
    e.wait_hosts(4).await;
    let mh = e.hosts.get("sim-000").await.expect("host");
    assert_eq!(
        mh.owner_references().first().map(|o| o.kind.as_str()),
        Some("OSDispatcher")
    );
    assert_eq!(
        mh.status.as_ref().and_then(|s| s.current_os.as_deref()),
        Some("ubuntu-24.04")
    );
    for i in 0..4 {
        create(
            &e.requests,
            &request(&format!("r{i}"), &format!("sim-00{i}"), "debian-12"),
        )
        .await;
    }
    for i in 0..4 {
        let r = wait_phase(&e.requests, &format!("r{i}"), Phase::Succeeded, 30).await;
        let st = r.status.expect("status");
        assert!(conditions::is_true(&st.conditions, "Provisioned"));
        assert_eq!(st.observed_generation, r.metadata.generation);
        assert_eq!(st.attempts, Some(1));
    }
    let stats = e.fleet("sim").stats();
    assert_eq!(stats.started(), 4);
    assert!(
        stats.reprovision_calls.values().all(|n| *n == 1),
        "one call per token: {stats:?}"
    );
    eventually(10, "ManagedHost shows the new OS", || async {
        let mh = e.hosts.get("sim-003").await.ok()?;
        (mh.status?.current_os.as_deref() == Some("debian-12")).then_some(())
    })
    .await;
    let d = e.dispatchers.get("sim").await.expect("dispatcher");
    let st = d.status.expect("dispatcher status");
    assert_eq!(st.state, Some(DispatcherState::Ready));
    assert_eq!(st.host_count, Some(4));
    assert!(st.os_catalogue.contains(&"rocky-9".to_string()));
}

async fn unknown_host_and_os_are_rejected_with_reasons(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(2, 0))).await;
    e.wait_hosts(2).await;
    create(&e.requests, &request("ghost", "no-such-host", "debian-12")).await;
    create(&e.requests, &request("bados", "sim-000", "windows-95")).await;
    let ghost = wait_phase(&e.requests, "ghost", Phase::Rejected, 20)
        .await
        .status
        .expect("status");
    assert_eq!(ghost.reason.as_deref(), Some("HostNotManaged"));
    assert!(ghost
        .message
        .unwrap_or_default()
        .contains("add it in the management software"));
    let bados = wait_phase(&e.requests, "bados", Phase::Rejected, 20)
        .await
        .status
        .expect("status");
    assert_eq!(bados.reason.as_deref(), Some("OSNotAvailable"));
    assert_eq!(
        e.fleet("sim").stats().started(),
        0,
        "nothing was reprovisioned"
    );
}

async fn already_running_os_succeeds_without_reprovision(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(1, 0))).await;
    e.wait_hosts(1).await;
    create(&e.requests, &request("same", "sim-000", "ubuntu-24.04")).await;
    let st = wait_phase(&e.requests, "same", Phase::Succeeded, 20)
        .await
        .status
        .expect("status");
    assert_eq!(st.reason.as_deref(), Some("AlreadyProvisioned"));
    assert_eq!(e.fleet("sim").stats().reprovision_calls.len(), 0);
}

async fn two_requests_for_one_host_run_one_after_the_other(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(1, 2500))).await;
    e.wait_hosts(1).await;
    create(&e.requests, &request("first", "sim-000", "debian-12")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has second precision
    create(&e.requests, &request("second", "sim-000", "rocky-9")).await;
    let queued = wait_phase(&e.requests, "second", Phase::Queued, 20)
        .await
        .status
        .expect("status");
    assert_eq!(queued.reason.as_deref(), Some("HostBusy"));
    let first = wait_phase(&e.requests, "first", Phase::Succeeded, 20)
        .await
        .status
        .expect("status");
    let second = wait_phase(&e.requests, "second", Phase::Succeeded, 20)
        .await
        .status
        .expect("status");
    let first_done = first.completed_at.expect("completed").0;
    let second_started = second.operation.and_then(|o| o.started).expect("started").0;
    assert!(
        second_started >= first_done,
        "second started {second_started} before first finished {first_done}"
    );
    let stats = e.fleet("sim").stats();
    assert_eq!(stats.started_per_host.get("sim-000"), Some(&2));
    assert_eq!(
        e.fleet("sim")
            .host("sim-000")
            .and_then(|h| h.current_os)
            .as_deref(),
        Some("rocky-9")
    );
}

async fn max_concurrent_is_never_exceeded(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    let mut d = sim_dispatcher("sim", sim(6, 200));
    d.spec.max_concurrent = Some(2);
    create(&e.dispatchers, &d).await;
    e.wait_hosts(6).await;
    for i in 0..6 {
        create(
            &e.requests,
            &request(&format!("r{i}"), &format!("sim-00{i}"), "rocky-9"),
        )
        .await;
    }
    for i in 0..6 {
        wait_phase(&e.requests, &format!("r{i}"), Phase::Succeeded, 40).await;
    }
    let stats = e.fleet("sim").stats();
    assert_eq!(stats.started(), 6);
    assert!(
        stats.max_in_flight <= 2,
        "simulator saw {} at once",
        stats.max_in_flight
    );
    assert_eq!(stats.max_in_flight, 2, "the limit is used, not undershot");
}

async fn injected_failures_retry_then_succeed_or_end_failed(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    let mut s = sim(2, 20);
    s.failures = Some(SimulatorFailures {
        fail_nth: vec![1],
        ..Default::default()
    });
    create(&e.dispatchers, &sim_dispatcher("flaky", s)).await;
    let mut always = sim(1, 20);
    always.host_prefix = "bad-".into();
    always.failures = Some(SimulatorFailures {
        fail_fraction: Some(1.0),
        ..Default::default()
    });
    create(&e.dispatchers, &sim_dispatcher("broken", always)).await;
    e.wait_hosts(3).await;
    create(&e.requests, &request("retry", "sim-000", "debian-12")).await;
    let st = wait_phase(&e.requests, "retry", Phase::Succeeded, 30)
        .await
        .status
        .expect("status");
    assert_eq!(st.attempts, Some(2));
    let mut doomed = request("doomed", "bad-000", "debian-12");
    doomed.spec.max_attempts = Some(3);
    create(&e.requests, &doomed).await;
    let st = wait_phase(&e.requests, "doomed", Phase::Failed, 30)
        .await
        .status
        .expect("status");
    assert_eq!(
        (st.attempts, st.reason.as_deref()),
        (Some(3), Some("AttemptsExhausted"))
    );
    assert_eq!(e.fleet("broken").stats().started(), 3);
    assert!(!conditions::is_true(&st.conditions, "Provisioned"));
}

async fn backend_outage_marks_dispatcher_unreachable_then_requests_finish(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(2, 400))).await;
    e.wait_hosts(2).await;
    create(&e.requests, &request("r0", "sim-000", "debian-12")).await;
    wait_phase(&e.requests, "r0", Phase::Provisioning, 20).await;
    e.fleet("sim").set_unreachable(true);
    create(&e.requests, &request("r1", "sim-001", "debian-12")).await;
    eventually(20, "dispatcher Unreachable", || async {
        let d = e.dispatchers.get("sim").await.ok()?;
        (d.status?.state == Some(DispatcherState::Unreachable)).then_some(())
    })
    .await;
    // The controller has looked at r1 during the outage and said so; r1 waits, unfinished.
    let r1 = eventually(20, "r1 waiting for the unreachable dispatcher", || async {
        let r = e.requests.get("r1").await.ok()?;
        let st = r.status.clone()?;
        (st.reason.as_deref() == Some("DispatcherUnavailable")
            && st.observed_generation == r.metadata.generation)
            .then_some(r)
    })
    .await;
    assert_ne!(r1.status.and_then(|s| s.phase), Some(Phase::Succeeded));
    e.fleet("sim").set_unreachable(false);
    wait_phase(&e.requests, "r0", Phase::Succeeded, 30).await;
    wait_phase(&e.requests, "r1", Phase::Succeeded, 30).await;
    assert!(e
        .fleet("sim")
        .stats()
        .reprovision_calls
        .values()
        .all(|n| *n == 1));
}

async fn restart_mid_provisioning_never_reprovisions_twice(c: TestCluster) {
    let e = env(c).await;
    let ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(3, 1500))).await;
    e.wait_hosts(3).await;
    for i in 0..3 {
        create(
            &e.requests,
            &request(&format!("r{i}"), &format!("sim-00{i}"), "rocky-9"),
        )
        .await;
    }
    for i in 0..3 {
        wait_phase(&e.requests, &format!("r{i}"), Phase::Provisioning, 20).await;
    }
    ctl.stop().await;
    // What the stopped controller left in flight: only the new one can finish it, so its
    // Succeeded below is the positive sign that the new controller looked at those operations.
    let mut in_flight = 0;
    for i in 0..3 {
        let r = e.requests.get(&format!("r{i}")).await.expect("request");
        in_flight += usize::from(r.status.and_then(|s| s.phase) == Some(Phase::Provisioning));
    }
    assert!(
        in_flight > 0,
        "the stopped controller left nothing in flight"
    );
    let second = e.controller();
    for i in 0..3 {
        wait_phase(&e.requests, &format!("r{i}"), Phase::Succeeded, 30).await;
    }
    drop(second);
    let stats = e.fleet("sim").stats();
    assert_eq!(stats.started(), 3);
    assert_eq!(stats.reprovision_calls.len(), 3);
    assert!(
        stats.reprovision_calls.values().all(|n| *n == 1),
        "a token was sent twice: {stats:?}"
    );
}

async fn deleting_an_in_flight_request_cancels_and_releases_the_host(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(1, 60_000))).await;
    e.wait_hosts(1).await;
    create(&e.requests, &request("long", "sim-000", "debian-12")).await;
    wait_phase(&e.requests, "long", Phase::Provisioning, 20).await;
    eventually(10, "ManagedHost shows the holder", || async {
        let mh = e.hosts.get("sim-000").await.ok()?;
        (mh.status?.active_request.as_deref() == Some("long")).then_some(())
    })
    .await;
    e.requests
        .delete("long", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(20, "request gone", || async {
        e.requests
            .get_opt("long")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(e.fleet("sim").stats().cancelled, 1);
    assert_eq!(e.fleet("sim").stats().in_flight, 0);
    // The host is free for the next request.
    e.dispatchers
        .patch(
            "sim",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"simulator": {"provisionMillis": 10}}})),
        )
        .await
        .expect("patch");
    eventually(20, "dispatcher observed the new spec", || async {
        let d = e.dispatchers.get("sim").await.ok()?;
        (d.status?.observed_generation == d.metadata.generation).then_some(())
    })
    .await;
    create(&e.requests, &request("next", "sim-000", "rocky-9")).await;
    wait_phase(&e.requests, "next", Phase::Succeeded, 30).await;
    eventually(10, "holder cleared", || async {
        let mh = e.hosts.get("sim-000").await.ok()?;
        mh.status?.active_request.is_none().then_some(())
    })
    .await;
}

async fn lookup_interval_sets_discovery_frequency(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    let mut fast = sim_dispatcher("fast", sim(1, 0));
    fast.spec.lookup_interval = Some("100ms".into());
    let mut slow = sim_dispatcher("slow", {
        let mut s = sim(1, 0);
        s.host_prefix = "slow-".into();
        s
    });
    slow.spec.lookup_interval = Some("2s".into());
    create(&e.dispatchers, &fast).await;
    create(&e.dispatchers, &slow).await;
    e.wait_hosts(2).await;
    let (f0, s0) = (
        e.fleet("fast").stats().discoveries,
        e.fleet("slow").stats().discoveries,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (f1, s1) = (
        e.fleet("fast").stats().discoveries,
        e.fleet("slow").stats().discoveries,
    );
    let (fast_n, slow_n) = (f1 - f0, s1 - s0);
    assert!(
        (15..=40).contains(&fast_n),
        "100ms interval ran {fast_n} discoveries in 3s"
    );
    assert!(
        (1..=2).contains(&slow_n),
        "2s interval ran {slow_n} discoveries in 3s"
    );
}

async fn other_provisioners_dispatchers_are_left_alone(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    let mut theirs = sim_dispatcher("theirs", sim(2, 0));
    theirs.spec.provisioner = "other".into();
    create(&e.dispatchers, &theirs).await;
    create(
        &e.dispatchers,
        &sim_dispatcher("mine", {
            let mut s = sim(1, 0);
            s.host_prefix = "mine-".into();
            s
        }),
    )
    .await;
    e.wait_hosts(1).await;
    // A positive sign that the controller has dealt with "theirs": ask "mine" for a discovery
    // (the annotation `osprov discover` sets) and wait for the answer. The dispatcher watch
    // delivers changes in order and the ask was made after "theirs" was created, so "theirs"
    // was handed to the dispatcher controller first; the answer takes a discovery started
    // after the ask.
    let ask = serde_json::json!({"metadata": {"annotations": {DISCOVER_ANNOTATION: "probe"}}});
    e.dispatchers
        .patch("mine", &PatchParams::default(), &Patch::Merge(&ask))
        .await
        .expect("ask for a discovery");
    eventually(20, "mine answered the discovery ask", || async {
        let d = e.dispatchers.get("mine").await.ok()?;
        (d.status?.last_discovery_request.as_deref() == Some("probe")).then_some(())
    })
    .await;
    assert!(
        e.sims.get(&e.c.key("theirs")).is_none(),
        "no session was opened for another provisioner's dispatcher"
    );
    assert!(e
        .dispatchers
        .get("theirs")
        .await
        .expect("d")
        .status
        .is_none());
    assert_eq!(
        e.hosts
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
}

async fn a_new_os_in_the_backend_is_found_by_an_on_demand_discovery(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    let mut d = sim_dispatcher("slow", sim(1, 0));
    d.spec.lookup_interval = Some("1h".into());
    create(&e.dispatchers, &d).await;
    e.wait_hosts(1).await;
    let before = e.fleet("slow").stats().discoveries;
    // The backend starts offering an image without osprov being told.
    let mut changed = sim(1, 0);
    changed.os_images.push("freebsd-14".into());
    e.sims.fleet(&e.c.key("slow"), &changed);
    create(&e.requests, &request("bsd", "sim-000", "freebsd-14")).await;
    wait_phase(&e.requests, "bsd", Phase::Succeeded, 20).await;
    assert!(
        e.fleet("slow").stats().discoveries > before,
        "the request triggered a discovery"
    );
}

async fn a_host_gone_from_the_backend_is_marked_then_removed(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(2, 0))).await;
    e.wait_hosts(2).await;
    e.dispatchers
        .patch(
            "sim",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"simulator": {"hosts": 1}}})),
        )
        .await
        .expect("patch");
    eventually(20, "sim-001 marked not present", || async {
        let mh = e.hosts.get("sim-001").await.ok()?;
        let c = conditions::get(&mh.status?.conditions, "Present")?.clone();
        (c.status == "False" && c.reason == "NotReported").then_some(())
    })
    .await;
    // fast_settings() keeps a missing host for 2 s.
    eventually(20, "sim-001 removed", || async {
        e.hosts
            .get_opt("sim-001")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(e.hosts.get_opt("sim-000").await.expect("get").is_some());
}

async fn changing_the_os_converges_again_with_a_new_generation(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    create(&e.dispatchers, &sim_dispatcher("sim", sim(1, 20))).await;
    e.wait_hosts(1).await;
    create(&e.requests, &request("r", "sim-000", "debian-12")).await;
    wait_phase(&e.requests, "r", Phase::Succeeded, 20).await;
    e.requests
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"os": "rocky-9"}})),
        )
        .await
        .expect("patch");
    let r = eventually(20, "generation 2 provisioned", || async {
        let r = e.requests.get("r").await.ok()?;
        let st = r.status.clone()?;
        (st.observed_generation == Some(2) && st.phase == Some(Phase::Succeeded)).then_some(r)
    })
    .await;
    let st = r.status.expect("status");
    assert_eq!(
        st.operation.map(|o| (o.generation, o.os)),
        Some((2, "rocky-9".to_string()))
    );
    assert!(st
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(2)));
    assert_eq!(e.fleet("sim").stats().started(), 2);
    assert_eq!(
        e.fleet("sim")
            .host("sim-000")
            .and_then(|h| h.current_os)
            .as_deref(),
        Some("rocky-9")
    );
    // spec.host is immutable: the API refuses the change with a 422.
    let err = e
        .requests
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"host": "sim-001"}})),
        )
        .await
        .expect_err("host is immutable");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
}

async fn requests_for_another_provisioners_hosts_are_not_touched(c: TestCluster) {
    let e = env(c).await;
    let _ctl = e.controller();
    // Another provisioner ("blue") runs its own controller against the same API.
    let blue = RunningController::start(
        e.c.client.clone(),
        osprov::controller::settings::Settings {
            identifier: "blue".into(),
            ..fast_settings_in(&e.c.ns)
        },
        e.sims.clone(),
    );
    let mut theirs = sim_dispatcher("blue", {
        let mut s = sim(1, 20);
        s.host_prefix = "blue-".into();
        s
    });
    theirs.spec.provisioner = "blue".into();
    create(&e.dispatchers, &theirs).await;
    create(&e.dispatchers, &sim_dispatcher("sim", sim(1, 20))).await;
    e.wait_hosts(2).await;
    create(&e.requests, &request("b", "blue-000", "debian-12")).await;
    create(&e.requests, &request("o", "sim-000", "debian-12")).await;
    wait_phase(&e.requests, "b", Phase::Succeeded, 20).await;
    wait_phase(&e.requests, "o", Phase::Succeeded, 20).await;
    // Each request was carried out once, by the provisioner owning the host.
    assert_eq!(e.fleet("blue").stats().started(), 1);
    assert_eq!(e.fleet("sim").stats().started(), 1);
    let b = e.requests.get("b").await.expect("b");
    assert_eq!(
        b.finalizers(),
        ["osprov.io/cancel-on-delete"],
        "only one provisioner put its finalizer"
    );
    drop(blue);
}
