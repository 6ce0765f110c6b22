//! Unit tests of server-side apply and update tracking against the CRD-like test schema.

use serde_json::{json, Value};

use super::{apply, conflicts_message, record_update_with, ApplyOutcome, Conflict};
use crate::schema::tests::schema;
use crate::schema::StructuralSchema;

pub(super) const T1: &str = "2026-01-01T00:00:00Z";
pub(super) const T2: &str = "2026-01-01T00:01:00Z";
pub(super) const T3: &str = "2026-01-01T00:02:00Z";

pub(super) fn cfg(spec: Value) -> Value {
    json!({"apiVersion": "osprov.io/v1alpha1", "kind": "Host", "metadata": {"name": "h1"}, "spec": spec})
}

pub(super) fn ok(outcome: Result<ApplyOutcome, super::SsaError>) -> Value {
    match outcome {
        Ok(ApplyOutcome::Applied(v)) => v,
        Ok(ApplyOutcome::Conflict(c)) => panic!("unexpected conflicts: {c:?}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

pub(super) fn conflicts(outcome: Result<ApplyOutcome, super::SsaError>) -> Vec<Conflict> {
    match outcome {
        Ok(ApplyOutcome::Conflict(c)) => c,
        Ok(ApplyOutcome::Applied(v)) => panic!("expected a conflict, got {v:#}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

pub(super) fn do_apply(
    s: &StructuralSchema,
    live: Option<&Value>,
    cfg: &Value,
    mgr: &str,
    now: &str,
) -> Value {
    ok(apply(live, cfg, mgr, false, None, Some(s), now))
}

/// The managedFields entry of `manager` with `operation`.
pub(super) fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

pub(super) fn fields(obj: &Value, manager: &str, operation: &str) -> Value {
    entry(obj, manager, operation).map_or(Value::Null, |e| e["fieldsV1"].clone())
}

fn strip_mf(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    v
}

#[test]
fn create_via_apply_records_apply_entry() {
    let s = schema();
    let mut c =
        cfg(json!({"host": "h", "os": "linux", "images": [{"name": "a", "url": "https://a"}]}));
    c["metadata"]["labels"] = json!({"app": "x"});
    let out = do_apply(&s, None, &c, "mgr", T1);
    assert_eq!(strip_mf(&out), c);
    let e = entry(&out, "mgr", "Apply").expect("entry");
    assert_eq!(e["apiVersion"], "osprov.io/v1alpha1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(e["time"], T1);
    assert!(e.get("subresource").is_none());
    assert_eq!(
        e["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:host": {}, "f:os": {}, "f:images": {"k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:url": {}}}}
        })
    );
    assert_eq!(
        out["metadata"]["managedFields"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn reapply_by_same_manager_updates_and_noop_keeps_time() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "os": "linux"})),
        "mgr",
        T1,
    );
    let same = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"host": "h", "os": "linux"})),
        "mgr",
        T2,
    );
    assert_eq!(
        same, live,
        "an identical apply changes nothing, not even the time"
    );
    let changed = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"host": "h", "os": "bsd"})),
        "mgr",
        T2,
    );
    assert_eq!(changed["spec"]["os"], "bsd");
    assert_eq!(
        entry(&changed, "mgr", "Apply").map(|e| e["time"].clone()),
        Some(json!(T2))
    );
}

#[test]
fn omitted_field_is_removed() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "os": "linux", "images": [{"name": "a"}]})),
        "mgr",
        T1,
    );
    let out = do_apply(&s, Some(&live), &cfg(json!({"host": "h"})), "mgr", T2);
    // The emptied list stays as `[]` (structured-merge-diff keeps emptied lists and maps
    // instead of turning them into null, see kubernetes#117447).
    assert_eq!(out["spec"], json!({"host": "h", "images": []}));
    assert_eq!(
        fields(&out, "mgr", "Apply"),
        json!({"f:spec": {"f:host": {}}})
    );
}

#[test]
fn co_owned_field_is_kept() {
    let s = schema();
    let live = do_apply(&s, None, &cfg(json!({"host": "h", "os": "linux"})), "a", T1);
    // Same value: no conflict, shared ownership.
    let live = do_apply(&s, Some(&live), &cfg(json!({"os": "linux"})), "b", T2);
    assert_eq!(fields(&live, "b", "Apply"), json!({"f:spec": {"f:os": {}}}));
    let out = do_apply(&s, Some(&live), &cfg(json!({"host": "h"})), "a", T3);
    assert_eq!(out["spec"]["os"], "linux", "b still owns os");
    assert_eq!(
        fields(&out, "a", "Apply"),
        json!({"f:spec": {"f:host": {}}})
    );
    assert_eq!(fields(&out, "b", "Apply"), json!({"f:spec": {"f:os": {}}}));
}

#[test]
fn conflict_with_apply_manager_and_force() {
    let s = schema();
    let live = do_apply(&s, None, &cfg(json!({"host": "h", "os": "linux"})), "a", T1);
    let c = conflicts(apply(
        Some(&live),
        &cfg(json!({"os": "bsd"})),
        "b",
        false,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(
        c,
        vec![Conflict {
            manager: "a".into(),
            field: ".spec.os".into(),
            api_version: "osprov.io/v1alpha1".into(),
            subresource: None,
        }]
    );
    assert_eq!(
        conflicts_message(&c),
        r#"Apply failed with 1 conflict: conflict with "a" using osprov.io/v1alpha1: .spec.os"#
    );
    let out = ok(apply(
        Some(&live),
        &cfg(json!({"os": "bsd"})),
        "b",
        true,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(out["spec"]["os"], "bsd");
    assert_eq!(fields(&out, "b", "Apply"), json!({"f:spec": {"f:os": {}}}));
    assert_eq!(
        fields(&out, "a", "Apply"),
        json!({"f:spec": {"f:host": {}}}),
        "ownership moved"
    );
    // a now re-applies without os: nothing to remove since b owns it.
    let again = do_apply(&s, Some(&out), &cfg(json!({"host": "h"})), "a", T3);
    assert_eq!(again["spec"]["os"], "bsd");
}

#[test]
fn conflict_with_update_manager() {
    let s = schema();
    let live = do_apply(&s, None, &cfg(json!({"host": "h", "os": "linux"})), "a", T1);
    let mut edited = live.clone();
    edited["spec"]["os"] = json!("bsd");
    edited["spec"]["maxConcurrent"] = json!(3);
    record_update_with(Some(&live), &mut edited, "kubectl-edit", None, Some(&s), T2);
    assert_eq!(
        fields(&edited, "kubectl-edit", "Update"),
        json!({"f:spec": {"f:maxConcurrent": {}, "f:os": {}}})
    );
    assert_eq!(
        fields(&edited, "a", "Apply"),
        json!({"f:spec": {"f:host": {}}}),
        "os left a's set"
    );
    let c = conflicts(apply(
        Some(&edited),
        &cfg(json!({"host": "h", "maxConcurrent": 4})),
        "a",
        false,
        None,
        Some(&s),
        T3,
    ));
    assert_eq!(
        c,
        vec![Conflict {
            manager: "kubectl-edit".into(),
            field: ".spec.maxConcurrent".into(),
            api_version: "osprov.io/v1alpha1".into(),
            subresource: None,
        }]
    );
}

#[test]
fn list_map_merges_by_key() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "images": [{"name": "a", "url": "https://a"}]})),
        "a",
        T1,
    );
    let live = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"images": [{"name": "b"}]})),
        "b",
        T2,
    );
    assert_eq!(
        live["spec"]["images"],
        json!([{"name": "a", "url": "https://a"}, {"name": "b"}])
    );
    assert_eq!(
        fields(&live, "b", "Apply"),
        json!({"f:spec": {"f:images": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}}}}})
    );
    // b adds a field to a's item: no conflict, the item is shared.
    let live = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"images": [{"name": "b"}, {"name": "a", "arch": "arm64"}]})),
        "b",
        T3,
    );
    // Shared items follow the applier's order.
    assert_eq!(
        live["spec"]["images"],
        json!([{"name": "b"}, {"name": "a", "url": "https://a", "arch": "arm64"}])
    );
    // a drops its item: b still owns part of it, so only a's url goes.
    let out = do_apply(&s, Some(&live), &cfg(json!({"host": "h"})), "a", T3);
    assert_eq!(
        out["spec"]["images"],
        json!([{"name": "b"}, {"name": "a", "arch": "arm64"}])
    );
}

#[test]
fn list_map_item_removed_when_unowned() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "images": [{"name": "a"}, {"name": "b"}]})),
        "a",
        T1,
    );
    let out = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"host": "h", "images": [{"name": "b"}]})),
        "a",
        T2,
    );
    assert_eq!(out["spec"]["images"], json!([{"name": "b"}]));
}

#[test]
fn set_list_merges_values() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "tags": ["x", "y"]})),
        "a",
        T1,
    );
    let live = do_apply(&s, Some(&live), &cfg(json!({"tags": ["z", "x"]})), "b", T2);
    assert_eq!(live["spec"]["tags"], json!(["z", "x", "y"]));
    assert_eq!(
        fields(&live, "b", "Apply"),
        json!({"f:spec": {"f:tags": {"v:\"x\"": {}, "v:\"z\"": {}}}})
    );
    let out = do_apply(&s, Some(&live), &cfg(json!({"host": "h"})), "a", T3);
    assert_eq!(
        out["spec"]["tags"],
        json!(["z", "x"]),
        "y was only a's; x is still b's"
    );
}

#[test]
fn atomic_list_is_replaced_and_conflicts() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "args": ["1", "2"]})),
        "a",
        T1,
    );
    assert_eq!(
        fields(&live, "a", "Apply"),
        json!({"f:spec": {"f:args": {}, "f:host": {}}})
    );
    let c = conflicts(apply(
        Some(&live),
        &cfg(json!({"args": ["3"]})),
        "b",
        false,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(c[0].field, ".spec.args");
    let out = ok(apply(
        Some(&live),
        &cfg(json!({"args": ["3"]})),
        "b",
        true,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(out["spec"]["args"], json!(["3"]));
    let same_mgr = do_apply(
        &s,
        Some(&live),
        &cfg(json!({"host": "h", "args": ["9"]})),
        "a",
        T2,
    );
    assert_eq!(same_mgr["spec"]["args"], json!(["9"]));
}

#[test]
fn status_apply_only_touches_status() {
    let s = schema();
    let live = do_apply(&s, None, &cfg(json!({"host": "h"})), "user", T1);
    let mut body = cfg(json!({"host": "hijack"}));
    body["status"] = json!({"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]});
    let out = ok(apply(
        Some(&live),
        &body,
        "ctrl",
        false,
        Some("status"),
        Some(&s),
        T2,
    ));
    assert_eq!(out["spec"]["host"], "h");
    assert_eq!(out["status"]["phase"], "Ready");
    let e = entry(&out, "ctrl", "Apply").expect("entry");
    assert_eq!(e["subresource"], "status");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:status": {"f:phase": {}, "f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
    );
    // A second controller adds its own condition; the first one's stays.
    let mut body2 = cfg(json!({}));
    body2["status"] = json!({"conditions": [{"type": "Synced", "status": "False"}]});
    let out2 = ok(apply(
        Some(&out),
        &body2,
        "other",
        false,
        Some("status"),
        Some(&s),
        T3,
    ));
    let types: Vec<&str> = out2["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, vec!["Ready", "Synced"]);
}

#[test]
fn schemaless_apply_and_before_first_apply() {
    let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "uid": "u"}, "type": "Opaque", "data": {"a": "eA=="}});
    let c = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "eQ=="}});
    let got = conflicts(apply(Some(&live), &c, "m", false, None, None, T1));
    assert_eq!(
        got,
        vec![Conflict {
            manager: "before-first-apply".into(),
            field: ".data.a".into(),
            api_version: "v1".into(),
            subresource: None,
        }]
    );
    let out = ok(apply(Some(&live), &c, "m", true, None, None, T1));
    assert_eq!(out["data"]["a"], "eQ==");
    assert_eq!(
        fields(&out, "before-first-apply", "Update"),
        json!({"f:type": {}})
    );
    assert_eq!(fields(&out, "m", "Apply"), json!({"f:data": {"f:a": {}}}));
}

#[test]
fn bad_input_is_an_error() {
    let s = schema();
    assert!(apply(None, &json!([1]), "m", false, None, Some(&s), T1).is_err());
    let missing_key = cfg(json!({"host": "h", "images": [{"url": "https://x"}]}));
    assert!(apply(None, &missing_key, "m", false, None, Some(&s), T1).is_err());
    let dup = cfg(json!({"host": "h", "images": [{"name": "a"}, {"name": "a"}]}));
    assert!(apply(None, &dup, "m", false, None, Some(&s), T1).is_err());
    let mut bad_mf = cfg(json!({"host": "h"}));
    bad_mf["metadata"]["managedFields"] = json!([{"manager": "x", "fieldsV1": {"zz": {}}}]);
    assert!(apply(
        Some(&bad_mf),
        &cfg(json!({})),
        "m",
        false,
        None,
        Some(&s),
        T1
    )
    .is_err());
}

#[test]
fn finalizers_and_owner_references_merge_granularly() {
    let s = schema();
    let mut c1 = cfg(json!({"host": "h"}));
    c1["metadata"]["finalizers"] = json!(["a/x"]);
    let live = do_apply(&s, None, &c1, "a", T1);
    let mut c2 = cfg(json!({}));
    c2["metadata"]["finalizers"] = json!(["b/y"]);
    c2["metadata"]["ownerReferences"] =
        json!([{"uid": "u1", "name": "o", "kind": "K", "apiVersion": "v1"}]);
    let out = do_apply(&s, Some(&live), &c2, "b", T2);
    assert_eq!(out["metadata"]["finalizers"], json!(["a/x", "b/y"]));
    assert_eq!(
        fields(&out, "b", "Apply")["f:metadata"]["f:ownerReferences"],
        json!({"k:{\"uid\":\"u1\"}": {".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}}})
    );
}

#[test]
fn several_conflicts_are_grouped_by_manager() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "os": "linux", "maxConcurrent": 2})),
        "a",
        T1,
    );
    let mut st = live.clone();
    st["status"] = json!({"phase": "Ready"});
    record_update_with(Some(&live), &mut st, "ctrl", Some("status"), Some(&s), T2);
    let mut body = cfg(json!({"os": "bsd", "maxConcurrent": 3}));
    body["status"] = json!({"phase": "Done"});
    let c = conflicts(apply(Some(&st), &body, "b", false, None, Some(&s), T3));
    assert_eq!(c.len(), 3);
    assert_eq!(
        conflicts_message(&c),
        "Apply failed with 3 conflicts: conflicts with \"a\" using osprov.io/v1alpha1:\n\
         - .spec.maxConcurrent\n- .spec.os\n\
         conflicts with \"ctrl\" with subresource \"status\" using osprov.io/v1alpha1:\n- .status.phase"
    );
}

#[test]
fn atomic_map_is_replaced_whole() {
    let s = schema();
    let live = do_apply(
        &s,
        None,
        &cfg(json!({"host": "h", "selector": {"a": "1"}})),
        "a",
        T1,
    );
    assert_eq!(
        fields(&live, "a", "Apply"),
        json!({"f:spec": {"f:host": {}, "f:selector": {}}})
    );
    let c = conflicts(apply(
        Some(&live),
        &cfg(json!({"selector": {"b": "2"}})),
        "b",
        false,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].field, ".spec.selector");
    let out = ok(apply(
        Some(&live),
        &cfg(json!({"selector": {"b": "2"}})),
        "b",
        true,
        None,
        Some(&s),
        T2,
    ));
    assert_eq!(
        out["spec"]["selector"],
        json!({"b": "2"}),
        "replaced, not merged"
    );
}
