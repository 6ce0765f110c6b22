//! The real `osprov` binary, configured exactly as the Helm chart configures it (the container's
//! args and environment rendered by the Helm SDK, downward-API fields filled in), against the
//! embedded API and the real kube-apiserver: it leads through the Lease, reconciles, serves /healthz, /readyz and /metrics on
//! the chart's port, names itself in the User-Agent, and releases the Lease on SIGTERM.
mod cluster;
mod harness;
mod replica;
mod support;

use cluster::TestCluster;
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use osprov::api::{ManagedHost, OSDispatcher};
use replica::*;
use std::process::{Child, Command, Stdio};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `osprov` with the chart's args and env for `values`, the pod named `pod`.
fn start_as_chart(c: &TestCluster, values: serde_json::Value, pod: &str) -> (Process, u16) {
    let rendered = chart_query("chart_env.py", &values);
    let args: Vec<String> = serde_json::from_value(rendered["args"].clone()).expect("args");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osprov"));
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut port = 0;
    for (name, value) in rendered["env"].as_object().expect("env") {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => match other["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => c.ns.clone(),
                f => panic!("unexpected valueFrom {f:?} for {name}"),
            },
        };
        if name == "OSPROV_METRICS_ADDR" {
            // The chart listens on 0.0.0.0:<port>; keep the port, bind loopback for the test.
            port = value
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
            continue;
        }
        cmd.env(name, value);
    }
    let local = free_addr();
    cmd.env("OSPROV_METRICS_ADDR", local.to_string());
    assert_eq!(port, 9090, "the chart's metrics port");
    (Process(cmd.spawn().expect("osprov starts")), local.port())
}

on_both_backends!(the_binary_runs_as_the_chart_configures_it);

async fn the_binary_runs_as_the_chart_configures_it(c: TestCluster) {
    let (mut proc, port) = start_as_chart(
        &c,
        serde_json::json!({
            "watchNamespaces": [c.ns],
            "leaderElection": {"leaseDuration": "4s", "renewDeadline": "2s", "retryPeriod": "500ms"},
        }),
        "osprov-7d9f-abcde",
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let leases: Api<Lease> = c.api();
    eventually(20, "the binary to lead", || async {
        let l = leases.get_opt("osprov-osp").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("osprov-7d9f-abcde")).then_some(())
    })
    .await;
    eventually(20, "/readyz as leader", || async {
        let (code, body) =
            tokio::time::timeout(std::time::Duration::from_secs(2), try_get(addr, "/readyz"))
                .await
                .ok()??;
        (code == 200 && body.contains("leader: caches synced")).then_some(())
    })
    .await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // It reconciles.
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 0))).await;
    eventually(20, "2 ManagedHosts", || async {
        (hosts.list(&Default::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("osprov_leader 1"), "{metrics}");

    // It names itself, and uses nothing beyond its own kinds, events and the lease.
    let agent = concat!("osprov-controller/", env!("CARGO_PKG_VERSION"));
    let used = c.resources_used(agent).await;
    assert!(!used.is_empty(), "no requests under {agent}");
    for (group, _) in &used {
        assert!(
            ["osprov.io", "events.k8s.io", "coordination.k8s.io"].contains(&group.as_str()),
            "{used:?}"
        );
    }

    // SIGTERM: a clean exit that releases the lease.
    let pid = proc.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let s = proc.0.wait();
        (s, proc)
    })
    .await
    .expect("join")
    .0
    .expect("wait");
    assert!(exit.success(), "osprov exited with {exit:?}");
    let spec = leases
        .get("osprov-osp")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.holder_identity, None, "the lease was released");
}

/// Like `http_get`, but None when nothing listens yet.
async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await)
}
