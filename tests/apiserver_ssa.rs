//! Embedded API: server-side apply through the kube client (k8s-api-fidelity.md C3).
mod support;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;

fn applied(os: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut o = ospr("s", "h1", os);
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            o["spec"][k] = v.clone();
        }
    }
    o
}

#[tokio::test]
async fn apply_create_update_conflict_force() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    let pp = PatchParams::apply("alice");
    // Apply to a missing object creates it, with managedFields.
    let created = api
        .patch(
            "s",
            &pp,
            &Patch::Apply(applied("ubuntu", json!({"maxAttempts": 3}))),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["maxAttempts"], 3);
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert!(mf
        .iter()
        .any(|m| m.manager.as_deref() == Some("alice") && m.operation.as_deref() == Some("Apply")));
    assert_eq!(created.metadata.generation, Some(1));
    // Re-applying without maxAttempts removes it (alice owned it alone).
    let updated = api
        .patch("s", &pp, &Patch::Apply(applied("ubuntu", json!({}))))
        .await
        .unwrap();
    assert!(
        updated.data["spec"].get("maxAttempts").is_none(),
        "{:?}",
        updated.data
    );
    // Re-applying the same thing is a no-op: same resourceVersion.
    let same = api
        .patch("s", &pp, &Patch::Apply(applied("ubuntu", json!({}))))
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        updated.metadata.resource_version
    );
    // Bob changing alice's field conflicts: 409 with FieldManagerConflict causes.
    let bob = PatchParams::apply("bob");
    let st = status(
        api.patch("s", &bob, &Patch::Apply(applied("debian", json!({}))))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert!(
        st.message
            .starts_with("Apply failed with 1 conflict: conflict with \"alice\""),
        "{}",
        st.message
    );
    let causes = st.details.unwrap().causes;
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.os");
    // force=true takes ownership.
    let forced = api
        .patch(
            "s",
            &bob.clone().force(),
            &Patch::Apply(applied("debian", json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["os"], "debian");
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(forced.metadata.generation, Some(3));
    // An apply never writes status on the main endpoint; the status subresource takes it.
    let with_status = json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                             "metadata": {"name": "s"}, "status": {"phase": "Queued"}});
    let ctrl = PatchParams::apply("controller").force();
    let st = api
        .patch_status("s", &ctrl, &Patch::Apply(with_status))
        .await
        .unwrap();
    assert_eq!(st.data["status"]["phase"], "Queued");
    assert_eq!(st.metadata.generation, Some(3));
    t.server.shutdown().await;
}

#[tokio::test]
async fn apply_parameter_errors() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    // fieldManager is required for apply: 422.
    let r = t
        .client
        .request::<serde_json::Value>(
            http::Request::patch(
                "/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests/s",
            )
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_json::to_vec(&ospr("s", "h1", "ubuntu")).unwrap())
            .unwrap(),
        )
        .await;
    assert_eq!(code(r), 422);
    // YAML bodies work (kubectl sends JSON, others YAML).
    let yaml = "apiVersion: osprov.io/v1alpha1\nkind: OSProvisioningRequest\nmetadata:\n  name: y\nspec:\n  host: h1\n  os: ubuntu\n";
    let r: serde_json::Value = t
        .client
        .request(
            http::Request::patch("/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests/y?fieldManager=yaml")
                .header("content-type", "application/apply-patch+yaml")
                .body(yaml.as_bytes().to_vec())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r["spec"]["os"], "ubuntu");
    // force on a non-apply patch: 422.
    let r = t
        .client
        .request::<serde_json::Value>(
            http::Request::patch(
                "/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests/y?force=true",
            )
            .header("content-type", "application/merge-patch+json")
            .body(b"{}".to_vec())
            .unwrap(),
        )
        .await;
    assert_eq!(code(r), 422);
    // Apply of an invalid object: 422 from the schema.
    let bad = json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest", "metadata": {"name": "z"}, "spec": {"host": "h1"}});
    assert_eq!(
        code(
            api.patch("z", &PatchParams::apply("x"), &Patch::Apply(bad))
                .await
        ),
        422
    );
    t.server.shutdown().await;
}
