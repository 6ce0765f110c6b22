//! Never twice, whatever happens to an operation's record: the real controller against a real
//! sushy-tools BMC, on both API backends. The record Secret (`osprov-op-*`) is deleted, replaced
//! or has its finalizer stripped at each step of a reprovision (media being inserted, installer
//! running), with and without a controller restart; the BMC's own access log counts the resets
//! and inserts. A record that merely gets deleted is kept by its finalizer and the request
//! finishes; a record that is really gone or is not the one the controller made ends the attempt
//! with `OperationRecordLost`, and the host is never reset a second time.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod records_support;
mod redfish_rig;
mod redfish_support;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::DeleteParams;
use kube::ResourceExt;
use osprov::api::Phase;
use osprov::controller::records::RECORD_FINALIZER;
use records_support::*;
use redfish_rig::Rig;
use redfish_support::*;
use std::time::Duration;

on_both_backends!(
    a_deleted_record_is_kept_until_its_request_is_gone,
    a_lost_record_ends_the_attempt_at_every_step_without_a_second_reset,
);

impl Rig {
    async fn restart_controller(&mut self) {
        self.stop_controller().await;
        self.start_controller();
    }
}

async fn a_deleted_record_is_kept_until_its_request_is_gone(c: TestCluster) {
    let mut rig = Rig::start(c, 1, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(1).await;
    create(&rig.requests, &once("r0", "node-0", "ubuntu-24.04")).await;
    let callback = rig.wait_inserted(0).await;
    eventually(30, "reset", || async { (rig.resets(0) == 1).then_some(()) }).await;
    let name = record_name(&rig.requests, "r0").await;

    // A prune deletes the record while the installer runs, then the controller restarts.
    rig.secrets
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    let kept = rig.secrets.get(&name).await.expect("kept by its finalizer");
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert!(kept.finalizers().iter().any(|f| f == RECORD_FINALIZER));
    rig.restart_controller().await;

    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&rig.requests, "r0", Phase::Succeeded, 60).await;
    assert_eq!(
        (rig.inserts(0), rig.resets(0)),
        (1, 1),
        "(inserts, resets) for one request"
    );

    // Deleting the request lets the record go.
    rig.requests
        .delete("r0", &DeleteParams::default())
        .await
        .expect("delete r0");
    eventually(60, "the request and its record gone", || async {
        let req = rig.requests.get_opt("r0").await.ok()?;
        let rec = rig.secrets.get_opt(&name).await.ok()?;
        (req.is_none() && rec.is_none()).then_some(())
    })
    .await;
    rig.stop_controller().await;
}

async fn a_lost_record_ends_the_attempt_at_every_step_without_a_second_reset(c: TestCluster) {
    let mut rig = Rig::start(c, 4, PASSWORD).await;
    rig.start_controller();
    rig.dispatcher(rig.spec(true)).await;
    rig.wait_hosts(4).await;

    // node-0: gone while the BMC inserts the media (before the reset), no restart.
    *rig.iso.hold_next.lock().expect("lock") = Some(Duration::from_secs(4));
    let download = rig.iso.started.clone();
    let started = download.notified();
    create(&rig.requests, &request("r0", "node-0", "ubuntu-24.04")).await;
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the BMC downloads the image");
    let name = record_name(&rig.requests, "r0").await;
    lose_record(&rig.secrets, &name).await;
    let message = wait_record_lost(&rig.requests, "r0").await;
    assert!(message.contains("deleted"), "{message}");
    assert_eq!(rig.resets(0), 0, "no reset after the record was lost");

    // node-1: gone while the installer runs, then the controller restarts.
    create(&rig.requests, &request("r1", "node-1", "ubuntu-24.04")).await;
    let callback = rig.wait_inserted(1).await;
    eventually(30, "reset", || async { (rig.resets(1) == 1).then_some(()) }).await;
    let name = record_name(&rig.requests, "r1").await;
    rig.stop_controller().await;
    lose_record(&rig.secrets, &name).await;
    rig.start_controller();
    wait_record_lost(&rig.requests, "r1").await;
    // The installer's report finds no record to trust.
    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 404);

    // node-2: replaced by a planted Secret while the installer runs, no restart.
    create(&rig.requests, &request("r2", "node-2", "ubuntu-24.04")).await;
    rig.wait_inserted(2).await;
    eventually(30, "reset", || async { (rig.resets(2) == 1).then_some(()) }).await;
    let name = record_name(&rig.requests, "r2").await;
    replace_record(&rig.secrets, &name).await;
    let message = wait_record_lost(&rig.requests, "r2").await;
    assert!(message.contains("replaced"), "{message}");
    let planted_callback = format!(
        "http://{}/callback/{}.planted-secret",
        rig.callback,
        name.trim_start_matches("osprov-op-")
    );
    assert_eq!(
        report(&planted_callback, r#"{"status":"succeeded"}"#).await,
        404,
        "a planted record is not answered"
    );

    // node-3: replaced while the controller is down.
    create(&rig.requests, &request("r3", "node-3", "ubuntu-24.04")).await;
    rig.wait_inserted(3).await;
    eventually(30, "reset", || async { (rig.resets(3) == 1).then_some(()) }).await;
    let name = record_name(&rig.requests, "r3").await;
    rig.stop_controller().await;
    replace_record(&rig.secrets, &name).await;
    rig.start_controller();
    wait_record_lost(&rig.requests, "r3").await;

    // Each host was reset at most once, and every request has ended: nothing is left to repeat.
    let counts: Vec<(usize, usize)> = (0..4).map(|i| (rig.inserts(i), rig.resets(i))).collect();
    assert_eq!(
        counts,
        vec![(1, 0), (1, 1), (1, 1), (1, 1)],
        "(inserts, resets) per host"
    );
    rig.stop_controller().await;
}
