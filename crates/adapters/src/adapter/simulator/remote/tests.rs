//! The served simulator and its client adapter together, over real HTTP on a loopback port:
//! the fleet outlives the client, errors keep their meaning on the wire, and the ledger records
//! each provisioning once.
use super::*;
use crate::adapter::simulator::serve;
use crate::adapter::OperationState;
use futures::StreamExt;

async fn served() -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve::serve(
        "127.0.0.1:0".parse().expect("addr"),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    format!("http://{}", rx.await.expect("bound"))
}

fn spec(millis: i64) -> SimulatorSpec {
    SimulatorSpec {
        hosts: 3,
        provision_millis: millis,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_served_fleet_outlives_its_client_and_keeps_a_ledger() {
    let url = served().await;
    let a = RemoteSimulator::new(&url, "ns", "d", spec(100)).expect("adapter");
    let inv = a.discover().await.expect("inventory");
    assert_eq!(inv.hosts.len(), 3);
    let mut events = a.subscribe().await.expect("events");
    let op = a
        .reprovision(
            "sim-001",
            "debian-12",
            "u1/1/1",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .expect("started");
    assert!(!op.state.is_terminal());
    // A new client (a restarted controller) finds the same operation; the token starts nothing
    // twice.
    let b = RemoteSimulator::new(&url, "ns", "d", spec(100)).expect("adapter");
    let again = b
        .reprovision(
            "sim-001",
            "debian-12",
            "u1/1/1",
            &crate::adapter::HostConfig::default(),
        )
        .await
        .expect("same op");
    assert_eq!(again.id, op.id);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = events.next().await {
            if let BackendEvent::OperationChanged { state, .. } = e {
                return state;
            }
        }
        panic!("events ended");
    })
    .await
    .expect("an event within 5 s");
    assert_eq!(ended, OperationState::Succeeded);
    let seen = b.operation("sim-001", "u1/1/1").await.expect("operation");
    assert_eq!(seen.map(|s| s.state), Some(OperationState::Succeeded));
    let ledger: serve::LedgerView = reqwest::get(format!("{url}/v1/fleets/ns/d/ledger"))
        .await
        .expect("ledger")
        .json()
        .await
        .expect("json");
    let events: Vec<_> = ledger.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["started", "succeeded"]);
    assert_eq!(ledger.max_in_flight, 1);
}

#[tokio::test]
async fn errors_keep_their_meaning_on_the_wire() {
    let url = served().await;
    let a = RemoteSimulator::new(&url, "ns", "d", spec(60_000)).expect("adapter");
    assert!(matches!(
        a.reprovision("nope", "debian-12", "t/1/1", &crate::adapter::HostConfig::default()).await,
        Err(AdapterError::UnknownHost(h)) if h == "nope"
    ));
    assert!(matches!(
        a.reprovision("sim-000", "windows", "t/1/1", &crate::adapter::HostConfig::default()).await,
        Err(AdapterError::UnknownOs { os, .. }) if os == "windows"
    ));
    a.reprovision(
        "sim-000",
        "debian-12",
        "t/1/1",
        &crate::adapter::HostConfig::default(),
    )
    .await
    .expect("started");
    assert!(matches!(
        a.reprovision("sim-000", "rocky-9", "t/2/1", &crate::adapter::HostConfig::default()).await,
        Err(AdapterError::HostBusy { token, .. }) if token == "t/1/1"
    ));
    assert_eq!(
        a.cancel("sim-000", "t/1/1").await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    let http = reqwest::Client::new();
    http.post(format!("{url}/v1/fleets/ns/d/outage"))
        .json(&serde_json::json!({"unreachable": true}))
        .send()
        .await
        .expect("outage");
    assert!(matches!(
        a.discover().await,
        Err(AdapterError::Unreachable(_))
    ));
    // Nothing listening: unreachable too.
    let gone = RemoteSimulator::new("http://127.0.0.1:9", "ns", "d", spec(1)).expect("adapter");
    assert!(matches!(
        gone.discover().await,
        Err(AdapterError::Unreachable(_))
    ));
}
