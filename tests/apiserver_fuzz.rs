//! Hostile input to the embedded API (issue 13): a seeded property-based generator (proptest)
//! sends 10,000 requests over HTTP — wrong JSON types, arrays where objects belong, deep and huge
//! documents, invalid UTF-8, patches of every type with wrong shapes, bad selectors,
//! resourceVersions, content types and names — plus a corpus of hand-picked cases. Every answer
//! must be a 4xx `Status` with a reason, or a 2xx; never a 5xx, never a dropped connection; and a
//! refused write must leave the object it aimed at unchanged. The seed is printed (set
//! `OSPROV_FUZZ_SEED` to replay, `OSPROV_FUZZ_CASES` to change the count).
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

const NS: &str = "default";
const REQUESTS: &str = "/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests";

/// One generated request.
#[derive(Clone)]
struct Case {
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        write!(
            f,
            "{} {} ({}, {} bytes: {shown:?})",
            self.method,
            self.path,
            self.content_type,
            self.body.len()
        )
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::from("x".repeat(70_000))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z$.]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request-shaped document with one part replaced by something hostile.
fn request_doc() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just(json!("sentinel")),
        Just(json!("fuzz-ok")),
        "[a-z0-9.-]{0,300}".prop_map(Value::from),
        json_value(),
    ];
    (name, json_value(), json_value(), 0..6u8).prop_map(|(name, spec, other, shape)| {
        let mut doc = json!({
            "apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
            "metadata": {"name": name},
            "spec": {"host": "h1", "os": "debian-12"}
        });
        match shape {
            0 => doc["spec"] = spec,
            1 => doc["metadata"] = other,
            2 => doc["metadata"]["labels"] = other,
            3 => doc["metadata"]["resourceVersion"] = other,
            4 => doc["status"] = other,
            _ => doc = other,
        }
        doc
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => request_doc().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..20_000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        1 => Just(b"{\"metadata\": {\"name\": \"\xff\xfe\"}}".to_vec()),
        1 => Just(Vec::new()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let query = prop_oneof![
        Just(String::new()),
        "[a-zA-Z=!,()&%]{0,24}".prop_map(|s| format!("?labelSelector={s}")),
        "[a-zA-Z.=!,&%]{0,24}".prop_map(|s| format!("?fieldSelector={s}")),
        "[0-9a-z-]{0,12}".prop_map(|s| format!("?resourceVersion={s}&resourceVersionMatch=Exact")),
        "[0-9a-z-]{0,8}".prop_map(|s| format!("?limit={s}&continue=%ZZ{s}")),
        Just("?dryRun=All&fieldManager=".into()),
        "[a-z]{0,8}".prop_map(|s| format!("?fieldValidation={s}")),
        Just("?timeoutSeconds=-1&watch=maybe".into()),
    ];
    let target = prop_oneof![
        Just(REQUESTS.to_string()),
        Just(format!("{REQUESTS}/sentinel")),
        Just(format!("{REQUESTS}/sentinel/status")),
        Just(format!("{REQUESTS}/fuzz-ok")),
        "[a-zA-Z0-9%.-]{0,80}".prop_map(|n| format!("{REQUESTS}/{n}")),
        Just(format!("/api/v1/namespaces/{NS}/secrets")),
        Just(format!("/api/v1/namespaces/{NS}/events")),
        Just("/api/v1/namespaces".into()),
        Just(format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        )),
        Just("/apis/osprov.io/v1alpha1/osdispatchers".into()),
        "/[a-z/%.]{0,40}".prop_map(|p| p),
    ];
    (target, query).prop_map(|(t, q)| format!("{t}{q}"))
}

fn case() -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE")
    ];
    let content_type = prop_oneof![
        Just("application/json"),
        Just("application/merge-patch+json"),
        Just("application/strategic-merge-patch+json"),
        Just("application/json-patch+json"),
        Just("application/apply-patch+yaml"),
        Just("application/yaml"),
        Just("application/vnd.kubernetes.protobuf"),
        Just("text/plain"),
        Just("application/json; charset=utf-16"),
    ];
    (method, path(), content_type, body()).prop_map(|(method, path, content_type, body)| Case {
        method,
        path,
        content_type,
        body,
    })
}

/// Hand-picked cases: each once.
fn corpus() -> Vec<Case> {
    let c = |method, path: &str, content_type, body: &[u8]| Case {
        method,
        path: path.to_string(),
        content_type,
        body: body.to_vec(),
    };
    let item = format!("{REQUESTS}/sentinel");
    vec![
        c("PATCH", &item, "application/json-patch+json", br#"{"op":"add"}"#),
        c("PATCH", &item, "application/json-patch+json", br#"[{"op":"move","from":"/nope","path":"/spec"}]"#),
        c("PATCH", &item, "application/json-patch+json", br#"[{"op":"replace","path":"/metadata/uid","value":7}]"#),
        c("PATCH", &item, "application/json-patch+json", br#"[{"op":"test","path":"/spec/os","value":"x"}]"#),
        c("PATCH", &item, "application/merge-patch+json", br#"[1,2,3]"#),
        c("PATCH", &item, "application/merge-patch+json", br#"{"metadata":{"name":"other"}}"#),
        c("PATCH", &item, "application/apply-patch+yaml", b"- a\n- b\n"),
        c("PATCH", &item, "application/apply-patch+yaml", b"{apiVersion: osprov.io/v1alpha1, kind: OSProvisioningRequest}"),
        c("PATCH", &format!("{item}?fieldManager=fuzz"), "application/apply-patch+yaml", b"apiVersion: v1\nkind: Secret\n"),
        c("PATCH", &item, "application/strategic-merge-patch+json", br#"{"spec":null}"#),
        c("PUT", &item, "application/json", br#"{"apiVersion":"osprov.io/v1alpha1","kind":"OSProvisioningRequest","metadata":{"name":"sentinel","resourceVersion":"1"},"spec":{"host":"h2","os":"x"}}"#),
        c("PUT", &format!("{item}/status"), "application/json", br#"{"status":"done"}"#),
        c("POST", REQUESTS, "application/json", br#"{"metadata":{"name":"a","generateName":7}}"#),
        c("POST", REQUESTS, "application/json", br#"{"apiVersion":"osprov.io/v1alpha1","kind":"OSProvisioningRequest","metadata":{"name":"a"},"spec":{"host":"h","os":"o","maxAttempts":"3"}}"#),
        c("POST", REQUESTS, "application/json", &[b'{'; 200_000]),
        c("POST", REQUESTS, "application/json", &vec![b' '; 4 << 20]),
        c("GET", &format!("{REQUESTS}?labelSelector=a+in+(b"), "application/json", b""),
        c("GET", &format!("{REQUESTS}?fieldSelector=spec.host%3D%3D"), "application/json", b""),
        c("GET", &format!("{REQUESTS}?resourceVersion=abc&resourceVersionMatch=NotOlderThan"), "application/json", b""),
        c("GET", &format!("{REQUESTS}?limit=-5"), "application/json", b""),
        c("GET", &format!("{REQUESTS}?watch=1&resourceVersion=zz&timeoutSeconds=1"), "application/json", b""),
        c("DELETE", &item, "application/json", br#"{"preconditions":{"uid":5}}"#),
        c("DELETE", &item, "application/json", br#"{"propagationPolicy":"Sometimes"}"#),
        c("DELETE", REQUESTS, "application/json", b"[]"),
        c("POST", "/api/v1/namespaces", "application/json", br#"{"metadata":{"name":"UPPER"}}"#),
        c("PATCH", &format!("{item}?fieldManager=fuzz"), "application/apply-patch+yaml", "[".repeat(100_000).as_bytes()),
        c("PATCH", &format!("{item}?fieldManager=fuzz"), "application/apply-patch+yaml", "a: ".repeat(50_000).as_bytes()),
        // Deep flow nesting just under the body limit: libyaml alone took minutes on this.
        c("PATCH", &format!("{item}?fieldManager=fuzz"), "application/apply-patch+yaml", "{a: ".repeat(750_000).as_bytes()),
        c("POST", REQUESTS, "application/yaml", "[".repeat(3_000_000).as_bytes()),
        c("PATCH", &item, "application/merge-patch+json", format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).as_bytes()),
        c("POST", &format!("/api/v1/namespaces/{NS}/secrets"), "application/vnd.kubernetes.protobuf", b"k8s\x00\x0a\xff\xff\xff\xff\x0f"),
        c("POST", &format!("/api/v1/namespaces/{NS}/secrets"), "application/vnd.kubernetes.protobuf", b"k8s\x00"),
        c("POST", "/api/v1/namespaces", "application/vnd.kubernetes.protobuf", &[0xff; 64]),
        c("PUT", &format!("/api/v1/namespaces/{NS}/secrets/s"), "application/vnd.kubernetes.protobuf", b"k8s\x00\x12\x02\x0a"),
        c("POST", &format!("/api/v1/namespaces/{NS}/secrets"), "application/json", br#"{"metadata":{"name":"s"},"data":{"k":"not base64!"}}"#),
    ]
}

async fn send(http: &reqwest::Client, base: &str, token: &str, c: &Case) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let resp = http
        .request(method, format!("{base}{}", c.path))
        .bearer_auth(token)
        .header("content-type", c.content_type)
        .body(c.body.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer for {c:?}: {}", error_chain(&e)));
    let status = resp.status().as_u16();
    let is_watch = c.path.contains("watch=");
    let body = if is_watch && status < 300 {
        Value::Null
    } else {
        let bytes = resp.bytes().await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, body)
}

/// An error with its sources (reqwest's own text hides whether it was a timeout or a reset).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(&format!(": {s}"));
        cur = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_4xx_status_and_change_nothing() {
    let server = osprov::apiserver::serve(osprov::apiserver::Config::new(osprov::api::crds()))
        .await
        .expect("embedded API");
    let base = server.server_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).expect("kubeconfig");
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(&kc).expect("read")).expect("yaml");
    let token = doc["users"][0]["user"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    // Generous: CI shares 2 cores with other builds; a timeout is still a failure.
    let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(ca) = server.ca_pem() {
        http = http.add_root_certificate(
            reqwest::Certificate::from_pem(ca.as_bytes()).expect("the server's CA"),
        );
    }
    let http = http.build().expect("http");
    let sentinel = json!({
        "apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
        "metadata": {"name": "sentinel", "labels": {"keep": "me"}},
        "spec": {"host": "h1", "os": "debian-12"}
    });
    let create = Case {
        method: "POST",
        path: REQUESTS.into(),
        content_type: "application/json",
        body: serde_json::to_vec(&sentinel).expect("json"),
    };
    assert_eq!(send(&http, &base, &token, &create).await.0, 201);
    let read = Case {
        method: "GET",
        path: format!("{REQUESTS}/sentinel"),
        content_type: "application/json",
        body: Vec::new(),
    };

    let seed: u64 = std::env::var("OSPROV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("OSPROV_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!("fuzz seed {seed} ({cases} cases; OSPROV_FUZZ_SEED={seed} replays)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        PropConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = case();
    let mut all = corpus();
    for _ in 0..cases.saturating_sub(all.len()) {
        all.push(strategy.new_tree(&mut runner).expect("case").current());
    }
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let mut slowest: Option<(std::time::Duration, String)> = None;
    for c in &all {
        let mut before = Value::Null;
        if c.method != "GET" {
            before = send(&http, &base, &token, &read).await.1;
            if before["metadata"]["name"] != "sentinel" {
                // A generated request may legitimately have deleted the sentinel: put it back.
                assert_eq!(send(&http, &base, &token, &create).await.0, 201);
                before = send(&http, &base, &token, &read).await.1;
            }
        }
        let started = std::time::Instant::now();
        let (status, body) = send(&http, &base, &token, c).await;
        let took = started.elapsed();
        if slowest.as_ref().is_none_or(|(t, _)| took > *t) {
            slowest = Some((took, format!("{c:?}")));
        }
        *counts.entry(status).or_default() += 1;
        assert!(
            status < 500,
            "HTTP {status} for {c:?} (seed {seed}): {body}"
        );
        if status >= 400 {
            assert_eq!(
                body["kind"], "Status",
                "HTTP {status} without a Status for {c:?}: {body}"
            );
            assert!(
                body["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "HTTP {status} without a reason for {c:?}: {body}"
            );
            if c.method != "GET" {
                let after = send(&http, &base, &token, &read).await.1;
                assert_eq!(
                    before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
                    "a refused {c:?} changed the sentinel (seed {seed})"
                );
            }
        }
    }
    println!("answers by status: {counts:?}");
    if let Some((took, case)) = slowest {
        println!("slowest answer: {took:?} for {case}");
    }
    server.shutdown().await;
}
