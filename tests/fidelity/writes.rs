//! The corpus, part one: creates, reads, updates and patches of osprov's custom resources.
use serde_json::json;

use super::call::*;

pub const R: &str = "/apis/osprov.io/v1alpha1/namespaces/${ns}/osprovisioningrequests";
pub const H: &str = "/apis/osprov.io/v1alpha1/namespaces/${ns}/managedhosts";
pub const D: &str = "/apis/osprov.io/v1alpha1/namespaces/${ns}/osdispatchers";

pub fn ospr(name: &str, host: &str, os: &str) -> serde_json::Value {
    json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
           "metadata": {"name": name}, "spec": {"host": host, "os": os}})
}

fn with(mut v: serde_json::Value, pointer: &str, value: serde_json::Value) -> String {
    if let Some(slot) = v.pointer_mut(pointer) {
        *slot = value;
    } else {
        let (parent, last) = pointer.rsplit_once('/').expect("pointer");
        v.pointer_mut(parent).expect("parent")[last] = value;
    }
    v.to_string()
}

pub fn creates() -> Vec<Call> {
    let a = ospr("a", "h1", "ubuntu");
    vec![
        post("create: valid", R, a.to_string()).save("rv_a1", "/metadata/resourceVersion"),
        post(
            "create: generateName",
            R,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                   "metadata": {"generateName": "gen-"}, "spec": {"host": "h1", "os": "x"}})
            .to_string(),
        ),
        post("create: already exists", R, a.to_string()),
        post("create: POST to an object URL", format!("{R}/a"), a.to_string()),
        post(
            "create: namespace mismatch",
            R,
            with(a.clone(), "/metadata/namespace", json!("elsewhere")),
        ),
        post(
            "create: missing namespace",
            "/apis/osprov.io/v1alpha1/namespaces/no-such-ns-x/osprovisioningrequests",
            a.to_string(),
        ),
        post(
            "create: no name nor generateName",
            R,
            with(a.clone(), "/metadata", json!({})),
        ),
        post(
            "create: invalid name",
            R,
            with(a.clone(), "/metadata/name", json!("Bad_Name")),
        ),
        post(
            "create: required spec.os missing",
            R,
            with(a.clone(), "/spec", json!({"host": "h1"})),
        ),
        post(
            "create: required spec missing",
            R,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                   "metadata": {"name": "nospec"}})
            .to_string(),
        ),
        post(
            "create: wrong type (spec.host number)",
            R,
            with(a.clone(), "/spec/host", json!(5)),
        ),
        post(
            "create: wrong type (spec.maxAttempts string)",
            R,
            with(a.clone(), "/spec/maxAttempts", json!("x")),
        ),
        post(
            "create: below minimum (spec.maxAttempts 0)",
            R,
            with(a.clone(), "/spec/maxAttempts", json!(0)),
        ),
        post(
            "create: pattern (spec.host upper case)",
            R,
            with(a.clone(), "/spec/host", json!("UPPER")),
        ),
        post(
            "create: several errors at once",
            R,
            with(a.clone(), "/spec", json!({"host": "", "maxAttempts": 1000})),
        ),
        post(
            "create: spec is an array",
            R,
            with(a.clone(), "/spec", json!([1, 2])),
        ),
        post(
            "create: unknown field, fieldValidation=Strict",
            format!("{R}?fieldValidation=Strict"),
            with(ospr("strict", "h1", "x"), "/spec/bogus", json!(1)),
        ),
        post(
            "create: unknown field, default validation (pruned)",
            R,
            with(ospr("pruned", "h1", "x"), "/spec/bogus", json!(1)),
        ),
        post(
            "create: unknown top-level field, fieldValidation=Strict",
            format!("{R}?fieldValidation=Strict"),
            with(ospr("strict2", "h1", "x"), "/extra", json!(1)),
        ),
        post(
            "create: unknown metadata field, fieldValidation=Strict",
            format!("{R}?fieldValidation=Strict"),
            with(ospr("strict3", "h1", "x"), "/metadata/bogus", json!(1)),
        ),
        post(
            "create: wrong apiVersion",
            R,
            with(a.clone(), "/apiVersion", json!("osprov.io/v1")),
        ),
        post(
            "create: wrong kind",
            R,
            with(a.clone(), "/kind", json!("ManagedHost")),
        ),
        post(
            "create: no apiVersion/kind",
            R,
            json!({"metadata": {"name": "bare"}, "spec": {"host": "h1", "os": "x"}}).to_string(),
        ),
        post("create: malformed JSON", R, "{\"metadata\": {"),
        post("create: array body", R, "[1, 2]"),
        post("create: empty body", R, ""),
        post_as("create: text/plain", R, "text/plain", a.to_string()),
        post_as(
            "create: YAML body",
            R,
            "application/yaml",
            "apiVersion: osprov.io/v1alpha1\nkind: OSProvisioningRequest\nmetadata:\n  name: yaml1\nspec:\n  host: h1\n  os: debian\n",
        ),
        post(
            "create: status is dropped (status subresource)",
            R,
            with(ospr("withstatus", "h1", "x"), "/status", json!({"phase": "Queued"})),
        ),
        post(
            "create: dryRun=All",
            format!("{R}?dryRun=All"),
            ospr("dry", "h1", "x").to_string(),
        ),
        get("get: dryRun object does not exist", format!("{R}/dry")),
        post(
            "create: ManagedHost",
            H,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "ManagedHost",
                   "metadata": {"name": "h1", "labels": {"rack": "r1"}},
                   "spec": {"backendId": "b-1", "dispatcher": "d1"}})
            .to_string(),
        ),
        post(
            "create: ManagedHost missing required fields",
            H,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "ManagedHost",
                   "metadata": {"name": "h2"}, "spec": {}})
            .to_string(),
        ),
        post(
            "create: OSDispatcher bad enum",
            D,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSDispatcher",
                   "metadata": {"name": "d1"}, "spec": {"adapter": "nonsense"}})
            .to_string(),
        ),
        get("get: object", format!("{R}/a")),
        get("get: missing object", format!("{R}/missing")),
        get("get: status subresource", format!("{R}/a/status")),
        get("get: unknown subresource", format!("{R}/a/scale")),
        get(
            "get: unknown resource in a known group",
            "/apis/osprov.io/v1alpha1/namespaces/${ns}/widgets",
        ),
        get("get: unknown group", "/apis/nope.example.com/v1/foos"),
        get(
            "get: unknown core resource",
            "/api/v1/namespaces/${ns}/widgets",
        ),
        get(
            "get: unknown version",
            "/apis/osprov.io/v9/namespaces/${ns}/osprovisioningrequests",
        ),
        get(
            "get: cluster-scoped path of a namespaced kind",
            "/apis/osprov.io/v1alpha1/osprovisioningrequests/a",
        ),
    ]
}

pub fn updates() -> Vec<Call> {
    let a = ospr("a", "h1", "ubuntu");
    vec![
        merge(
            "merge: add labels",
            format!("{R}/a"),
            json!({"metadata": {"labels": {"app": "web", "tier": "1"}}}).to_string(),
        )
        .save("rv_a2", "/metadata/resourceVersion"),
        put(
            "put: without resourceVersion",
            format!("{R}/a"),
            a.to_string(),
        ),
        put(
            "put: stale resourceVersion",
            format!("{R}/a"),
            with(a.clone(), "/metadata/resourceVersion", json!("${rv_a1}")),
        ),
        put(
            "put: malformed resourceVersion",
            format!("{R}/a"),
            with(a.clone(), "/metadata/resourceVersion", json!("abc")),
        ),
        put(
            "put: name mismatch URL/body",
            format!("{R}/a"),
            with(
                ospr("b", "h1", "ubuntu"),
                "/metadata/resourceVersion",
                json!("${rv_a2}"),
            ),
        ),
        put(
            "put: namespace mismatch",
            format!("{R}/a"),
            with(
                with(a.clone(), "/metadata/resourceVersion", json!("${rv_a2}"))
                    .parse()
                    .expect("json"),
                "/metadata/namespace",
                json!("elsewhere"),
            ),
        ),
        put(
            "put: missing object",
            format!("{R}/missing"),
            with(
                ospr("missing", "h1", "ubuntu"),
                "/metadata/resourceVersion",
                json!("${rv_a2}"),
            ),
        ),
        put(
            "put: change immutable spec.host (CEL)",
            format!("{R}/a"),
            with(
                ospr("a", "h2", "ubuntu"),
                "/metadata/resourceVersion",
                json!("${rv_a2}"),
            ),
        ),
        put(
            "put: change uid",
            format!("{R}/a"),
            with(
                with(a.clone(), "/metadata/resourceVersion", json!("${rv_a2}"))
                    .parse()
                    .expect("json"),
                "/metadata/uid",
                json!("00000000-0000-0000-0000-000000000000"),
            ),
        ),
        put(
            "put: valid (labels dropped, spec.os changed)",
            format!("{R}/a"),
            with(
                ospr("a", "h1", "debian"),
                "/metadata/resourceVersion",
                json!("${rv_a2}"),
            ),
        )
        .save("rv_a3", "/metadata/resourceVersion"),
        put(
            "put: schema error",
            format!("{R}/a"),
            with(
                with(a.clone(), "/metadata/resourceVersion", json!("${rv_a3}"))
                    .parse()
                    .expect("json"),
                "/spec/maxAttempts",
                json!(500),
            ),
        ),
        put("put: malformed JSON", format!("{R}/a"), "{]"),
        merge(
            "merge: labels back",
            format!("{R}/a"),
            json!({"metadata": {"labels": {"app": "web", "tier": "1"}}}).to_string(),
        ),
    ]
}

pub fn patches() -> Vec<Call> {
    const J: &str = "application/json-patch+json";
    const A: &str = "application/apply-patch+yaml";
    let applied = |os: &str| {
        json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
               "metadata": {"name": "applied"}, "spec": {"host": "h1", "os": os}})
        .to_string()
    };
    vec![
        merge(
            "merge: spec field",
            format!("{R}/a"),
            r#"{"spec": {"maxAttempts": 3}}"#,
        ),
        merge(
            "merge: remove a field with null",
            format!("{R}/a"),
            r#"{"spec": {"maxAttempts": null}}"#,
        ),
        merge("merge: malformed JSON", format!("{R}/a"), "{nope"),
        merge("merge: array body", format!("{R}/a"), "[]"),
        merge(
            "merge: change immutable spec.host (CEL)",
            format!("{R}/a"),
            r#"{"spec": {"host": "h9"}}"#,
        ),
        merge(
            "merge: schema error",
            format!("{R}/a"),
            r#"{"spec": {"maxAttempts": "many"}}"#,
        ),
        merge(
            "merge: stale resourceVersion",
            format!("{R}/a"),
            r#"{"metadata": {"resourceVersion": "${rv_a1}"}, "spec": {"os": "arch"}}"#,
        ),
        merge(
            "merge: unknown field, fieldValidation=Strict",
            format!("{R}/a?fieldValidation=Strict"),
            r#"{"spec": {"bogus": 1}}"#,
        ),
        merge(
            "merge: name change in body",
            format!("{R}/a"),
            r#"{"metadata": {"name": "other"}}"#,
        ),
        merge(
            "merge: missing object",
            format!("{R}/missing"),
            r#"{"spec": {"os": "x"}}"#,
        ),
        merge(
            "merge: force=true on a non-apply patch",
            format!("{R}/a?force=true"),
            r#"{"spec": {"os": "x"}}"#,
        ),
        patch(
            "json: replace",
            format!("{R}/a"),
            J,
            r#"[{"op": "replace", "path": "/spec/os", "value": "fedora"}]"#,
        ),
        patch(
            "json: failed test op",
            format!("{R}/a"),
            J,
            r#"[{"op": "test", "path": "/spec/os", "value": "nope"}, {"op": "replace", "path": "/spec/os", "value": "x"}]"#,
        ),
        patch(
            "json: remove a missing path",
            format!("{R}/a"),
            J,
            r#"[{"op": "remove", "path": "/spec/nothing"}]"#,
        ),
        patch(
            "json: unknown op",
            format!("{R}/a"),
            J,
            r#"[{"op": "frobnicate", "path": "/spec/os"}]"#,
        ),
        patch("json: object body", format!("{R}/a"), J, r#"{"op": "add"}"#),
        patch(
            "json: test of a missing finalizers path against null",
            format!("{R}/a"),
            J,
            r#"[{"op": "test", "path": "/metadata/finalizers", "value": null}]"#,
        ),
        patch(
            "strategic merge on a custom resource",
            format!("{R}/a"),
            "application/strategic-merge-patch+json",
            r#"{"spec": {"os": "x"}}"#,
        ),
        patch(
            "patch: unknown content type",
            format!("{R}/a"),
            "text/plain",
            r#"{"spec": {"os": "x"}}"#,
        ),
        patch(
            "apply: without fieldManager",
            format!("{R}/applied"),
            A,
            applied("ubuntu"),
        ),
        patch(
            "apply: creates the object",
            format!("{R}/applied?fieldManager=mgr1"),
            A,
            applied("ubuntu"),
        ),
        patch(
            "apply: same manager, same intent (no-op)",
            format!("{R}/applied?fieldManager=mgr1"),
            A,
            applied("ubuntu"),
        ),
        patch(
            "apply: conflict with another manager",
            format!("{R}/applied?fieldManager=mgr2"),
            A,
            applied("debian"),
        ),
        patch(
            "apply: force=false conflict",
            format!("{R}/applied?fieldManager=mgr2&force=false"),
            A,
            applied("debian"),
        ),
        patch(
            "apply: force takes ownership",
            format!("{R}/applied?fieldManager=mgr2&force=true"),
            A,
            applied("debian"),
        ),
        patch(
            "apply: YAML body",
            format!("{R}/applied?fieldManager=mgr1&force=true"),
            A,
            "apiVersion: osprov.io/v1alpha1\nkind: OSProvisioningRequest\nmetadata:\n  name: applied\n  labels:\n    via: yaml\nspec:\n  host: h1\n  os: debian\n  maxAttempts: 2\n",
        ),
        patch(
            "apply: manager drops a field it owned",
            format!("{R}/applied?fieldManager=mgr1&force=true"),
            A,
            applied("debian"),
        ),
        patch(
            "apply: schema error",
            format!("{R}/applied?fieldManager=mgr1&force=true"),
            A,
            with(
                applied("debian").parse().expect("json"),
                "/spec/maxAttempts",
                json!(0),
            ),
        ),
        patch(
            "apply: name mismatch",
            format!("{R}/applied?fieldManager=mgr1"),
            A,
            applied("debian").replace("\"applied\"", "\"zzz\""),
        ),
        patch("apply: malformed YAML", format!("{R}/applied?fieldManager=mgr1"), A, "a: [b"),
        patch(
            "apply: missing apiVersion/kind",
            format!("{R}/applied?fieldManager=mgr1"),
            A,
            r#"{"metadata": {"name": "applied"}, "spec": {"os": "x"}}"#,
        ),
        merge(
            "merge: dryRun=All",
            format!("{R}/a?dryRun=All"),
            r#"{"spec": {"os": "dry"}}"#,
        ),
        get("get: after the dry-run patch", format!("{R}/a")),
    ]
}
