//! The corpus, part three: the built-in kinds (Namespaces, Secrets, Leases, both Event views).
use serde_json::json;

use super::call::*;

pub const S: &str = "/api/v1/namespaces/${ns}/secrets";
const L: &str = "/apis/coordination.k8s.io/v1/namespaces/${ns}/leases";
const E1: &str = "/api/v1/namespaces/${ns}/events";
const E2: &str = "/apis/events.k8s.io/v1/namespaces/${ns}/events";

pub fn secrets() -> Vec<Call> {
    let secret = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "stringData": {"user": "admin"}, "data": {"pw": "aHVudGVyMg=="}})
    };
    vec![
        post("secret: stringData", S, secret("s1").to_string())
            .save("rv_s1", "/metadata/resourceVersion"),
        get("secret: get", format!("{S}/s1")),
        post(
            "secret: data not base64",
            S,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"},
                   "data": {"pw": "not base64!"}})
            .to_string(),
        ),
        put(
            "secret: change type",
            format!("{S}/s1"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "s1", "resourceVersion": "${rv_s1}"},
                   "type": "kubernetes.io/basic-auth", "data": {"username": "YQ=="}})
            .to_string(),
        ),
        put(
            "secret: PUT without resourceVersion (unconditional for built-ins)",
            format!("{S}/s1"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
                   "data": {"pw": "eA=="}})
            .to_string(),
        ),
        merge(
            "secret: merge stringData",
            format!("{S}/s1"),
            r#"{"stringData": {"extra": "v"}}"#,
        ),
        post(
            "secret: immutable",
            S,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
                   "immutable": true, "data": {"a": "YQ=="}})
            .to_string(),
        ),
        merge(
            "secret: change data of an immutable secret",
            format!("{S}/s3"),
            r#"{"data": {"a": "Yg=="}}"#,
        ),
        post(
            "secret: invalid data key",
            S,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s4"},
                   "data": {"bad key": "YQ=="}})
            .to_string(),
        ),
        get(
            "secret: list by type field selector",
            format!("{S}?fieldSelector=type%3DOpaque"),
        ),
        delete("secret: delete", format!("{S}/s3")),
    ]
}

pub fn leases() -> Vec<Call> {
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                 "acquireTime": "2024-01-01T00:00:00.123456Z",
                 "renewTime": "2024-01-01T00:00:05.000001Z", "leaseTransitions": 0}});
    vec![
        post("lease: create (MicroTime)", L, lease.to_string()),
        get("lease: get", format!("{L}/leader")),
        merge(
            "lease: renew",
            format!("{L}/leader"),
            r#"{"spec": {"renewTime": "2024-01-01T00:00:10.500000Z"}}"#,
        ),
        patch(
            "lease: apply takeover",
            format!("{L}/leader?fieldManager=pod-b&force=true"),
            "application/apply-patch+yaml",
            r#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"holderIdentity": "pod-b", "leaseTransitions": 1}}"#,
        ),
        post(
            "lease: negative duration",
            L,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "neg"}, "spec": {"leaseDurationSeconds": -1}})
            .to_string(),
        ),
        post(
            "lease: wrong type",
            L,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "wt"}, "spec": {"leaseDurationSeconds": "long"}})
            .to_string(),
        ),
        put(
            "lease: PUT without resourceVersion",
            format!("{L}/leader"),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "leader"}, "spec": {"holderIdentity": "pod-c"}})
            .to_string(),
        ),
        patch(
            "lease: strategic merge (built-in)",
            format!("{L}/leader"),
            "application/strategic-merge-patch+json",
            r#"{"spec": {"holderIdentity": "pod-d"}}"#,
        ),
    ]
}

pub fn events() -> Vec<Call> {
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "ev1"},
        "eventTime": "2024-01-01T00:00:00.000000Z",
        "regarding": {"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                      "name": "a", "namespace": "${ns}"},
        "reportingController": "osprov.io/osp", "reportingInstance": "osp-0",
        "action": "Queued", "reason": "HostBusy", "note": "waiting", "type": "Normal"});
    vec![
        post("event: events.k8s.io create", E2, ev.to_string()),
        get("event: core view of it", format!("{E1}/ev1")),
        get(
            "event: core list by involvedObject",
            format!("{E1}?fieldSelector=involvedObject.name%3Da,involvedObject.kind%3DOSProvisioningRequest"),
        ),
        get(
            "event: events.k8s.io list by regarding",
            format!("{E2}?fieldSelector=regarding.name%3Da"),
        ),
        merge(
            "event: series patch",
            format!("{E2}/ev1"),
            r#"{"series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:30.000000Z"}}"#,
        ),
        post(
            "event: events.k8s.io missing required fields",
            E2,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                   "metadata": {"name": "ev2"}, "note": "x"})
            .to_string(),
        ),
        post(
            "event: core create",
            E1,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev3"},
                   "involvedObject": {"kind": "ManagedHost", "name": "h1", "namespace": "${ns}"},
                   "reason": "Seen", "message": "hello", "type": "Warning",
                   "source": {"component": "osprov"},
                   "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:00Z",
                   "count": 1})
            .to_string(),
        ),
        get("event: events.k8s.io view of a core event", format!("{E2}/ev3")),
        get(
            "event: core list by type",
            format!("{E1}?fieldSelector=type%3DWarning"),
        ),
        get(
            "event: unsupported field selector",
            format!("{E1}?fieldSelector=note%3Dx"),
        ),
    ]
}

pub fn namespaces() -> Vec<Call> {
    vec![
        get("namespace: get", "/api/v1/namespaces/${ns}"),
        get("namespace: missing", "/api/v1/namespaces/no-such-ns-x"),
        post(
            "namespace: invalid name",
            "/api/v1/namespaces",
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Not.A.Label"}}"#,
        ),
        delete(
            "namespace: delete kube-system",
            "/api/v1/namespaces/kube-system?dryRun=All",
        ),
        get(
            "namespace: list by name",
            "/api/v1/namespaces?fieldSelector=metadata.name%3D${ns}",
        ),
    ]
}
