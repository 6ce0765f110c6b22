//! Differential fidelity test: the same corpus of raw API calls goes to the embedded API and to a
//! real kube-apiserver (v1.36, from `tests/cluster/real.rs`), and the answers are compared after
//! normalisation (see `fidelity/normalise.rs` for exactly what is compared and what is not).
//!
//! The test prints `N/M calls answered as kube-apiserver answers` and every difference. It passes
//! only when every difference is listed in [`ALLOWED`] with the reason it is accepted, and when
//! the embedded API never answered 500.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod support;

mod fidelity {
    pub mod builtins;
    pub mod call;
    pub mod edges;
    pub mod normalise;
    pub mod reads;
    pub mod writes;
}

use std::collections::HashMap;

use cluster::{Backend, TestCluster};
use fidelity::call::{send, Answer, Call};
use fidelity::normalise::normalise;
use serde_json::Value;

/// Differences that are known and accepted, by call name, with the reason. Keep this list in
/// sync with the table in `docs/embedded-api.md` ("How close it is to kube-apiserver").
const ALLOWED: &[(&str, &str)] = &[
    (
        "put: change uid",
        "kube-apiserver 1.36 answers 409 Conflict (the body's uid acts as a precondition); the embedded API answers 422 Invalid (metadata.uid: field is immutable), as k8s-api-fidelity.md A3 and tests/apiserver_crud.rs require",
    ),
    (
        "get: unknown resource in a known group",
        "kube-apiserver's mux answers unknown /apis paths with a plain-text \"404 page not found\"; the embedded API answers a NotFound Status (same code; §F of k8s-api-fidelity.md and tests/apiserver_crud.rs require a Status)",
    ),
    (
        "get: unknown group",
        "as above: a plain-text 404 from kube-apiserver, a NotFound Status from the embedded API",
    ),
    (
        "get: unknown version",
        "as above: a plain-text 404 from kube-apiserver, a NotFound Status from the embedded API",
    ),
    (
        "get: cluster-scoped path of a namespaced kind",
        "as above: a plain-text 404 from kube-apiserver, a NotFound Status from the embedded API",
    ),
    (
        "put: malformed resourceVersion",
        "kube-apiserver answers 500 InternalError for a non-numeric metadata.resourceVersion; the embedded API answers 400 BadRequest (a client error, and it must never answer 500)",
    ),
    (
        "get: bad resourceVersion",
        "kube-apiserver answers 500 for GET ?resourceVersion=abc; the embedded API answers 400 BadRequest, as kube-apiserver itself does for a LIST",
    ),
    (
        "watch: bad resourceVersion",
        "kube-apiserver answers 500 for WATCH ?resourceVersion=abc; the embedded API answers 400 BadRequest, as kube-apiserver itself does for a LIST",
    ),
];

fn corpus() -> Vec<Call> {
    use fidelity::*;
    let mut calls = Vec::new();
    calls.extend(writes::creates());
    calls.extend(writes::updates());
    calls.extend(writes::patches());
    calls.extend(reads::status());
    calls.extend(reads::lists());
    calls.extend(reads::watches());
    calls.extend(reads::deletes());
    calls.extend(builtins::secrets());
    calls.extend(builtins::leases());
    calls.extend(builtins::events());
    calls.extend(builtins::namespaces());
    calls.extend(edges::edges());
    calls
}

async fn run(c: &TestCluster, calls: &[Call]) -> Vec<Answer> {
    let mut vars = HashMap::from([("ns".to_string(), c.ns.clone())]);
    let mut out = Vec::new();
    for call in calls {
        out.push(send(&c.client, call, &mut vars).await);
    }
    out
}

fn message(a: &Answer) -> String {
    match a.body.get("message").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => "-".to_string(),
    }
}

fn compact(v: Option<&Value>) -> String {
    fidelity::normalise::compact(v, 300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_api_answers_like_kube_apiserver() {
    let calls = corpus();
    let names: std::collections::HashSet<&str> = calls.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), calls.len(), "call names must be unique");
    for (name, _) in ALLOWED {
        assert!(
            names.contains(name),
            "allow-list names an unknown call: {name}"
        );
    }

    let embedded = TestCluster::start(Backend::Embedded).await;
    let real = TestCluster::start(Backend::Real).await;
    let ours = run(&embedded, &calls).await;
    let theirs = run(&real, &calls).await;

    // FIDELITY_DUMP=<part of a call name> prints both raw answers of the matching calls.
    if let Ok(want) = std::env::var("FIDELITY_DUMP") {
        for ((call, o), t) in calls.iter().zip(&ours).zip(&theirs) {
            if call.name.contains(&want) {
                println!(
                    "{}\n  embedded {} {}\n  real     {} {}",
                    call.name, o.code, o.body, t.code, t.body
                );
            }
        }
    }
    let mut same = 0;
    let mut unexpected = Vec::new();
    let mut allowed_seen = Vec::new();
    let mut errors_500 = Vec::new();
    for ((call, o), t) in calls.iter().zip(&ours).zip(&theirs) {
        if o.code >= 500 || o.code == 0 {
            errors_500.push(format!(
                "{}: {} {}",
                call.name,
                o.code,
                compact(Some(&o.body))
            ));
        }
        let no = normalise(o.code, &o.body, call.watch, &embedded.ns);
        let nt = normalise(t.code, &t.body, call.watch, &real.ns);
        if no == nt {
            same += 1;
            continue;
        }
        let mut paths = Vec::new();
        fidelity::normalise::diff(&no, &nt, "", 300, &mut paths);
        let shown: Vec<String> = paths.iter().take(8).cloned().collect();
        let text = format!(
            "- {} [{} {}]\n    {}\n    embedded message: {}\n    real message:     {}",
            call.name,
            call.method,
            call.path,
            shown.join("\n    "),
            message(o),
            message(t)
        );
        match ALLOWED.iter().find(|(n, _)| *n == call.name) {
            Some((_, why)) => allowed_seen.push(format!("{text}\n    allowed: {why}")),
            None => unexpected.push(text),
        }
    }
    println!(
        "\n{same}/{} calls answered as kube-apiserver answers",
        calls.len()
    );
    if !allowed_seen.is_empty() {
        println!("\nallowed differences:\n{}", allowed_seen.join("\n"));
    }
    let stale: Vec<&str> = ALLOWED
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| {
            !allowed_seen
                .iter()
                .any(|t| t.starts_with(&format!("- {n} [")))
        })
        .collect();
    if !stale.is_empty() {
        println!("\nallow-list entries that now match (remove them): {stale:?}");
    }
    if !unexpected.is_empty() {
        println!("\ndifferences:\n{}", unexpected.join("\n"));
    }
    assert!(
        errors_500.is_empty(),
        "the embedded API answered 5xx or not at all:\n{}",
        errors_500.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "{} differences are neither fixed nor allow-listed (see above)",
        unexpected.len()
    );
    // The allow-list (and the table in docs/embedded-api.md) must not outlive a fix.
    assert!(
        stale.is_empty(),
        "allow-list entries that now match kube-apiserver (remove them, and from docs/embedded-api.md): {stale:?}"
    );
}
