//! The engine's dispatcher sessions driving the simulator adapter: discovery, re-discovery every
//! lookup interval, an outage and the recovery, and an adapter that cannot be built. (They live
//! here, not in `osprov-engine`, because the engine does not depend on any adapter.)
use osprov::adapter::simulator::{SimRegistry, SimulatorAdapter};
use osprov::adapter::AdapterError;
use osprov::api::{DispatcherState, SimulatorSpec};
use osprov::provisioner::keys::DispKey;
use osprov::provisioner::session::{Engine, SessionConfig};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn session_discovers_rediscovers_and_recovers() {
    let sims = SimRegistry::default();
    let key = DispKey {
        namespace: "ns".into(),
        name: "d".into(),
    };
    let fleet = sims.fleet(
        "ns/d",
        &SimulatorSpec {
            hosts: 3,
            provision_millis: 0,
            ..Default::default()
        },
    );
    let engine = Engine::new();
    let mut changes = engine.changes();
    engine.ensure(SessionConfig {
        key: key.clone(),
        fingerprint: "1".into(),
        lookup_interval: Duration::from_millis(50),
        adapter: Ok(Arc::new(SimulatorAdapter::new(fleet.clone()))),
    });
    let first = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
    assert!(first.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = engine.view(&key).expect("view");
    assert_eq!((view.state, view.hosts.len()), (DispatcherState::Ready, 3));
    assert!(
        fleet.stats().discoveries >= 3,
        "re-discovers every lookupInterval"
    );
    fleet.set_unreachable(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        engine.view(&key).map(|v| v.state),
        Some(DispatcherState::Unreachable)
    );
    assert_eq!(
        engine.view(&key).map(|v| v.hosts.len()),
        Some(3),
        "hosts survive an outage"
    );
    fleet.set_unreachable(false);
    engine.discover_now(&key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine.view(&key).map(|v| v.state),
        Some(DispatcherState::Ready)
    );
    engine.remove(&key);
    assert!(engine.view(&key).is_none());
}

#[tokio::test]
async fn adapter_that_cannot_be_built_degrades_the_dispatcher() {
    let engine = Engine::new();
    let key = DispKey {
        namespace: "ns".into(),
        name: "v".into(),
    };
    engine.ensure(SessionConfig {
        key: key.clone(),
        fingerprint: "1".into(),
        lookup_interval: Duration::from_secs(10),
        adapter: Err(AdapterError::Unavailable("vsphere")),
    });
    let view = engine.view(&key).expect("view");
    assert_eq!(
        (view.state, view.reason.as_str()),
        (DispatcherState::Degraded, "AdapterUnavailable")
    );
}
