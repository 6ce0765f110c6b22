//! The workspace's layers, as `cargo metadata` sees them: each crate depends on exactly the
//! layers below it, the engine and the API types have no Kubernetes client, and the adapters
//! know nothing of the controller. A new edge between workspace crates (an adapter importing the
//! controller, the engine importing an adapter) fails here before anyone has to notice it in
//! review — the compiler then enforces the rest.
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Workspace crate → the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("osprov-api", &[]),
    ("osprov-engine", &["osprov-api"]),
    ("osprov-adapters", &["osprov-api", "osprov-engine"]),
    ("kapi", &[]),
    (
        "osprov",
        &["kapi", "osprov-adapters", "osprov-api", "osprov-engine"],
    ),
];

fn metadata() -> Value {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

/// Each workspace package's normal dependencies: name → (features asked for, per dependency).
fn dependencies(meta: &Value) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| {
                let features = d["features"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (d["name"].as_str().unwrap_or_default().to_string(), features)
            })
            .collect();
        out.insert(name, deps);
    }
    out
}

#[test]
fn each_crate_depends_on_exactly_the_layers_below_it() {
    let deps = dependencies(&metadata());
    let members: BTreeSet<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        deps.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        members,
        "the workspace's crates"
    );
    for (name, allowed) in ALLOWED {
        let inner: BTreeSet<&str> = deps[*name]
            .keys()
            .map(String::as_str)
            .filter(|d| members.contains(d))
            .collect();
        assert_eq!(
            inner,
            allowed.iter().copied().collect::<BTreeSet<_>>(),
            "{name}'s workspace dependencies"
        );
    }
}

#[test]
fn the_api_types_and_the_engine_have_no_kubernetes_client() {
    let deps = dependencies(&metadata());
    assert!(
        !deps["osprov-engine"].contains_key("kube"),
        "the engine does not depend on kube at all"
    );
    let api_kube = &deps["osprov-api"]["kube"];
    assert!(
        !api_kube.iter().any(|f| f == "client" || f == "runtime"),
        "the API types use kube's derive only: {api_kube:?}"
    );
    assert!(
        !deps["osprov-adapters"].contains_key("kube"),
        "adapters know nothing of Kubernetes"
    );
}
