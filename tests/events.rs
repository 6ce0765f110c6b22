//! The controller's Event publisher over HTTP, on the embedded API and the real kube-apiserver: a repeat within the series
//! window updates one Event's `series`, another note is another Event, and both read back through
//! events.k8s.io/v1 and core/v1 as kubectl describe would show them.
mod cluster;
mod support;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource};
use osprov::api::OSProvisioningRequest;
use osprov::controller::events::{EventType, Note, Publisher, Reporter};
use support::*;

on_both_backends!(repeats_become_a_series_and_other_notes_new_events);

async fn repeats_become_a_series_and_other_notes_new_events(t: cluster::TestCluster) {
    let api: Api<OSProvisioningRequest> = t.api();
    osprs(&t.client, &t.ns)
        .create(&PostParams::default(), &dyn_obj(ospr("e", "h1", "ubuntu")))
        .await
        .unwrap();
    let obj = api.get("e").await.unwrap();
    let publisher = Publisher::new(
        t.client.clone(),
        Reporter {
            controller: "osprov-osp".into(),
            instance: "test-0".into(),
        },
    );
    let queued = Note {
        type_: EventType::Normal,
        action: "Queued".into(),
        reason: "HostBusy".into(),
        note: "Queued: waiting for the host".into(),
    };
    let reference = obj.object_ref(&());
    for _ in 0..3 {
        publisher.publish(&reference, &queued).await.unwrap();
    }
    let failed = Note {
        type_: EventType::Warning,
        action: "Failed".into(),
        reason: "ProvisioningFailed".into(),
        note: "Failed: disk error".into(),
    };
    publisher.publish(&reference, &failed).await.unwrap();

    let v1: Api<Event> = t.api();
    let mut list = v1
        .list(&ListParams::default().fields("regarding.name=e"))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|e| e.action.clone());
    assert_eq!(list.len(), 2, "{list:?}");
    let (f, q) = (&list[0], &list[1]);
    assert_eq!(q.note.as_deref(), Some("Queued: waiting for the host"));
    assert_eq!(q.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(q.reporting_controller.as_deref(), Some("osprov-osp"));
    assert_eq!(q.reporting_instance.as_deref(), Some("test-0"));
    assert_eq!(q.type_.as_deref(), Some("Normal"));
    assert_eq!(f.type_.as_deref(), Some("Warning"));
    assert_eq!(f.reason.as_deref(), Some("ProvisioningFailed"));
    assert!(f.series.is_none());
    assert_eq!(
        q.regarding.as_ref().and_then(|r| r.uid.clone()),
        obj.meta().uid.clone()
    );

    // What `kubectl describe` reads.
    let core: Api<CoreEvent> = t.api();
    let warnings = core
        .list(&ListParams::default().fields("involvedObject.name=e,type=Warning"))
        .await
        .unwrap()
        .items;
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].message.as_deref(), Some("Failed: disk error"));

    // An Event deleted meanwhile (TTL, an admin) is published again rather than lost.
    v1.delete(q.metadata.name.as_deref().unwrap(), &Default::default())
        .await
        .unwrap();
    publisher.publish(&reference, &queued).await.unwrap();
    let again = v1
        .list(&ListParams::default().fields("regarding.name=e,reason=HostBusy"))
        .await
        .unwrap()
        .items;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].series.is_none());
}
