//! Unit tests of the simulated fleet: idempotency per token, failure injection, outage, cancel, events.
use super::*;
use crate::api::SimulatorFailures;

fn spec(hosts: i32, millis: i64) -> SimulatorSpec {
    SimulatorSpec {
        hosts,
        provision_millis: millis,
        ..SimulatorSpec::default()
    }
}

async fn wait_terminal(adapter: &SimulatorAdapter, host: &str, token: &str) -> OperationState {
    for _ in 0..200 {
        if let Ok(Some(op)) = adapter.operation(host, token).await {
            if op.state.is_terminal() {
                return op.state;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("operation {token} never finished");
}

#[tokio::test]
async fn discovers_configured_fleet() {
    let reg = SimRegistry::default();
    let adapter = SimulatorAdapter::new(reg.fleet("ns/d", &spec(3, 0)));
    let inv = adapter.discover().await.unwrap();
    let names: Vec<_> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["sim-000", "sim-001", "sim-002"]);
    assert_eq!(inv.hosts[0].current_os.as_deref(), Some("ubuntu-24.04"));
    assert_eq!(reg.get("ns/d").unwrap().stats().discoveries, 1);
    // Reconfiguring shrinks the fleet and keeps the same backend.
    reg.fleet("ns/d", &spec(1, 0));
    assert_eq!(adapter.discover().await.unwrap().hosts.len(), 1);
}

#[tokio::test]
async fn reprovision_is_idempotent_per_token_and_completes() {
    let reg = SimRegistry::default();
    let fleet = reg.fleet("ns/d", &spec(2, 20));
    let adapter = SimulatorAdapter::new(fleet.clone());
    let mut events = adapter.subscribe().await.unwrap();
    let first = adapter
        .reprovision(
            "sim-000",
            "debian-12",
            "t1",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
    let again = adapter
        .reprovision(
            "sim-000",
            "debian-12",
            "t1",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    let busy = adapter
        .reprovision(
            "sim-000",
            "debian-12",
            "t2",
            &crate::adapter::HostConfig::default(),
        )
        .await;
    assert!(matches!(busy, Err(AdapterError::HostBusy { .. })));
    assert_eq!(
        wait_terminal(&adapter, "sim-000", "t1").await,
        OperationState::Succeeded
    );
    let stats = fleet.stats();
    assert_eq!(stats.reprovision_calls.get("t1"), Some(&2));
    assert_eq!(stats.started(), 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(
        fleet.host("sim-000").unwrap().current_os.as_deref(),
        Some("debian-12")
    );
    let mut saw_done = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {
        if matches!(
            ev,
            BackendEvent::OperationChanged {
                state: OperationState::Succeeded,
                ..
            }
        ) {
            saw_done = true;
        }
    }
    assert!(saw_done, "completion event announced");
}

#[tokio::test]
async fn rejects_unknown_host_and_os() {
    let reg = SimRegistry::default();
    let adapter = SimulatorAdapter::new(reg.fleet("ns/d", &spec(1, 0)));
    assert!(matches!(
        adapter
            .reprovision(
                "nope",
                "debian-12",
                "t",
                &crate::adapter::HostConfig::default()
            )
            .await,
        Err(AdapterError::UnknownHost(_))
    ));
    assert!(matches!(
        adapter
            .reprovision(
                "sim-000",
                "windows",
                "t",
                &crate::adapter::HostConfig::default()
            )
            .await,
        Err(AdapterError::UnknownOs { .. })
    ));
    assert_eq!(adapter.operation("sim-000", "t").await.unwrap(), None);
}

#[tokio::test]
async fn injects_nth_failure_and_outage() {
    let reg = SimRegistry::default();
    let mut s = spec(2, 0);
    s.failures = Some(SimulatorFailures {
        fail_nth: vec![1],
        ..Default::default()
    });
    let fleet = reg.fleet("ns/d", &s);
    let adapter = SimulatorAdapter::new(fleet.clone());
    adapter
        .reprovision(
            "sim-000",
            "debian-12",
            "a",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        wait_terminal(&adapter, "sim-000", "a").await,
        OperationState::Failed { .. }
    ));
    adapter
        .reprovision(
            "sim-000",
            "debian-12",
            "b",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        wait_terminal(&adapter, "sim-000", "b").await,
        OperationState::Succeeded
    );
    fleet.set_unreachable(true);
    assert!(matches!(
        adapter.discover().await,
        Err(AdapterError::Unreachable(_))
    ));
    fleet.set_unreachable(false);
    assert!(adapter.discover().await.is_ok());
}

#[test]
fn fail_fraction_is_deterministic_and_roughly_right() {
    let mut s = spec(1, 0);
    s.failures = Some(SimulatorFailures {
        fail_fraction: Some(0.25),
        seed: 7,
        ..Default::default()
    });
    let fails = (1..=4000).filter(|n| SimFleet::should_fail(&s, *n)).count();
    assert!((800..1200).contains(&fails), "{fails} of 4000 failed");
    let again = (1..=4000).filter(|n| SimFleet::should_fail(&s, *n)).count();
    assert_eq!(fails, again);
}

#[tokio::test]
async fn cancel_stops_a_running_provisioning() {
    let reg = SimRegistry::default();
    let fleet = reg.fleet("ns/d", &spec(1, 10_000));
    let adapter = SimulatorAdapter::new(fleet.clone());
    adapter
        .reprovision(
            "sim-000",
            "rocky-9",
            "c",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        adapter.cancel("sim-000", "c").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        adapter.cancel("sim-000", "c").await.unwrap(),
        CancelOutcome::NotRunning
    );
    assert_eq!(fleet.stats().in_flight, 0);
    assert_eq!(fleet.stats().cancelled, 1);
    // The host is free again.
    adapter
        .reprovision(
            "sim-000",
            "rocky-9",
            "d",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .unwrap();
}

#[test]
fn host_names_widen_for_large_fleets() {
    assert_eq!(host_name("h-", 7, 8), "h-007");
    assert_eq!(host_name("h-", 7, 10_000), "h-0007");
}
