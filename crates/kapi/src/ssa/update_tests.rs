//! Unit tests of update tracking (`record_update`, operation "Update").

use serde_json::json;

use super::tests::{cfg, do_apply, entry, fields, T1, T2, T3};
use super::{record_update, record_update_with};
use crate::schema::tests::schema;

#[test]
fn record_update_on_create_and_transfer() {
    let s = schema();
    let mut created = cfg(json!({"host": "h", "os": "linux"}));
    created["metadata"]["labels"] = json!({"app": "x"});
    created["metadata"]["uid"] = json!("u1");
    record_update_with(None, &mut created, "creator", None, Some(&s), T1);
    assert_eq!(
        fields(&created, "creator", "Update"),
        json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {".": {}, "f:host": {}, "f:os": {}}})
    );
    let mut edited = created.clone();
    edited["spec"]["os"] = json!("bsd");
    edited["metadata"]["resourceVersion"] = json!("7");
    record_update_with(Some(&created), &mut edited, "editor", None, Some(&s), T2);
    assert_eq!(
        fields(&edited, "editor", "Update"),
        json!({"f:spec": {"f:os": {}}})
    );
    assert_eq!(
        fields(&edited, "creator", "Update"),
        json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {".": {}, "f:host": {}}})
    );
    assert_eq!(
        entry(&edited, "creator", "Update").map(|e| e["time"].clone()),
        Some(json!(T1))
    );
    // A removal drops the field from everybody.
    let mut removed = edited.clone();
    if let Some(spec) = removed["spec"].as_object_mut() {
        spec.remove("os");
    }
    record_update(Some(&edited), &mut removed, "cleaner", None, T3);
    assert!(
        entry(&removed, "editor", "Update").is_none(),
        "editor's only field is gone, so is its entry"
    );
    assert!(
        entry(&removed, "cleaner", "Update").is_none(),
        "a pure removal owns nothing"
    );
}

#[test]
fn update_without_managed_fields_is_not_tracked_and_sent_entries_win() {
    let old = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "eA=="}});
    let mut new = old.clone();
    new["data"]["b"] = json!("eQ==");
    record_update(Some(&old), &mut new, "m", None, T1);
    assert!(new["metadata"].get("managedFields").is_none());
    // A client may reset managedFields by sending them.
    let mut reset = new.clone();
    reset["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Update", "apiVersion": "v1",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}]);
    reset["data"]["c"] = json!("eg==");
    record_update(Some(&new), &mut reset, "m", None, T2);
    assert_eq!(
        fields(&reset, "x", "Update"),
        json!({"f:data": {"f:a": {}}})
    );
    assert_eq!(
        fields(&reset, "m", "Update"),
        json!({"f:data": {"f:c": {}}})
    );
}

#[test]
fn subresource_update_keeps_stored_managed_fields() {
    let s = schema();
    let live = do_apply(&s, None, &cfg(json!({"host": "h"})), "a", T1);
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{"manager": "forged", "operation": "Update",
        "apiVersion": "osprov.io/v1alpha1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:host": {}}}}]);
    new["status"] = json!({"phase": "Ready"});
    record_update_with(Some(&live), &mut new, "ctrl", Some("status"), Some(&s), T2);
    assert!(entry(&new, "forged", "Update").is_none());
    assert_eq!(
        fields(&new, "a", "Apply"),
        json!({"f:spec": {"f:host": {}}})
    );
    let e = entry(&new, "ctrl", "Update").expect("ctrl entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {".": {}, "f:phase": {}}}));
}
