//! The corpus, part two: the status subresource, list selectors, paging, watches and deletes.
use serde_json::json;

use super::call::*;
use super::writes::{ospr, H, R};

pub fn status() -> Vec<Call> {
    vec![
        merge(
            "status: merge patch",
            format!("{R}/a/status"),
            r#"{"status": {"phase": "Queued", "attempts": 1}}"#,
        )
        .save("rv_s", "/metadata/resourceVersion"),
        merge(
            "status: bad enum value",
            format!("{R}/a/status"),
            r#"{"status": {"phase": "Bogus"}}"#,
        ),
        merge(
            "status: wrong type",
            format!("{R}/a/status"),
            r#"{"status": {"attempts": "one"}}"#,
        ),
        merge(
            "status: spec changes through /status are ignored",
            format!("{R}/a/status"),
            r#"{"spec": {"os": "ignored"}, "status": {"reason": "R"}}"#,
        ),
        merge(
            "status: status changes through the main endpoint are ignored",
            format!("{R}/a"),
            r#"{"status": {"phase": "Failed"}}"#,
        ),
        put(
            "status: PUT without resourceVersion",
            format!("{R}/a/status"),
            ospr("a", "h1", "ubuntu").to_string(),
        ),
        merge(
            "status: condition list (map keyed by type)",
            format!("{R}/a/status"),
            json!({"status": {"conditions": [{"type": "Accepted", "status": "True",
                "reason": "Ok", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}})
            .to_string(),
        ),
        merge(
            "status: condition missing required fields",
            format!("{R}/a/status"),
            json!({"status": {"conditions": [{"type": "Accepted"}]}}).to_string(),
        ),
        merge(
            "status: ManagedHost power enum",
            format!("{H}/h1/status"),
            r#"{"status": {"power": "Sideways"}}"#,
        ),
        merge(
            "status: ManagedHost power On and details map",
            format!("{H}/h1/status"),
            r#"{"status": {"power": "On", "details": {"model": "x"}, "availableOs": ["ubuntu"]}}"#,
        ),
        merge(
            "status: of a missing object",
            format!("{R}/missing/status"),
            r#"{"status": {"phase": "Queued"}}"#,
        ),
        get("status: object after status writes", format!("{R}/a")),
    ]
}

pub fn lists() -> Vec<Call> {
    let all = "/apis/osprov.io/v1alpha1/osprovisioningrequests";
    vec![
        get("list: all", R),
        get("list: kube-rs query form", format!("{R}?&limit=500")),
        get(
            "list: label equality",
            format!("{R}?labelSelector=app%3Dweb"),
        ),
        get(
            "list: label set-based",
            format!("{R}?labelSelector=app+in+(web,db),tier"),
        ),
        get("list: label not exists", format!("{R}?labelSelector=!app")),
        get(
            "list: label inequality",
            format!("{R}?labelSelector=app!%3Dweb"),
        ),
        get(
            "list: invalid label selector (in without parens)",
            format!("{R}?labelSelector=app+in+web"),
        ),
        get(
            "list: invalid label selector (two words)",
            format!("{R}?labelSelector=a+b"),
        ),
        get(
            "list: invalid label value",
            format!("{R}?labelSelector=app%3D%25%25%25"),
        ),
        get(
            "list: field metadata.name",
            format!("{R}?fieldSelector=metadata.name%3Da"),
        ),
        get(
            "list: field metadata.namespace!=",
            format!("{R}?fieldSelector=metadata.namespace!%3Dother"),
        ),
        get(
            "list: unsupported field selector on a CR",
            format!("{R}?fieldSelector=spec.host%3Dh1"),
        ),
        get(
            "list: malformed field selector",
            format!("{R}?fieldSelector=garbage"),
        ),
        get(
            "list: all namespaces with a label",
            format!("{all}?labelSelector=app%3Dweb"),
        ),
        get(
            "list: a namespace that does not exist",
            "/apis/osprov.io/v1alpha1/namespaces/no-such-ns-x/osprovisioningrequests",
        ),
        get("list: page 1", format!("{R}?limit=2")).save("cont", "/metadata/continue"),
        get("list: page 2", format!("{R}?limit=2&continue=${{cont}}"))
            .save("cont2", "/metadata/continue"),
        get(
            "list: last page",
            format!("{R}?limit=100&continue=${{cont2}}"),
        ),
        get(
            "list: bad continue token",
            format!("{R}?limit=2&continue=notatoken"),
        ),
        get("list: bad limit", format!("{R}?limit=abc")),
        get("list: negative limit", format!("{R}?limit=-1")),
        get(
            "list: bad resourceVersion",
            format!("{R}?resourceVersion=abc"),
        ),
        get(
            "list: resourceVersion=0",
            format!("{R}?resourceVersion=0&labelSelector=app%3Dweb"),
        ),
        get(
            "list: resourceVersionMatch without resourceVersion",
            format!("{R}?resourceVersionMatch=NotOlderThan"),
        ),
        get(
            "list: bad resourceVersionMatch",
            format!("{R}?resourceVersionMatch=Sometimes&resourceVersion=0"),
        ),
        get(
            "get: bad resourceVersion",
            format!("{R}/a?resourceVersion=abc"),
        ),
        get(
            "list: ManagedHosts by label",
            format!("{H}?labelSelector=rack%3Dr1"),
        ),
    ]
}

pub fn watches() -> Vec<Call> {
    let w = |q: &str| format!("{R}?watch=true&timeoutSeconds=1&resourceVersion=${{rv_w}}{q}");
    vec![
        get("watch: list before the changes", format!("{R}?limit=1"))
            .save("rv_w", "/metadata/resourceVersion"),
        post(
            "watch: create w1",
            R,
            ospr("w1", "h1", "ubuntu").to_string(),
        ),
        merge(
            "watch: label w1",
            format!("{R}/w1"),
            r#"{"metadata": {"labels": {"watch": "yes"}}}"#,
        ),
        merge(
            "watch: unlabel w1",
            format!("{R}/w1"),
            r#"{"metadata": {"labels": {"watch": null}}}"#,
        ),
        delete("watch: delete w1", format!("{R}/w1")),
        watch("watch: from a resourceVersion", w("")),
        watch(
            "watch: with a name field selector",
            w("&fieldSelector=metadata.name%3Dw1"),
        ),
        watch(
            "watch: a label selector sees ADDED then DELETED",
            w("&labelSelector=watch%3Dyes"),
        ),
        watch(
            "watch: bad resourceVersion",
            format!("{R}?watch=true&timeoutSeconds=1&resourceVersion=abc"),
        ),
        watch(
            "watch: bad label selector",
            format!("{R}?watch=true&timeoutSeconds=1&labelSelector=a+b"),
        ),
        watch(
            "watch: unsupported field selector",
            format!("{R}?watch=true&timeoutSeconds=1&fieldSelector=spec.os%3Dx"),
        ),
        watch(
            "watch: resourceVersion=0 sends the current objects",
            format!(
                "{R}?watch=true&timeoutSeconds=1&resourceVersion=0&fieldSelector=metadata.name%3Da"
            ),
        ),
    ]
}

pub fn deletes() -> Vec<Call> {
    vec![
        post(
            "delete: create with a finalizer",
            R,
            json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                   "metadata": {"name": "fin", "finalizers": ["osprov.io/test"]},
                   "spec": {"host": "h1", "os": "x"}})
            .to_string(),
        ),
        delete("delete: sets deletionTimestamp", format!("{R}/fin")),
        delete("delete: repeated delete", format!("{R}/fin")),
        get("delete: terminating object", format!("{R}/fin")),
        merge(
            "delete: adding a finalizer while terminating",
            format!("{R}/fin"),
            r#"{"metadata": {"finalizers": ["osprov.io/test", "osprov.io/other"]}}"#,
        ),
        merge(
            "delete: spec change while terminating",
            format!("{R}/fin"),
            r#"{"spec": {"os": "y"}}"#,
        ),
        post(
            "delete: create a terminating name",
            R,
            ospr("fin", "h1", "x").to_string(),
        ),
        patch(
            "delete: removing the finalizer (json patch)",
            format!("{R}/fin"),
            "application/json-patch+json",
            r#"[{"op": "test", "path": "/metadata/finalizers", "value": ["osprov.io/test"]}, {"op": "remove", "path": "/metadata/finalizers"}]"#,
        ),
        get("delete: gone after the finalizer", format!("{R}/fin")),
        delete("delete: missing object", format!("{R}/missing")),
        delete_with("delete: malformed DeleteOptions", format!("{R}/a"), "{nope"),
        delete_with(
            "delete: uid precondition mismatch",
            format!("{R}/a"),
            r#"{"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}"#,
        ),
        delete_with(
            "delete: resourceVersion precondition mismatch",
            format!("{R}/a"),
            r#"{"preconditions": {"resourceVersion": "${rv_a1}"}}"#,
        ),
        delete_with(
            "delete: bad propagationPolicy",
            format!("{R}/a"),
            r#"{"propagationPolicy": "Sometimes"}"#,
        ),
        delete_with("delete: dryRun", format!("{R}/a"), r#"{"dryRun": ["All"]}"#),
        delete_with(
            "delete: background propagation",
            format!("{R}/pruned"),
            r#"{"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}"#,
        ),
        delete(
            "deletecollection: by label",
            format!("{R}?labelSelector=via%3Dyaml"),
        ),
        get("deletecollection: what is left", R),
    ]
}
