//! The generator of the differential fuzzer: seeded `proptest` strategies that mutate valid
//! objects and queries of every kind the embedded API serves into requests, as data
//! ([`Case`]), so one case can be sent to two servers, printed, and shrunk.
//!
//! A case names one object (`fz-<n>`). Verbs that need it existing (get, replace, patch,
//! delete, list) start from the same valid object, created first on both servers; a create
//! sends the mutated object itself.
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// One kind the embedded API serves, with a valid object of it.
pub struct Kind {
    /// The collection path; `${ns}` is the backend's namespace.
    pub path: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The valid object's body without apiVersion, kind and metadata.
    pub fields: fn() -> Value,
    /// JSON pointers (below the root) whose values the mutations replace.
    pub pointers: &'static [&'static str],
}

pub const KINDS: &[Kind] = &[
    Kind {
        path: "/apis/osprov.io/v1alpha1/namespaces/${ns}/osprovisioningrequests",
        api_version: "osprov.io/v1alpha1",
        kind: "OSProvisioningRequest",
        fields: || json!({"spec": {"host": "h1", "os": "ubuntu", "maxAttempts": 2}}),
        pointers: &[
            "/spec",
            "/spec/host",
            "/spec/os",
            "/spec/maxAttempts",
            "/status",
        ],
    },
    Kind {
        path: "/apis/osprov.io/v1alpha1/namespaces/${ns}/managedhosts",
        api_version: "osprov.io/v1alpha1",
        kind: "ManagedHost",
        fields: || json!({"spec": {"backendId": "b-1", "dispatcher": "d1"}}),
        pointers: &["/spec", "/spec/backendId", "/spec/dispatcher"],
    },
    Kind {
        path: "/apis/osprov.io/v1alpha1/namespaces/${ns}/osdispatchers",
        api_version: "osprov.io/v1alpha1",
        kind: "OSDispatcher",
        fields: || json!({"spec": {"adapter": "simulator"}}),
        pointers: &["/spec", "/spec/adapter", "/spec/lookupInterval"],
    },
    Kind {
        path: "/api/v1/namespaces/${ns}/secrets",
        api_version: "v1",
        kind: "Secret",
        fields: || json!({"type": "Opaque", "data": {"pw": "aHVudGVyMg=="}, "stringData": {"user": "admin"}}),
        pointers: &["/data", "/data/pw", "/stringData", "/type", "/immutable"],
    },
    Kind {
        path: "/apis/coordination.k8s.io/v1/namespaces/${ns}/leases",
        api_version: "coordination.k8s.io/v1",
        kind: "Lease",
        fields: || {
            json!({"spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                            "renewTime": "2024-01-01T00:00:05.000001Z", "leaseTransitions": 0}})
        },
        pointers: &[
            "/spec",
            "/spec/holderIdentity",
            "/spec/leaseDurationSeconds",
            "/spec/renewTime",
            "/spec/leaseTransitions",
        ],
    },
    Kind {
        path: "/apis/events.k8s.io/v1/namespaces/${ns}/events",
        api_version: "events.k8s.io/v1",
        kind: "Event",
        fields: || {
            json!({"eventTime": "2024-01-01T00:00:00.000000Z",
                   "regarding": {"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
                                 "name": "a", "namespace": "${ns}"},
                   "reportingController": "osprov.io/osp", "reportingInstance": "osp-0",
                   "action": "Queued", "reason": "HostBusy", "note": "waiting", "type": "Normal"})
        },
        pointers: &[
            "/note",
            "/type",
            "/reason",
            "/regarding",
            "/eventTime",
            "/series",
        ],
    },
    Kind {
        path: "/api/v1/namespaces/${ns}/events",
        api_version: "v1",
        kind: "Event",
        fields: || {
            json!({"involvedObject": {"kind": "OSProvisioningRequest", "name": "a",
                                      "namespace": "${ns}"},
                   "reason": "HostBusy", "message": "waiting", "type": "Normal", "count": 1,
                   "source": {"component": "osprov"}})
        },
        pointers: &["/message", "/type", "/count", "/involvedObject", "/source"],
    },
    Kind {
        path: "/api/v1/namespaces",
        api_version: "v1",
        kind: "Namespace",
        fields: || json!({}),
        pointers: &["/spec", "/spec/finalizers", "/status"],
    },
];

/// What the call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    Create,
    Replace,
    /// A patch with this content type.
    Patch(&'static str),
    Get,
    Delete,
    List,
}

/// One change to a document: set the value at a pointer (creating the parent's member), or
/// remove it.
#[derive(Clone, Debug)]
pub enum Mutation {
    Set(String, Value),
    Remove(String),
}

/// One generated request.
#[derive(Clone, Debug)]
pub struct Case {
    pub kind: usize,
    pub verb: Verb,
    pub mutations: Vec<Mutation>,
    pub query: Vec<(&'static str, String)>,
    pub accept: Option<&'static str>,
    /// The content type sent instead of the verb's own.
    pub content_type: Option<&'static str>,
}

const PATCHES: &[&str] = &[
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn verb() -> impl Strategy<Value = Verb> {
    prop_oneof![
        3 => Just(Verb::Create),
        2 => Just(Verb::Replace),
        4 => prop::sample::select(PATCHES).prop_map(Verb::Patch),
        1 => Just(Verb::Get),
        1 => Just(Verb::Delete),
        1 => Just(Verb::List),
    ]
}

/// Strings that sit on or just past a validation rule.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "a",
            "A",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a..b",
            "a/b",
            "example.com/a",
            "Example.COM/a",
            "a b",
            "ü",
            "a\u{0}b",
            "kubernetes.io/x",
            "0",
            "true",
            "null",
            "a/b/c",
            "/a",
            "a/",
            "*",
            "a=b",
            "a,b",
        ])
        .prop_map(str::to_string),
        (62usize..66, prop::sample::select(vec!["a", "A", "-", "."]))
            .prop_map(|(n, c)| c.repeat(n)),
        (250usize..256).prop_map(|n| "a".repeat(n)),
        "[a-z0-9.-]{1,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            -1,
            1,
            2,
            63,
            64,
            i64::from(i32::MAX) + 1,
            i64::MIN
        ])
        .prop_map(Value::from),
        Just(json!(1.5)),
        tricky().prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(tricky(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn string_map() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(tricky(), tricky(), 1..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect()))
}

fn metadata_mutation() -> impl Strategy<Value = Mutation> {
    let set = |p: &'static str, s: BoxedStrategy<Value>| {
        s.prop_map(move |v| Mutation::Set(p.to_string(), v))
    };
    prop_oneof![
        3 => set("/metadata/labels", string_map().boxed()),
        2 => set("/metadata/annotations", string_map().boxed()),
        1 => set("/metadata/annotations", (262_000usize..262_200)
            .prop_map(|n| json!({"big": "x".repeat(n)})).boxed()),
        2 => set("/metadata/name", tricky().prop_map(Value::from).boxed()),
        1 => set("/metadata/namespace", tricky().prop_map(Value::from).boxed()),
        1 => set("/metadata/generateName", tricky().prop_map(Value::from).boxed()),
        1 => set("/metadata/finalizers", prop::collection::vec(tricky(), 0..3)
            .prop_map(|f| json!(f)).boxed()),
        2 => prop::sample::select(vec![
            "/metadata/labels", "/metadata/annotations", "/metadata/finalizers",
            "/metadata/ownerReferences", "/metadata/name", "/metadata/resourceVersion",
            "/metadata/uid", "/metadata/generation", "/metadata/creationTimestamp",
        ])
        .prop_flat_map(|p| json_value().prop_map(move |v| Mutation::Set(p.to_string(), v))),
    ]
}

fn mutation(kind: usize) -> impl Strategy<Value = Mutation> {
    let pointers = KINDS[kind].pointers;
    prop_oneof![
        4 => metadata_mutation(),
        3 => (prop::sample::select(pointers), json_value())
            .prop_map(|(p, v)| Mutation::Set(p.to_string(), v)),
        1 => (prop::sample::select(pointers), tricky())
            .prop_map(|(p, s)| Mutation::Set(format!("{p}/{s}"), json!("x"))),
        2 => prop::sample::select(vec!["/apiVersion", "/kind", "/metadata", "/metadata/name"])
            .prop_map(|p| Mutation::Remove(p.to_string())),
        1 => (prop::sample::select(vec!["/apiVersion", "/kind"]), json_value())
            .prop_map(|(p, v)| Mutation::Set(p.to_string(), v)),
        1 => prop::sample::select(pointers).prop_map(|p| Mutation::Remove(p.to_string())),
        1 => (tricky(), json_value()).prop_map(|(k, v)| Mutation::Set(format!("/{k}"), v)),
    ]
}

fn query_param() -> impl Strategy<Value = (&'static str, String)> {
    let odd = |names: Vec<&'static str>, values: Vec<&'static str>| {
        (prop::sample::select(names), prop::sample::select(values))
            .prop_map(|(n, v)| (n, v.to_string()))
    };
    prop_oneof![
        odd(vec!["dryRun"], vec!["All", "all", "bogus", ""]),
        odd(
            vec!["fieldValidation"],
            vec!["Strict", "Warn", "Ignore", "bogus", ""]
        ),
        odd(vec!["fieldManager"], vec!["fuzz", "", "a\u{7f}"]),
        (128usize..130).prop_map(|n| ("fieldManager", "m".repeat(n))),
        odd(vec!["pretty"], vec!["true", "1", "bogus"]),
        odd(vec!["timeoutSeconds"], vec!["1", "0", "-1", "abc", "1.5"]),
        odd(
            vec!["propagationPolicy"],
            vec!["Foreground", "Background", "Orphan", "bogus"]
        ),
        odd(vec!["gracePeriodSeconds"], vec!["0", "-1", "abc", "30"]),
        odd(vec!["force"], vec!["true", "false", "bogus"]),
        odd(
            vec!["labelSelector"],
            vec!["a=b", "a in (b)", "!a", "a==", "=b", "a!=b,c"]
        ),
        odd(
            vec!["fieldSelector"],
            vec!["metadata.name=x", "spec.host=h1", "a", "metadata.name!=x"]
        ),
        odd(vec!["limit"], vec!["1", "0", "-1", "abc"]),
        odd(vec!["resourceVersion"], vec!["0", "", "abc", "1"]),
        odd(
            vec!["resourceVersionMatch"],
            vec!["NotOlderThan", "Exact", "bogus"]
        ),
        odd(vec!["orphanDependents"], vec!["true", "false", "bogus"]),
    ]
}

fn accept() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(vec![
            "application/json", "*/*", "application/*", "application/yaml", "text/plain",
            "application/garbage", "application/json;as=Table;v=v1;g=meta.k8s.io",
            "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
            "application/json, */*", "",
        ])
        .prop_map(Some),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(None),
        1 => prop::sample::select(vec![
            "application/json", "application/yaml", "application/json; charset=utf-8",
            "text/plain", "application/merge-patch+json", "application/json-patch+json",
            "application/apply-patch+yaml", "application/x-www-form-urlencoded", "",
        ])
        .prop_map(Some),
    ]
}

/// Every generated case.
pub fn case() -> impl Strategy<Value = Case> {
    (0..KINDS.len()).prop_flat_map(|kind| {
        (
            verb(),
            prop::collection::vec(mutation(kind), 0..3),
            prop::collection::vec(query_param(), 0..3),
            accept(),
            content_type(),
        )
            .prop_map(move |(verb, mutations, query, accept, content_type)| Case {
                kind,
                verb,
                mutations,
                query,
                accept,
                content_type,
            })
    })
}

/// Applies `m` to `doc`; a pointer whose parent is missing or not an object changes nothing.
pub fn apply(doc: &mut Value, m: &Mutation) {
    let (pointer, value) = match m {
        Mutation::Set(p, v) => (p.as_str(), Some(v.clone())),
        Mutation::Remove(p) => (p.as_str(), None),
    };
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let parent = if parent.is_empty() {
        Some(&mut *doc)
    } else {
        doc.pointer_mut(parent)
    };
    if let Some(Value::Object(o)) = parent {
        match value {
            Some(v) => {
                o.insert(last.to_string(), v);
            }
            None => {
                o.remove(last);
            }
        }
    }
}

/// The valid object of `kind` named `name`, labelled with the case.
pub fn valid(kind: &Kind, name: &str) -> Value {
    let mut v = (kind.fields)();
    let o = v.as_object_mut().expect("fields are an object");
    o.insert("apiVersion".into(), json!(kind.api_version));
    o.insert("kind".into(), json!(kind.kind));
    o.insert(
        "metadata".into(),
        json!({"name": name, "labels": {"fuzz-case": name}}),
    );
    v
}
