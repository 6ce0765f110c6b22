//! End-to-end: the real controller with Redfish dispatchers pointed at a real sushy-tools emulator
//! (fake driver, TLS; a SessionService in front as BMCs have, `redfish_support/session_emulator.py`,
//! or plain sushy-tools with basic auth only), on both API backends: the embedded API and the real
//! kube-apiserver (`cluster/`). Each test has its own namespace (where the BMC Secrets and the
//! controller's operation Secrets live), emulator, ISO server and a controller watching only that
//! namespace.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod redfish_rig;
mod redfish_support;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use osprov::api::{conditions, Phase, PowerState};
use redfish_rig::Rig;
use redfish_support::*;
use std::time::Duration;

on_both_backends!(
    discovers_and_reprovisions_through_virtual_media_and_callback,
    wrong_credentials_degrade_the_dispatcher_without_a_retry_storm,
    an_untrusted_certificate_is_a_clear_tls_error,
    bmc_and_controller_restarts_mid_way_do_not_repeat_the_insert_and_reset,
    one_session_is_reused_renewed_when_it_expires_and_deleted_with_the_dispatcher,
    a_rotated_password_is_used_without_a_restart,
    a_service_without_sessions_gets_basic_auth,
    power_changes_reach_the_managed_host_through_the_event_stream,
);

async fn discovers_and_reprovisions_through_virtual_media_and_callback(c: TestCluster) {
    let mut rig = Rig::start(c, 3, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    let hosts = rig.wait_hosts(3).await;
    let h = hosts
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("node-1"))
        .expect("node-1 discovered");
    let st = h.status.as_ref().expect("status");
    assert_eq!(st.details.get("uuid"), Some(&system_uuid(1)));
    assert_eq!(
        st.details.get("macs").map(String::as_str),
        Some("52:54:00:00:00:01")
    );
    assert_eq!(st.available_os, ["ubuntu-24.04"]);
    assert_eq!(h.spec.backend_id, system_uuid(1));

    create(&rig.requests, &request("r1", "node-1", "ubuntu-24.04")).await;
    let callback = rig.wait_inserted(1).await;
    assert!(callback.starts_with(&format!("http://{}/callback/", rig.callback)));
    eventually(30, "reset", || async { (rig.resets(1) == 1).then_some(()) }).await;
    assert_eq!(rig.boot_target(1).await, "Cd");
    assert_eq!(
        rig.iso.downloads.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    wait_phase(&rig.requests, "r1", Phase::Provisioning, 10).await;

    // Wrong tokens are refused and change nothing.
    let (base, _) = callback.rsplit_once('.').expect("key.secret");
    let ok = r#"{"status":"succeeded"}"#;
    assert_eq!(post(&format!("{base}.{}", "0".repeat(48)), ok).await, 401);
    assert_eq!(
        post(&format!("http://{}/callback/nope.abc", rig.callback), ok).await,
        404
    );
    assert_eq!(post(&callback, r#"{"status":"perhaps"}"#).await, 400);
    // The outcome must be said: an empty body (as a bare `curl -X POST` sends) is no success.
    assert_eq!(post(&callback, "").await, 400);
    // The endpoint answers once it has written what it records, so the record holds no
    // outcome; and the controller, having looked at r1's operation again since (a whole
    // reconcile), keeps r1 running.
    ctl(&rig).more_backend_calls(OPERATION_OK, 2, 30).await;
    let ops = ListParams::default().labels(osprov::controller::callback::OPERATION_LABEL);
    let records = rig.secrets.list(&ops).await.expect("list Secrets").items;
    assert_eq!(records.len(), 1, "one operation record");
    let record = osprov::controller::records::parse(&records[0]).expect("a record");
    assert!(record.outcome.is_none(), "{:?}", record.outcome);
    let r = rig.requests.get("r1").await.expect("r1");
    assert_eq!(r.status.and_then(|s| s.phase), Some(Phase::Provisioning));
    assert_eq!(rig.media(1).await["Inserted"], true);

    // The installer reports success.
    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
    let r = wait_phase(&rig.requests, "r1", Phase::Succeeded, 30).await;
    let st = r.status.expect("status");
    assert!(conditions::is_true(&st.conditions, "Provisioned"), "{st:?}");
    let media = rig.media(1).await;
    assert_eq!(media["Inserted"], false, "media ejected: {media}");
    assert_ne!(rig.boot_target(1).await, "Cd", "boot override cleared");
    assert_eq!((rig.inserts(1), rig.resets(1)), (1, 1));
    // A repeated callback is harmless; other systems were never touched.
    assert_eq!(report(&callback, ok).await, 200);
    assert_eq!((rig.inserts(0), rig.resets(0), rig.inserts(2)), (0, 0, 0));
    // The next discovery shows the OS osprov installed.
    eventually(30, "current OS on the ManagedHost", || async {
        let mh = rig.hosts.get("node-1").await.ok()?;
        (mh.status?.current_os.as_deref() == Some("ubuntu-24.04")).then_some(())
    })
    .await;
    // The operation's Secret is in the request's namespace, owned by the request: deleting the
    // request garbage-collects it (the embedded API's collector, or kube-controller-manager's).
    let list = rig.secrets.list(&ops).await.expect("list Secrets");
    let [op] = list.items.as_slice() else {
        let names: Vec<_> = list.items.iter().map(|s| &s.metadata.name).collect();
        panic!("expected one operation Secret, got {names:?}");
    };
    assert_eq!(op.type_.as_deref(), Some("osprov.io/operation"));
    let owner = &op.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("OSProvisioningRequest", "r1")
    );
    rig.requests
        .delete("r1", &DeleteParams::default())
        .await
        .expect("delete r1");
    eventually(60, "the operation Secret garbage-collected", || async {
        let list = rig.secrets.list(&ops).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    rig.stop_controller().await;
}

async fn wrong_credentials_degrade_the_dispatcher_without_a_retry_storm(c: TestCluster) {
    let mut rig = Rig::start(c, 1, "not-the-password").await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    let c = eventually(30, "Ready=False AuthenticationFailed", || async {
        let c = rig.ready_condition().await?;
        (c.reason == "AuthenticationFailed").then_some(c)
    })
    .await;
    assert_eq!(c.status, "False");
    assert!(!c.message.contains("not-the-password"), "{}", c.message);
    // The session keeps retrying (every second: the dispatcher's lookupInterval); wait for five
    // more attempts that failed on the credentials (~5 s), then count what reached the BMC.
    let failed = [("outcome", "AuthenticationFailed")];
    ctl(&rig).more_backend_calls(&failed, 5, 30).await;
    let refused = rig.emu.requests().iter().filter(|r| r.2 == 401).count();
    assert!(
        refused <= 2,
        "{refused} refused logins while the session tried 5 more times: a retry storm"
    );
    // Fixing the Secret reconnects.
    let patch = serde_json::json!({"data": {"password": base64(PASSWORD)}});
    rig.secrets
        .patch("bmc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch Secret");
    rig.wait_hosts(1).await;
    rig.stop_controller().await;
}

/// The rig's running controller.
fn ctl(rig: &Rig) -> &RunningController {
    rig.ctl.as_ref().expect("the controller runs")
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn an_untrusted_certificate_is_a_clear_tls_error(c: TestCluster) {
    let mut rig = Rig::start(c, 1, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(false)).await;
    let c = eventually(30, "Ready=False naming TLS", || async {
        let c = rig.ready_condition().await?;
        (c.status == "False" && c.message.contains("TLS")).then_some(c)
    })
    .await;
    assert_eq!(c.reason, "InvalidConfiguration", "{c:?}");
    assert!(c.message.contains("caSecretRef"), "{}", c.message);
    assert!(rig
        .hosts
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .is_empty());
    rig.stop_controller().await;
}

async fn bmc_and_controller_restarts_mid_way_do_not_repeat_the_insert_and_reset(c: TestCluster) {
    let mut rig = Rig::start(c, 2, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(2).await;

    // The BMC dies while it downloads the image for InsertMedia.
    *rig.iso.hold_next.lock().expect("lock") = Some(Duration::from_secs(3));
    let started = rig.iso.started.clone();
    let download = started.notified();
    create(&rig.requests, &request("r0", "node-0", "ubuntu-24.04")).await;
    tokio::time::timeout(Duration::from_secs(30), download)
        .await
        .expect("the emulator starts downloading the ISO");
    rig.emu.stop();
    note("emulator killed during InsertMedia");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.emu.restart().await;
    note("emulator back");
    let callback = rig.wait_inserted(0).await;
    eventually(60, "reset after the outage", || async {
        (rig.resets(0) == 1).then_some(())
    })
    .await;

    // The controller restarts after the reset: it must not insert or reset again. The new one
    // has looked at the operation and acted on what it saw (a whole reconcile) before the check.
    rig.stop_controller().await;
    rig.start_controller();
    ctl(&rig).more_backend_calls(OPERATION_OK, 2, 60).await;
    assert_eq!(
        (rig.inserts(0), rig.resets(0)),
        (1, 1),
        "(inserts, resets) after the controller restart"
    );

    // The BMC is away when the installer calls back: the outcome is kept; cleanup waits. Once
    // the controller has looked at the operation since the report and found the BMC away (two
    // looks: a whole reconcile ran since), the request still runs, saying why; the end of the
    // test checks that it finished only with the media ejected.
    rig.emu.stop();
    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
    let away = [("call", "operation"), ("outcome", "Unreachable")];
    ctl(&rig).more_backend_calls(&away, 2, 60).await;
    let r = rig.requests.get("r0").await.expect("r0");
    let status = r.status.unwrap_or_default();
    assert_eq!(
        (status.phase, status.reason.as_deref()),
        (Some(Phase::Provisioning), Some("DispatcherUnavailable")),
        "cleanup waits for the BMC: {status:?}"
    );
    rig.emu.restart().await;
    wait_phase(&rig.requests, "r0", Phase::Succeeded, 60).await;
    assert_eq!(rig.media(0).await["Inserted"], false);
    assert_eq!(
        (rig.inserts(0), rig.resets(0)),
        (1, 1),
        "one insert+reset cycle"
    );
    assert_eq!((rig.inserts(1), rig.resets(1)), (0, 0));
    rig.stop_controller().await;
}

async fn one_session_is_reused_renewed_when_it_expires_and_deleted_with_the_dispatcher(
    c: TestCluster,
) {
    let mut rig = Rig::start(c, 2, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(2).await;
    rig.reprovision("r0", 0).await;
    // Discovery, a whole reprovision and its cleanup: one login, one session at the BMC.
    assert_eq!(rig.logins(), 1, "one login for everything so far");
    let open = rig.emu.sessions().await;
    assert_eq!(open.len(), 1, "{open:?}");

    // The BMC ends the session (its timeout, or an administrator): the next call is refused
    // once, the controller logs in again and the reprovision goes on as if nothing happened.
    rig.emu.delete_session(&open[0]).await;
    let refused_before = rig.emu.requests().iter().filter(|r| r.2 == 401).count();
    rig.reprovision("r1", 1).await;
    assert_eq!(rig.logins(), 2, "one new login after the session ended");
    // Every call already in flight with the old token is refused (discovery reads systems in
    // parallel, the event stream reconnects), but no more than can be in flight at once: the
    // dispatcher's `maxConnections` and the event stream. One login replaced the token for all.
    let refused = rig.emu.requests().iter().filter(|r| r.2 == 401).count() - refused_before;
    let in_flight = rig.spec(true).max_connections.unwrap_or(4) as usize + 1;
    assert!(
        (1..=in_flight).contains(&refused),
        "{refused} refused calls: the expired token is dropped at its first refusals"
    );
    assert_eq!((rig.inserts(1), rig.resets(1)), (1, 1));
    assert_eq!(rig.emu.sessions().await.len(), 1);

    // Deleting the dispatcher logs its session out.
    rig.dispatchers
        .delete("bmc", &DeleteParams::default())
        .await
        .expect("delete dispatcher");
    eventually(30, "the session deleted at the BMC", || async {
        rig.emu.sessions().await.is_empty().then_some(())
    })
    .await;
    let logouts = rig
        .emu
        .count("DELETE", "/redfish/v1/SessionService/Sessions/", "");
    assert_eq!(logouts, 2, "the test's DELETE and the controller's logout");
    rig.stop_controller().await;
}

async fn a_rotated_password_is_used_without_a_restart(c: TestCluster) {
    let mut rig = Rig::start(c, 1, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(1).await;
    assert_eq!(rig.logins(), 1);

    // The Secret gets the new password and the BMC takes it: the same controller gives the old
    // session back and logs in with the new password.
    let patch = serde_json::json!({"data": {"password": base64("rotated-bmc-pass")}});
    rig.secrets
        .patch("bmc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch Secret");
    rig.emu.set_password("rotated-bmc-pass");
    eventually(30, "a login with the rotated password", || async {
        (rig.logins() >= 2).then_some(())
    })
    .await;
    rig.reprovision("r0", 0).await;
    eventually(30, "only the new session open", || async {
        (rig.emu.sessions().await.len() == 1).then_some(())
    })
    .await;
    // The new credentials start a new session (Ready goes through Connecting); it ends Ready.
    eventually(30, "Ready again after the rotation", || async {
        let d = rig.ready_condition().await?;
        (d.status == "True").then_some(())
    })
    .await;
    rig.stop_controller().await;
}

async fn a_service_without_sessions_gets_basic_auth(c: TestCluster) {
    let mut rig = Rig::start_with(c, 1, PASSWORD, None).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(1).await;
    rig.reprovision("r0", 0).await;
    let tried = rig
        .emu
        .requests()
        .iter()
        .filter(|r| r.1.contains("SessionService"))
        .count();
    assert_eq!(
        tried, 0,
        "no login tried where the root offers no SessionService"
    );
    assert_eq!((rig.inserts(0), rig.resets(0)), (1, 1));
    rig.stop_controller().await;
}

async fn power_changes_reach_the_managed_host_through_the_event_stream(c: TestCluster) {
    let mut rig = Rig::start(c, 2, PASSWORD).await;
    rig.start_controller();
    let mut d = redfish_dispatcher("bmc", rig.spec(true));
    // No re-discovery during the test: only the event stream can bring the change.
    d.spec.lookup_interval = Some("1h".into());
    create(&rig.dispatchers, &d).await;
    rig.wait_hosts(2).await;
    eventually(30, "the controller on the event stream", || async {
        (rig.emu.count("GET", "/redfish/v1/EventService/SSE", "") == 1).then_some(())
    })
    .await;
    let collection_reads = || {
        rig.emu
            .requests()
            .iter()
            .filter(|r| r.0 == "GET" && r.1.trim_end_matches('/') == "/redfish/v1/Systems")
            .count()
    };
    let discoveries = collection_reads();
    assert_eq!(rig.power("node-1").await, Some(PowerState::On));

    // Power node-1 off at the BMC, behind osprov's back.
    let status = rig
        .emu
        .http()
        .post(format!(
            "{}/redfish/v1/Systems/{}/Actions/ComputerSystem.Reset",
            rig.emu.endpoint(),
            system_uuid(1)
        ))
        .basic_auth(USER, Some(PASSWORD))
        .json(&serde_json::json!({"ResetType": "ForceOff"}))
        .send()
        .await
        .expect("reset")
        .status();
    assert!(status.is_success(), "ForceOff: {status}");
    eventually(30, "node-1 Off on its ManagedHost", || async {
        (rig.power("node-1").await == Some(PowerState::Off)).then_some(())
    })
    .await;
    assert_eq!(rig.power("node-0").await, Some(PowerState::On));
    assert_eq!(
        collection_reads(),
        discoveries,
        "the change came through the event stream, not a discovery"
    );
    rig.stop_controller().await;
}
