//! The real install path on the real control plane (kube-apiserver with the RBAC authorizer,
//! etcd, kube-controller-manager; `tests/cluster/real.rs`): the real `helm` installs
//! `charts/osprov` into the test's namespace; the real `osprov controller` binary then runs out
//! of cluster **as the chart's ServiceAccount** (a token from `kubectl create token`), with the
//! args and environment of the Deployment Helm created, so kube-apiserver's RBAC authorizer
//! decides every call it makes. The examples are applied with `kubectl` and waited for with
//! `kubectl wait --for=condition=Provisioned`, then the RBAC scenario of `tests/rbac.rs` runs
//! (`rbac_support::drive`). The audit log must show no 403 for the ServiceAccount, and what it
//! used is compared both ways with the Roles Helm installed. `helm upgrade` and `helm uninstall`
//! close the release's life.
//!
//! Real backend only: this test is about the real apiserver, its authorizer and the real Helm.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod rbac_support;
mod redfish_support;
mod replica;
mod support;

use cluster::{real, tool, Backend, TestCluster};
use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use rbac_support::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a real tool against the test's namespace as admin; its stdout, or a panic with stderr.
fn run(c: &TestCluster, name: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(tool(name));
    cmd.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("stdin");
    }
    let out = child.wait_with_output().expect("tool output");
    assert!(
        out.status.success(),
        "{name} {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real `helm` in the test's namespace.
fn helm(c: &TestCluster, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--namespace", &c.ns]);
    run(c, "helm", &all, None)
}

/// The values of this test's release: watch the test's namespace only, fast leader election,
/// the callback endpoint on `callback`, and test-friendly timings through `extraEnv` (any
/// `OSPROV_*` setting, as the chart documents).
fn values(ns: &str, callback: SocketAddr) -> serde_json::Value {
    let env = |name: &str, value: &str| serde_json::json!({"name": name, "value": value});
    serde_json::json!({
        "watchNamespaces": [ns],
        "lookupInterval": "500ms",
        "leaderElection": {"leaseDuration": "4s", "renewDeadline": "2s", "retryPeriod": "500ms"},
        "callback": {"enabled": true, "url": format!("http://{callback}")},
        "log": {"level": "info,osprov=debug", "format": "text"},
        "extraEnv": [
            env("OSPROV_POLL_INTERVAL", "100ms"),
            env("OSPROV_RETRY_BASE", "100ms"),
            env("OSPROV_RETRY_CAP", "400ms"),
            env("OSPROV_HOST_GRACE", "2s"),
        ],
    })
}

/// True when every field of `want` is in `got` with the same value (objects may carry more
/// fields in `got`: what the apiserver defaults; arrays must match element by element).
fn contained(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (want, got) {
        (Object(w), Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| contained(v, gv))),
        (Array(w), Array(g)) => w.len() == g.len() && w.iter().zip(g).all(|(a, b)| contained(a, b)),
        _ => want == got,
    }
}

/// The CRDs served are those of the chart's `crds/`. The shared control plane applied the
/// CRDs generated from the code before Helm ran (`tests/crd_drift.rs` ties both to the code);
/// Helm 4 applies `crds/` server-side on install anyway, which passes only when the content is
/// the same.
async fn check_crds(c: &TestCluster) {
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let dir = root().join("charts/osprov/crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("CRD file");
        let want: serde_json::Value = serde_norway::from_str(&text).expect("CRD YAML");
        let name = want["metadata"]["name"].as_str().expect("CRD name");
        let live = serde_json::to_value(crds.get(name).await.expect("CRD served")).expect("json");
        assert!(
            contained(&want["spec"], &live["spec"]),
            "{name}: the served CRD (generated from the code) differs from {}; run \
             `cargo run -- crds --dir crds` and `--dir charts/osprov/crds`",
            path.display()
        );
        let established = live["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        assert!(established, "{name} is not Established");
    }
}

/// What the bindings of ServiceAccount `sa` (in `ns`) grant, read back from the API: binding
/// name → (verb, group, resource). Rules limited by resourceNames count (as in chart_rules.py).
async fn installed_grants(c: &TestCluster, sa: &str) -> BTreeMap<String, Access> {
    let binds_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&c.ns)
        })
    };
    let crbs: Api<ClusterRoleBinding> = Api::all(c.client.clone());
    let cluster_wide: Vec<_> = crbs
        .list(&Default::default())
        .await
        .expect("ClusterRoleBindings")
        .items
        .into_iter()
        .filter(|b| binds_sa(&b.subjects))
        .collect();
    assert!(
        cluster_wide.is_empty(),
        "watching one namespace, yet cluster-wide bindings: {cluster_wide:?}"
    );
    let mut out = BTreeMap::new();
    let roles: Api<Role> = c.api();
    for b in c
        .api::<RoleBinding>()
        .list(&Default::default())
        .await
        .expect("bindings")
    {
        if !binds_sa(&b.subjects) {
            continue;
        }
        assert_eq!(b.role_ref.kind, "Role", "{b:?}");
        let role = roles.get(&b.role_ref.name).await.expect("the bound Role");
        let mut granted = Access::new();
        for rule in role.rules.unwrap_or_default() {
            for verb in &rule.verbs {
                for group in rule.api_groups.iter().flatten() {
                    for res in rule.resources.iter().flatten() {
                        granted.insert((verb.clone(), group.clone(), res.clone()));
                    }
                }
            }
        }
        out.insert(b.metadata.name.unwrap_or_default(), granted);
    }
    out
}

/// A kubeconfig that authenticates with `token` (server and CA of the admin kubeconfig).
fn token_kubeconfig(c: &TestCluster, token: &str) -> PathBuf {
    let admin: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&c.kubeconfig).expect("admin kubeconfig"))
            .expect("kubeconfig YAML");
    let cluster = &admin["clusters"][0]["cluster"];
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": {
            "server": cluster["server"].as_str().expect("server"),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().expect("CA"),
        }}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "real", "user": "sa", "namespace": c.ns}}],
        "current-context": "sa",
    });
    let path = c.dir().join("sa.kubeconfig");
    std::fs::write(&path, serde_norway::to_string(&doc).expect("YAML")).expect("kubeconfig");
    path
}

/// The `osprov` binary, killed when dropped; its output goes to `log`.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `osprov` with the args and env of the controller container of the Deployment Helm
/// installed (downward-API fields filled in as the kubelet would), as the ServiceAccount of
/// `kubeconfig`. The listen addresses keep the chart's ports' roles but bind loopback ports.
async fn start_controller(
    c: &TestCluster,
    deployment: &str,
    kubeconfig: &Path,
    pod: &str,
    callback: SocketAddr,
) -> Controller {
    let dep = c
        .api::<Deployment>()
        .get(deployment)
        .await
        .expect("Deployment");
    let pod_spec = dep.spec.and_then(|s| s.template.spec).expect("pod spec");
    let container = pod_spec
        .containers
        .into_iter()
        .find(|c| c.name == "controller")
        .expect("the controller container");
    let log = c.dir().join("osprov.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osprov"));
    cmd.args(container.args.unwrap_or_default())
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out);
    for e in container.env.unwrap_or_default() {
        let field = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match (e.value, field) {
            (Some(v), _) => v,
            (None, Some("metadata.name")) => pod.to_string(),
            (None, Some("metadata.namespace")) => c.ns.clone(),
            (None, f) => panic!("unexpected valueFrom {f:?} for {}", e.name),
        };
        let value = match e.name.as_str() {
            "OSPROV_METRICS_ADDR" => {
                assert_eq!(value, "0.0.0.0:9090", "the chart's metrics address");
                replica::free_addr().to_string()
            }
            "OSPROV_CALLBACK_ADDR" => {
                assert_eq!(value, "0.0.0.0:8443", "the chart's callback address");
                callback.to_string()
            }
            _ => value,
        };
        cmd.env(&e.name, value);
    }
    Controller {
        child: cmd.spawn().expect("osprov starts"),
        log,
    }
}

/// What the audit log says of a user: (verb, group, resource[/subresource]) of each resource
/// request, the requests answered 403, the count per response code, and the count per failed
/// request (code, verb, URI). Requests are keyed "verb URI".
type Audited = (
    Access,
    BTreeMap<String, usize>,
    BTreeMap<i64, usize>,
    BTreeMap<String, usize>,
);

/// The ServiceAccount's requests in the audit log (completed ones; a watch is logged when it
/// starts and when it ends).
fn audited(plane: &real::Plane, user: &str) -> Audited {
    let mut used = Access::new();
    let mut forbidden = BTreeMap::<String, usize>::new();
    let mut failed = BTreeMap::<String, usize>::new();
    let mut codes = BTreeMap::new();
    for e in real::audit_events(plane) {
        if e["user"]["username"] != user || e["stage"] != "ResponseComplete" {
            continue;
        }
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        *codes.entry(code).or_default() += 1;
        let call = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or(""),
            e["requestURI"].as_str().unwrap_or("")
        );
        if code == 403 {
            *forbidden.entry(call.clone()).or_default() += 1;
        }
        if code >= 400 {
            *failed.entry(format!("{code} {call}")).or_default() += 1;
        }
        let o = &e["objectRef"];
        let Some(resource) = o["resource"].as_str() else {
            continue; // discovery and other non-resource URLs
        };
        let resource = match o["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        used.insert((
            e["verb"].as_str().unwrap_or("").to_string(),
            o["apiGroup"].as_str().unwrap_or("").to_string(),
            resource,
        ));
    }
    (used, forbidden, codes, failed)
}

/// On a failing test, prints what the RBAC authorizer refused the ServiceAccount so far: a
/// missing grant usually shows up first as a controller that never gets anywhere (a timeout).
struct ForbiddenOnPanic<'a> {
    plane: &'a real::Plane,
    user: String,
}

impl Drop for ForbiddenOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (_, forbidden, _, _) = audited(self.plane, &self.user);
            eprintln!("requests of {} answered 403: {forbidden:#?}", self.user);
        }
    }
}

/// The examples, moved into the test's namespace.
fn examples(ns: &str) -> String {
    let mut files: Vec<_> = std::fs::read_dir(root().join("examples"))
        .expect("examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let docs: Vec<String> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("example");
            assert!(text.contains("namespace: default"), "{}", p.display());
            text.replace("namespace: default", &format!("namespace: {ns}"))
        })
        .collect();
    docs.join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_a_controller_the_real_rbac_authorizer_lets_work() {
    let c = TestCluster::start(Backend::Real).await;
    let plane = c.plane().expect("the real control plane");
    let release = format!("osprov-{}", &c.ns[2..]);
    let callback = SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    let values_file = c.dir().join("values.json");
    std::fs::write(&values_file, values(&c.ns, callback).to_string()).expect("values");
    let chart = root().join("charts/osprov").display().to_string();
    let values_arg = values_file.display().to_string();

    // 1. Install. The Deployment is created but never runs: this control plane has no kubelet
    //    (nor deployment controller); the binary runs out of cluster below instead.
    check_crds(&c).await;
    let out = helm(&c, &["install", &release, &chart, "-f", &values_arg]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    check_crds(&c).await;
    let sa = release.clone();
    c.api::<ServiceAccount>()
        .get(&sa)
        .await
        .expect("ServiceAccount");
    for name in [release.clone(), format!("{release}-leader-election")] {
        c.api::<Role>().get(&name).await.expect("Role");
        c.api::<RoleBinding>()
            .get(&name)
            .await
            .expect("RoleBinding");
    }
    let cluster_roles: Api<ClusterRole> = Api::all(c.client.clone());
    assert!(
        cluster_roles
            .get_opt(&release)
            .await
            .expect("get")
            .is_none(),
        "no ClusterRole when watchNamespaces is set"
    );
    let grants = installed_grants(&c, &sa).await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    // What the real Helm installed is what the Helm SDK renders (tests/rbac.rs relies on that).
    let sdk = chart_grants(&values(&c.ns, callback));
    assert_eq!(grants[&release], grants_in(&sdk, &c.ns), "osprov Role");
    assert_eq!(
        grants[&format!("{release}-leader-election")],
        grants_in(&sdk, "osprov-system"),
        "leader-election Role"
    );

    // 2. The controller, as the ServiceAccount.
    let user = format!("system:serviceaccount:{}:{sa}", c.ns);
    let _report = ForbiddenOnPanic {
        plane,
        user: user.clone(),
    };
    let token = run(
        &c,
        "kubectl",
        &["create", "token", &sa, "--duration=2h"],
        None,
    );
    let kubeconfig = token_kubeconfig(&c, token.trim());
    let pod = format!("{release}-7d9f-abcde");
    let mut controller = start_controller(&c, &release, &kubeconfig, &pod, callback).await;
    let leases: Api<Lease> = c.api();
    eventually(30, "the controller to lead", || async {
        let l = leases.get_opt("osprov-osp").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some(pod.as_str())).then_some(())
    })
    .await;

    // 3. The examples, applied and waited for with kubectl.
    run(&c, "kubectl", &["apply", "-f", "-"], Some(&examples(&c.ns)));
    let waited = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "wait",
            "--for=condition=Provisioned",
            "ospr",
            "--all",
            "--timeout=90s",
        ])
        .output()
        .expect("kubectl wait");
    assert!(
        waited.status.success(),
        "kubectl wait: {}\ncontroller log:\n{}",
        String::from_utf8_lossy(&waited.stderr),
        controller.log_tail()
    );
    let waited = String::from_utf8_lossy(&waited.stdout);
    assert_eq!(waited.matches("condition met").count(), 3, "{waited}");

    // Every other path the controller has (tests/rbac.rs's scenario), then the requests are
    // deleted while it runs (it removes their finalizers), and it stops on SIGTERM.
    drive(&c.client, &c.ns, callback, None).await;
    run(
        &c,
        "kubectl",
        &["delete", "ospr", "--all", "--timeout=60s"],
        None,
    );
    let pid = i32::try_from(controller.child.id()).expect("pid");
    // SAFETY: signals our own child process.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let exit = eventually(20, "osprov to exit on SIGTERM", || {
        let status = controller.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(
        exit.success(),
        "osprov exited with {exit:?}:\n{}",
        controller.log_tail()
    );

    // 4. The audit log: nothing forbidden, and used == granted both ways.
    let (used, forbidden, codes, failed) = audited(plane, &user);
    eprintln!(
        "{user}: response codes {codes:?}; {} distinct uses; failed requests: {failed:#?}",
        used.len()
    );
    assert!(
        forbidden.is_empty(),
        "the RBAC authorizer refused the controller (request: times): {forbidden:#?}"
    );
    save("helm-install-real.json", &used);
    let (lease_used, rest_used): (Access, Access) = used.iter().cloned().partition(is_lease);
    let role = &grants[&release];
    compare_allowing(&rest_used, role, "Role (real apiserver)", &IN_PROCESS_ONLY);
    assert_race_paths_granted(role, "Role (real apiserver)");
    compare(
        &lease_used,
        &grants[&format!("{release}-leader-election")],
        "leader-election Role (real apiserver)",
    );

    // 5. Upgrade (a value changes, the release is at revision 2), then uninstall.
    let upgrade = [
        "upgrade",
        &release,
        &chart,
        "--reuse-values",
        "--set",
        "log.level=debug",
    ];
    helm(&c, &upgrade);
    let status: serde_json::Value =
        serde_json::from_str(&helm(&c, &["status", &release, "-o", "json"]))
            .expect("helm status JSON");
    assert_eq!(status["version"], 2, "{status}");
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    let dep = c
        .api::<Deployment>()
        .get(&release)
        .await
        .expect("Deployment");
    let env = serde_json::to_value(
        &dep.spec
            .and_then(|s| s.template.spec)
            .expect("pod")
            .containers[0]
            .env,
    )
    .expect("env");
    let value = |name: &str| {
        let mut all = env.as_array().into_iter().flatten();
        all.find(|e| e["name"] == name).map(|e| e["value"].clone())
    };
    assert_eq!(value("OSPROV_LOG_LEVEL"), Some("debug".into()), "{env}");
    // --reuse-values kept the rest.
    assert_eq!(
        value("OSPROV_NAMESPACES"),
        Some(c.ns.clone().into()),
        "{env}"
    );

    helm(&c, &["uninstall", &release]);
    eventually(30, "the release's objects to be gone", || async {
        let gone = c.api::<ServiceAccount>().get_opt(&sa).await.ok()?.is_none()
            && c.api::<Role>()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
            && c.api::<RoleBinding>()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
            && c.api::<Deployment>()
                .get_opt(&release)
                .await
                .ok()?
                .is_none()
            && c.api::<Service>()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty();
        gone.then_some(())
    })
    .await;
    // Helm never deletes CRDs.
    check_crds(&c).await;
}
