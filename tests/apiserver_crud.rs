//! Embedded API: create/get/update/patch/delete semantics with the real kube client over HTTP
//! (k8s-api-fidelity.md §A, §C, §D, §F).
mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use support::*;

fn rv(o: &kube::api::DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn create_sets_metadata_and_revisions_increase() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    let a = api
        .create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    assert!(a.metadata.uid.is_some());
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.metadata.generation, Some(1));
    assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
    let mut gen = ospr("", "h1", "ubuntu");
    gen["metadata"] = json!({"generateName": "req-"});
    let b = api
        .create(&PostParams::default(), &dyn_obj(gen))
        .await
        .unwrap();
    assert!(b.metadata.name.as_deref().unwrap().starts_with("req-"));
    assert_eq!(b.metadata.name.as_deref().unwrap().len(), 9);
    assert!(rv(&b) > rv(&a));
    // Status is dropped on create (status subresource).
    let mut with_status = ospr("c", "h1", "ubuntu");
    with_status["status"] = json!({"phase": "Succeeded"});
    let c = api
        .create(&PostParams::default(), &dyn_obj(with_status))
        .await
        .unwrap();
    assert!(c.data.get("status").is_none());
    // Duplicate name, missing namespace, name mismatch.
    let s = status(
        api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "x")))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        s.message,
        "osprovisioningrequests.osprov.io \"a\" already exists"
    );
    let missing = osprs(&t.client, "nope");
    assert_eq!(
        code(
            missing
                .create(&PostParams::default(), &dyn_obj(ospr("a", "h", "o")))
                .await
        ),
        404
    );
    let mut wrong_ns = ospr("d", "h1", "x");
    wrong_ns["metadata"]["namespace"] = json!("kube-system");
    assert_eq!(
        code(api.create(&PostParams::default(), &dyn_obj(wrong_ns)).await),
        400
    );
    // A list's resourceVersion is the snapshot revision.
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    assert!(
        list.metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv(&c)
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn update_rules_generation_and_conflicts() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    let a = api
        .create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    // Metadata-only change: generation stays.
    let mut m = a.clone();
    m.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    let m = api.replace("a", &PostParams::default(), &m).await.unwrap();
    assert_eq!(m.metadata.generation, Some(1));
    assert!(rv(&m) > rv(&a));
    // Spec change: generation +1.
    let mut s = m.clone();
    s.data["spec"]["os"] = json!("debian");
    let s = api.replace("a", &PostParams::default(), &s).await.unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    // Identical write: same revision, no new generation (A2).
    let same = api.replace("a", &PostParams::default(), &s).await.unwrap();
    assert_eq!(rv(&same), rv(&s));
    // Stale resourceVersion: 409 with kube-apiserver's message.
    let st = status(api.replace("a", &PostParams::default(), &m).await);
    assert_eq!(st.code, 409);
    assert!(st.message.ends_with("the object has been modified; please apply your changes to the latest version and try again"));
    // No resourceVersion: 422.
    let mut norv = s.clone();
    norv.metadata.resource_version = None;
    assert_eq!(
        code(api.replace("a", &PostParams::default(), &norv).await),
        422
    );
    // Immutable uid: 422; missing object: 404; name mismatch: 400.
    let mut uid = s.clone();
    uid.metadata.uid = Some("other".into());
    assert_eq!(
        code(api.replace("a", &PostParams::default(), &uid).await),
        422
    );
    let mut ghost = s.clone();
    ghost.metadata.name = Some("ghost".into());
    assert_eq!(
        code(api.replace("ghost", &PostParams::default(), &ghost).await),
        404
    );
    assert_eq!(
        code(api.replace("other", &PostParams::default(), &s).await),
        400
    );
    // The CEL transition rule (spec.host immutable) answers 422 with causes.
    let mut host = s.clone();
    host.data["spec"]["host"] = json!("h2");
    let st = status(api.replace("a", &PostParams::default(), &host).await);
    assert_eq!(st.code, 422);
    assert!(
        st.message.contains("spec.host is immutable"),
        "{}",
        st.message
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn status_subresource_isolation() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    let st = json!({"status": {"phase": "Queued", "observedGeneration": 1}});
    let after = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Queued");
    assert_eq!(after.metadata.generation, Some(1));
    // A status write cannot change the spec.
    let sneaky = json!({"spec": {"os": "evil"}, "status": {"phase": "Provisioning"}});
    let after = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .unwrap();
    assert_eq!(after.data["spec"]["os"], "ubuntu");
    assert_eq!(after.data["status"]["phase"], "Provisioning");
    // A main-endpoint write cannot change the status.
    let main = json!({"spec": {"os": "debian"}, "status": {"phase": "Failed"}});
    let after = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Provisioning");
    assert_eq!(after.metadata.generation, Some(2));
    // /status is validated too.
    let bad = json!({"status": {"phase": "Exploded"}});
    assert_eq!(
        code(
            api.patch_status("a", &PatchParams::default(), &Patch::Merge(&bad))
                .await
        ),
        422
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn patch_types() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    let merged = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"k": "v"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.metadata.labels.unwrap()["k"], "v");
    // JSON patch with a passing and a failing test.
    let ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x.io/f"]}
    ]))
    .unwrap();
    let p = api
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(ok))
        .await
        .unwrap();
    assert_eq!(p.metadata.finalizers, Some(vec!["x.io/f".to_string()]));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/os", "value": "nope"}]))
            .unwrap();
    assert_eq!(
        code(
            api.patch("a", &PatchParams::default(), &Patch::Json::<()>(failing))
                .await
        ),
        422
    );
    // Patch with a stale resourceVersion: 409; patch of a missing object: 404.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"os": "x"}});
    assert_eq!(
        code(
            api.patch("a", &PatchParams::default(), &Patch::Merge(stale))
                .await
        ),
        409
    );
    assert_eq!(
        code(
            api.patch("zz", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        ),
        404
    );
    // Strategic merge on a custom resource: 415.
    let smp = api
        .patch("a", &PatchParams::default(), &Patch::Strategic(json!({})))
        .await;
    assert_eq!(code(smp), 415);
    t.server.shutdown().await;
}

#[tokio::test]
async fn schema_validation_defaults_pruning() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    // Missing required field and pattern violation: 422 with causes.
    let bad = json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                     "metadata": {"name": "bad"}, "spec": {"host": "Not_Valid"}});
    let st = status(api.create(&PostParams::default(), &dyn_obj(bad)).await);
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert!(
        st.message
            .starts_with("OSProvisioningRequest.osprov.io \"bad\" is invalid: "),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("spec.os: Required value"),
        "{}",
        st.message
    );
    let causes = st.details.unwrap().causes;
    assert!(causes.iter().any(|c| c.field == "spec.host"));
    // Pruning of unknown fields (fieldValidation default: Warn) and Strict refusal.
    let mut extra = ospr("p", "h1", "ubuntu");
    extra["spec"]["bogus"] = json!(1);
    let p = api
        .create(&PostParams::default(), &dyn_obj(extra.clone()))
        .await
        .unwrap();
    assert!(p.data["spec"].get("bogus").is_none());
    extra["metadata"]["name"] = json!("p2");
    let r = t
        .client
        .request::<serde_json::Value>(
            http::Request::post("/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests?fieldValidation=Strict")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&extra).unwrap())
                .unwrap(),
        )
        .await;
    let st = status(r);
    assert_eq!(st.code, 400);
    assert!(
        st.message.contains("unknown field \"spec.bogus\""),
        "{}",
        st.message
    );
    // Defaults: OSDispatcher.spec.adapter / provisioner.
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "osprov.io",
        "v1alpha1",
        "OSDispatcher",
    ));
    let osd: Api<kube::api::DynamicObject> = Api::namespaced_with(t.client.clone(), "default", &ar);
    let d = osd
        .create(
            &PostParams::default(),
            &dyn_obj(json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSDispatcher", "metadata": {"name": "d"}, "spec": {}})),
        )
        .await
        .unwrap();
    assert_eq!(d.data["spec"]["adapter"], "simulator");
    assert_eq!(d.data["spec"]["provisioner"], "osp");
    t.server.shutdown().await;
}

#[tokio::test]
async fn builtins_namespaces_secrets_leases() {
    let t = TestApi::start().await;
    let ns: Api<Namespace> = Api::all(t.client.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        ns.get("team")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Active")
    );
    // Secrets: stringData folded into data, type defaults to Opaque.
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), "team");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"user": "admin"}}),
    )
    .unwrap();
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert_eq!(s.data.unwrap()["user"].0, b"admin".to_vec());
    assert!(s.string_data.is_none());
    // Leases: MicroTime round-trips.
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), "default");
    let l: Lease = serde_json::from_value(json!({"metadata": {"name": "osprov-leader"},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15, "renewTime": "2024-05-01T10:00:00.123456Z",
                 "acquireTime": "2024-05-01T10:00:00.000001Z"}}))
    .unwrap();
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let got = leases.get("osprov-leader").await.unwrap();
    assert_eq!(got.spec, created.spec);
    let raw = serde_json::to_value(&got).unwrap();
    assert_eq!(raw["spec"]["renewTime"], "2024-05-01T10:00:00.123456Z");
    // Deleting a namespace removes its objects; default may not be deleted.
    ns.delete("team", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(secrets.get("creds").await), 404);
    assert_eq!(
        code(ns.delete("default", &DeleteParams::default()).await),
        403
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn errors_401_and_404() {
    let t = TestApi::start().await;
    // No token: 401 Status.
    let mut kc = t.server.kubeconfig();
    kc.auth_infos[0].auth_info = Some(Default::default());
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let anon = kube::Client::try_from(cfg).unwrap();
    let st = status(osprs(&anon, "default").list(&ListParams::default()).await);
    assert_eq!((st.code, st.reason.as_str()), (401, "Unauthorized"));
    // Unknown resource: 404 Status; unknown object: NotFound message.
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "apps",
        "v1",
        "Deployment",
    ));
    let deploy: Api<kube::api::DynamicObject> =
        Api::namespaced_with(t.client.clone(), "default", &ar);
    let st = status(deploy.list(&ListParams::default()).await);
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    let st = status(osprs(&t.client, "default").get("nope").await);
    assert_eq!(
        st.message,
        "osprovisioningrequests.osprov.io \"nope\" not found"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn paging_and_selectors() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    for i in 0..7 {
        let mut o = ospr(&format!("r{i}"), "h1", "ubuntu");
        o["metadata"]["labels"] =
            json!({"tier": if i % 2 == 0 { "even" } else { "odd" }, "n": i.to_string()});
        api.create(&PostParams::default(), &dyn_obj(o))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().unwrap();
    // A write between pages does not show up: all pages come from one snapshot.
    api.create(&PostParams::default(), &dyn_obj(ospr("r9", "h1", "ubuntu")))
        .await
        .unwrap();
    let second = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    let third = api
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(second.metadata.continue_.as_ref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(third.items.len(), 1);
    assert!(third.metadata.continue_.is_none() || third.metadata.continue_.as_deref() == Some(""));
    assert_eq!(
        first.metadata.resource_version,
        third.metadata.resource_version
    );
    // Label selectors.
    let even = api
        .list(&ListParams::default().labels("tier=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    let set = api
        .list(&ListParams::default().labels("n in (1,2),tier!=even"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 1);
    let none = api
        .list(&ListParams::default().labels("!tier"))
        .await
        .unwrap();
    assert_eq!(none.items.len(), 1);
    // Field selectors: metadata.name works, others are refused.
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=r3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(
        code(
            api.list(&ListParams::default().fields("spec.os=ubuntu"))
                .await
        ),
        400
    );
    // deletecollection honours the selector.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=odd"),
    )
    .await
    .unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );
    // An unknown continue token snapshot: 410 Expired.
    let bogus = base64_token(999_999);
    assert_eq!(
        code(
            api.list(&ListParams::default().limit(1).continue_token(&bogus))
                .await
        ),
        410
    );
    t.server.shutdown().await;
}

fn base64_token(rv: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{{\"rv\":{rv},\"ns\":\"default\",\"name\":\"r1\"}}"
    ))
}
