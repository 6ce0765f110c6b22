//! The real `kubectl` (v1.36.3, built by `scripts/k8s-tools.sh`) on both API backends, the
//! embedded API and the real kube-apiserver (k8s-api-fidelity.md §E): discovery, OpenAPI-driven
//! apply/explain, Table printing, watch, wait, describe with events, delete, and the API's own
//! 422 message. The same assertions hold for both. Each test uses a fresh `--cache-dir` and the
//! kubeconfig of its own namespace; `osprov standalone` (the embedded API only) is tested last.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cluster::TestCluster;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Kubectl<'a> {
    kubeconfig: &'a Path,
    cache: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl<'a> Kubectl<'a> {
    fn new(c: &'a TestCluster) -> Self {
        Kubectl {
            kubeconfig: &c.kubeconfig,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(cluster::tool("kubectl"));
        c.arg("--kubeconfig")
            .arg(self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = self.command(args).spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .await
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl in time")
            .unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

const MANIFEST: &str = r#"apiVersion: osprov.io/v1alpha1
kind: OSProvisioningRequest
metadata:
  name: web-1
spec:
  host: node-1
  os: ubuntu-24.04
"#;

on_both_backends!(discovery_apply_get_explain_delete, watch_wait_and_describe);

async fn discovery_apply_get_explain_delete(c: TestCluster) {
    let k = Kubectl::new(&c);
    let out = k.ok(&["api-resources"], None).await;
    for (plural, short, kind) in [
        ("osprovisioningrequests", "ospr", "OSProvisioningRequest"),
        ("osdispatchers", "osd", "OSDispatcher"),
        ("managedhosts", "mhost", "ManagedHost"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(plural))
            .unwrap_or_else(|| panic!("{plural} missing:\n{out}"));
        assert!(
            line.contains(short) && line.contains("osprov.io/v1alpha1") && line.contains(kind),
            "{line}"
        );
    }
    // Client-side apply (create, then a merge-patch update).
    let out = k.ok(&["apply", "-f", "-"], Some(MANIFEST)).await;
    assert!(
        out.contains("osprovisioningrequest.osprov.io/web-1 created"),
        "{out}"
    );
    let out = k
        .ok(
            &["apply", "-f", "-"],
            Some(&MANIFEST.replace("ubuntu-24.04", "debian-12")),
        )
        .await;
    assert!(out.contains("configured"), "{out}");
    // spec.host is immutable (a CEL transition rule): the 422 names the refused value.
    let moved = MANIFEST.replace("node-1", "node-9");
    let out = k.run(&["apply", "-f", "-"], Some(&moved)).await;
    assert!(
        !out.ok
            && out.stderr.contains(
                "The OSProvisioningRequest \"web-1\" is invalid: spec.host: Invalid value: \
                 \"node-9\": spec.host is immutable"
            ),
        "{}",
        out.stderr
    );
    // Server-side apply.
    let ssa = MANIFEST.replace("web-1", "web-2");
    let out = k
        .ok(&["apply", "--server-side", "-f", "-"], Some(&ssa))
        .await;
    assert!(out.contains("web-2 serverside-applied"), "{out}");
    // Printer columns, by short name and by category.
    let out = k.ok(&["get", "ospr"], None).await;
    let header = out.lines().next().unwrap();
    for col in ["NAME", "HOST", "OS", "PHASE", "ATTEMPTS", "AGE"] {
        assert!(header.contains(col), "{out}");
    }
    assert!(
        out.contains("web-1") && out.contains("debian-12") && out.contains("node-1"),
        "{out}"
    );
    let out = k.ok(&["get", "osprov"], None).await;
    assert!(
        out.contains("osprovisioningrequest.osprov.io/web-1"),
        "{out}"
    );
    // explain from the OpenAPI v3 document built from the CRD.
    let out = k.ok(&["explain", "ospr.spec"], None).await;
    assert!(
        out.contains("host") && out.contains("<string>") && out.contains("required"),
        "{out}"
    );
    // An invalid object: the API's 422 message reaches the user.
    let bad = MANIFEST
        .replace("name: web-1", "name: bad")
        .replace("  os: ubuntu-24.04\n", "");
    let out = k.run(&["apply", "-f", "-"], Some(&bad)).await;
    assert!(!out.ok);
    // kubectl words a 422 from its details: `The OSProvisioningRequest "bad" is invalid: <causes>`.
    assert!(
        out.stderr
            .contains("The OSProvisioningRequest \"bad\" is invalid")
            && out.stderr.contains("spec.os: Required value"),
        "{}",
        out.stderr
    );
    // Unknown fields are refused with fieldValidation=Strict, which kubectl sends.
    let unknown = MANIFEST
        .replace("name: web-1", "name: unk")
        .replace("  host: node-1", "  host: node-1\n  colour: red");
    let out = k.run(&["apply", "-f", "-"], Some(&unknown)).await;
    assert!(
        !out.ok && out.stderr.contains("unknown field \"spec.colour\""),
        "{}",
        out.stderr
    );
    // Generator commands send protobuf bodies for Secrets and Namespaces. The namespace is named
    // after the test's own, as a shared control plane may hold other tests' namespaces.
    let lab = format!("{}-lab", c.ns);
    let lab = lab.as_str();
    let out = k.ok(&["create", "namespace", lab], None).await;
    assert!(out.contains(&format!("namespace/{lab} created")), "{out}");
    let out = k
        .ok(
            &[
                "create",
                "secret",
                "generic",
                "bmc",
                "-n",
                lab,
                "--from-literal=password=s3cret",
            ],
            None,
        )
        .await;
    assert!(out.contains("secret/bmc created"), "{out}");
    let out = k
        .ok(
            &[
                "get",
                "secret",
                "bmc",
                "-n",
                lab,
                "-o",
                "jsonpath={.type} {.data.password}",
            ],
            None,
        )
        .await;
    assert_eq!(out, "Opaque czNjcmV0");
    // delete waits until the object is gone.
    let out = k.ok(&["delete", "ospr", "web-1"], None).await;
    assert!(out.contains("deleted"), "{out}");
    let out = k.run(&["get", "ospr", "web-1"], None).await;
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);
    let out = k
        .ok(&["delete", "namespace", lab, "--wait=false"], None)
        .await;
    assert!(
        out.contains(&format!("namespace \"{lab}\" deleted")),
        "{out}"
    );
}

async fn watch_wait_and_describe(c: TestCluster) {
    let k = Kubectl::new(&c);
    k.ok(&["apply", "-f", "-"], Some(MANIFEST)).await;
    let api = osprs(&c.client, &c.ns);
    // get -w sees a change.
    let mut watch = k.command(&["get", "ospr", "-w"]).spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("NAME"), "{first}");
    let _ = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap();
    api.patch_status(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Provisioning"}})),
    )
    .await
    .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if l.contains("Provisioning") {
                return l;
            }
        }
    })
    .await
    .expect("watch shows the change");
    assert!(changed.contains("web-1"));
    watch.kill().await.unwrap();
    // wait --for=condition returns once the condition is True for the current generation.
    let wait = k
        .command(&[
            "wait",
            "--for=condition=Provisioned",
            "ospr/web-1",
            "--timeout=30s",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let obj = api.get("web-1").await.unwrap();
    let gen = obj.metadata.generation.unwrap();
    let cond = |g: i64| {
        json!({"status": {"phase": "Succeeded", "observedGeneration": g, "conditions": [{"type": "Provisioned", "status": "True",
            "reason": "Done", "message": "ok", "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": g}]}})
    };
    // A stale observedGeneration does not satisfy kubectl wait: with --timeout=0 it reads the
    // object once and says whether the condition is met (the same check the watch applies).
    api.patch_status(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(cond(gen - 1)),
    )
    .await
    .unwrap();
    let once = k
        .run(
            &[
                "wait",
                "--for=condition=Provisioned",
                "ospr/web-1",
                "--timeout=0",
            ],
            None,
        )
        .await;
    assert!(
        !once.ok && once.stderr.contains("condition not met"),
        "stale condition: {} {}",
        once.stdout,
        once.stderr
    );
    api.patch_status("web-1", &PatchParams::default(), &Patch::Merge(cond(gen)))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), wait.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    // describe lists the object's events (core/v1 with involvedObject field selectors).
    let typed: kube::Api<osprov::api::OSProvisioningRequest> = c.api();
    let reference = kube::Resource::object_ref(&typed.get("web-1").await.unwrap(), &());
    let recorder = Recorder::new(
        c.client.clone(),
        Reporter {
            controller: "osprov".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Provisioned".into(),
        note: Some("host runs ubuntu-24.04".into()),
        action: "Provision".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    let out = k.ok(&["describe", "ospr", "web-1"], None).await;
    assert!(
        out.contains("Events:")
            && out.contains("Provisioned")
            && out.contains("host runs ubuntu-24.04"),
        "{out}"
    );
    let out = k.ok(&["get", "events"], None).await;
    assert!(out.contains("osprovisioningrequest/web-1"), "{out}");
}

/// `osprov standalone` prints where it listens, writes a 0600 kubeconfig that kubectl can use,
/// and records accesses to the access log file. The embedded API only: `standalone` is it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_binary_serves_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("osprov.kubeconfig");
    let access = dir.path().join("access.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_osprov"))
        .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--access-log")
        .arg(&access)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while !printed.contains("kubectl --kubeconfig") {
        let l = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        printed.push_str(&l);
        printed.push('\n');
    }
    assert!(
        printed.contains("listening on https://127.0.0.1:"),
        "{printed}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(cluster::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["get", "osprov"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&access).unwrap()).unwrap();
    let kubectl_ua = record
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("kubectl"))
        .cloned()
        .unwrap();
    assert!(record[&kubectl_ua]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["verb"] == "list" && e["group"] == "osprov.io"));
    child.kill().await.unwrap();
}
