//! Embedded API: finalizers with kube-runtime's helper, Events through kube-runtime's Recorder,
//! garbage collection of owned objects, the access record, and persistence across restarts.
mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, Resource};
use osprov::api::OSProvisioningRequest;
use serde_json::json;
use support::*;

const FINALIZER: &str = "osprov.io/cleanup";

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

async fn run_finalizer(
    api: &Api<OSProvisioningRequest>,
    name: &str,
) -> FinalizerEvent<OSProvisioningRequest> {
    let obj = Arc::new(api.get(name).await.unwrap());
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    finalizer(api, FINALIZER, obj, |ev| async move {
        *s2.lock().unwrap() = Some(ev);
        Ok::<_, Never>(Action::await_change())
    })
    .await
    .unwrap();
    let ev = seen.lock().unwrap().take();
    match ev {
        Some(ev) => ev,
        None => FinalizerEvent::Apply(Arc::new(api.get(name).await.unwrap())),
    }
}

#[tokio::test]
async fn finalizer_deletion_flow() {
    let t = TestApi::start().await;
    let api: Api<OSProvisioningRequest> = Api::namespaced(t.client.clone(), "default");
    let dynapi = osprs(&t.client, "default");
    dynapi
        .create(&PostParams::default(), &dyn_obj(ospr("f", "h1", "ubuntu")))
        .await
        .unwrap();
    // First run adds the finalizer (JSON patch: test null + add).
    run_finalizer(&api, "f").await;
    let o = api.get("f").await.unwrap();
    assert_eq!(
        o.meta().finalizers.as_deref(),
        Some(&[FINALIZER.to_string()][..])
    );
    let gen = o.meta().generation.unwrap();
    // DELETE sets deletionTimestamp once; generation +1; repeated DELETE changes nothing.
    let first = api
        .delete("f", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("object while finalizing");
    assert!(first.meta().deletion_timestamp.is_some());
    assert_eq!(first.meta().generation, Some(gen + 1));
    let again = api
        .delete("f", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(again.meta().resource_version, first.meta().resource_version);
    // Adding a finalizer while terminating: 422. Re-creating the name: 409.
    let add = json!({"metadata": {"finalizers": [FINALIZER, "other.io/x"]}});
    assert_eq!(
        code(
            api.patch("f", &PatchParams::default(), &Patch::Merge(&add))
                .await
        ),
        422
    );
    assert_eq!(
        code(
            dynapi
                .create(&PostParams::default(), &dyn_obj(ospr("f", "h1", "ubuntu")))
                .await
        ),
        409
    );
    // The helper's cleanup removes the finalizer (JSON patch: test + remove) and the object goes.
    match run_finalizer(&api, "f").await {
        FinalizerEvent::Cleanup(_) => {}
        FinalizerEvent::Apply(_) => panic!("expected a cleanup"),
    }
    assert_eq!(code(api.get("f").await), 404);
    // DELETE without finalizers answers a Success Status.
    dynapi
        .create(&PostParams::default(), &dyn_obj(ospr("g", "h1", "ubuntu")))
        .await
        .unwrap();
    let st = api
        .delete("g", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("status");
    assert_eq!(
        st.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn recorder_events_readable_as_core_v1() {
    let t = TestApi::start().await;
    let api: Api<OSProvisioningRequest> = Api::namespaced(t.client.clone(), "default");
    osprs(&t.client, "default")
        .create(&PostParams::default(), &dyn_obj(ospr("e", "h1", "ubuntu")))
        .await
        .unwrap();
    let obj = api.get("e").await.unwrap();
    let recorder = Recorder::new(
        t.client.clone(),
        Reporter {
            controller: "osprov".into(),
            instance: Some("test".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Queued".into(),
        note: Some("waiting for the host".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    // The same event again becomes a series (merge patch of `series`).
    recorder.publish(&ev, &reference).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(t.client.clone(), "default");
    let selector = format!(
        "involvedObject.name=e,involvedObject.namespace=default,involvedObject.kind=OSProvisioningRequest,involvedObject.uid={}",
        obj.meta().uid.clone().unwrap()
    );
    let list = core
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.message.as_deref(), Some("waiting for the host"));
    assert_eq!(e.reason.as_deref(), Some("Queued"));
    assert_eq!(e.reporting_component.as_deref(), Some("osprov"));
    assert_eq!(e.series.as_ref().and_then(|s| s.count), Some(2));
    let none = core
        .list(&ListParams::default().fields("involvedObject.name=other"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    // The events.k8s.io/v1 view of the same store.
    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(t.client.clone(), "default");
    let list = v1
        .list(&ListParams::default().fields("regarding.name=e"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].note.as_deref(), Some("waiting for the host"));
    assert_eq!(
        list.items[0].reporting_controller.as_deref(),
        Some("osprov")
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn owned_hosts_are_garbage_collected() {
    let t = TestApi::start().await;
    let gvk = |k: &str| {
        kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "osprov.io",
            "v1alpha1",
            k,
        ))
    };
    let osd: Api<kube::api::DynamicObject> =
        Api::namespaced_with(t.client.clone(), "default", &gvk("OSDispatcher"));
    let hosts: Api<kube::api::DynamicObject> =
        Api::namespaced_with(t.client.clone(), "default", &gvk("ManagedHost"));
    let d = osd
        .create(&PostParams::default(), &dyn_obj(json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSDispatcher", "metadata": {"name": "sim"}, "spec": {}})))
        .await
        .unwrap();
    let owner = json!([{"apiVersion": "osprov.io/v1alpha1", "kind": "OSDispatcher", "name": "sim",
                        "uid": d.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true}]);
    for i in 0..3 {
        hosts
            .create(
                &PostParams::default(),
                &dyn_obj(
                    json!({"apiVersion": "osprov.io/v1alpha1", "kind": "ManagedHost",
                    "metadata": {"name": format!("h{i}"), "ownerReferences": owner},
                    "spec": {"backendId": format!("b{i}"), "dispatcher": "sim"}}),
                ),
            )
            .await
            .unwrap();
    }
    // ownerReferences are validated: uid required.
    let bad = json!({"apiVersion": "osprov.io/v1alpha1", "kind": "ManagedHost",
        "metadata": {"name": "bad", "ownerReferences": [{"apiVersion": "osprov.io/v1alpha1", "kind": "OSDispatcher", "name": "sim"}]},
        "spec": {"backendId": "x", "dispatcher": "sim"}});
    assert_eq!(
        code(hosts.create(&PostParams::default(), &dyn_obj(bad)).await),
        422
    );
    osd.delete("sim", &DeleteParams::background())
        .await
        .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if hosts
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "owned hosts were not collected");
    t.server.shutdown().await;
}

#[tokio::test]
async fn access_record_lists_verbs_per_user_agent() {
    let t = TestApi::start_with(|_| {}).await;
    let api = osprs(&t.client, "default");
    api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Queued"}})),
    )
    .await
    .unwrap();
    let rec: serde_json::Value = t
        .client
        .request(
            http::Request::get("/debug/osprov/access")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    // kube-rs sends no User-Agent unless configured; such clients are recorded as "unknown".
    let entries = &rec["unknown"];
    let has = |verb: &str, sub: &str| {
        entries.as_array().unwrap().iter().any(|e| {
            e["verb"] == verb
                && e["group"] == "osprov.io"
                && e["resource"] == "osprovisioningrequests"
                && e["subresource"] == sub
        })
    };
    assert!(has("create", "") && has("list", "") && has("patch", "status"));
    t.server.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_objects_uids_and_revision() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    let a = api
        .create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &dyn_obj(ospr("gone", "h1", "ubuntu")),
    )
    .await
    .unwrap();
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    let before = api.list(&ListParams::default()).await.unwrap();
    let rev: u64 = before
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    let dir = t.stop().await;
    let mut config = osprov::apiserver::Config::new(osprov::api::crds());
    config.data_dir = Some(dir.path().join("data"));
    let t2 = TestApi::start_in(dir, config).await;
    let api2 = osprs(&t2.client, "default");
    let after = api2.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        after
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        rev
    );
    assert_eq!(after.items.len(), 1);
    let a2 = &after.items[0];
    assert_eq!(a2.metadata.uid, a.metadata.uid);
    assert_eq!(a2.metadata.resource_version, a.metadata.resource_version);
    // The counter continues; a watch from before the restart gets 410, one from now continues.
    let b = api2
        .create(&PostParams::default(), &dyn_obj(ospr("b", "h1", "ubuntu")))
        .await
        .unwrap();
    assert_eq!(
        b.metadata.resource_version.unwrap().parse::<u64>().unwrap(),
        rev + 1
    );
    use futures::StreamExt;
    let mut old = api2
        .watch(&Default::default(), &(rev - 1).to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), old.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        kube::api::WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    let mut cur = api2
        .watch(&Default::default(), &rev.to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), cur.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        kube::api::WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    t2.server.shutdown().await;
}
