//! kubectl end to end on `osprov standalone` (the README's main job): the real binary, the real
//! kubectl (v1.36.3, built by `scripts/k8s-tools.sh`). `kubectl apply -f examples/` then
//! `kubectl wait --for=condition=Provisioned ospr --all` succeeds and `kubectl get mhost` lists
//! the hosts with their OS. `standalone` is the embedded API, so these run on it only.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Standalone {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Standalone {
    fn start() -> Standalone {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(env!("CARGO_BIN_EXE_osprov"))
            .args([
                "standalone",
                "--listen",
                "127.0.0.1:0",
                "--metrics-addr",
                "off",
                "--lookup-interval",
                "1s",
                "--poll-interval",
                "200ms",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("osprov standalone starts");
        let s = Standalone { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "standalone wrote no kubeconfig");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(cluster::tool("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .display()
        .to_string()
}

#[test]
fn apply_examples_then_wait_for_provisioned() {
    let s = Standalone::start();
    // The simulator dispatcher appears and discovers its hosts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.kubectl(&["get", "mhost", "-o", "name"]);
        if String::from_utf8_lossy(&out.stdout).lines().count() >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "simulator hosts never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    s.ok(&["apply", "-f", &examples()]);
    // The lab dispatcher's hosts must exist before its requests can be accepted; wait covers it.
    s.ok(&[
        "wait",
        "--for=condition=Provisioned",
        "ospr",
        "--all",
        "--timeout=90s",
    ]);
    let ospr = s.ok(&["get", "ospr"]);
    assert!(
        ospr.contains("PHASE") && ospr.contains("Succeeded"),
        "{ospr}"
    );
    assert!(
        !ospr.contains("Failed") && !ospr.contains("Rejected"),
        "{ospr}"
    );
    // The ManagedHosts mirror the backend, so they show the new OS shortly after the requests
    // succeed (the dispatcher's next sync), not necessarily at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = s.ok(&["get", "mhost", "lab-000", "lab-001"]);
        if hosts.contains("debian-12") && hosts.contains("rocky-9") {
            break;
        }
        assert!(Instant::now() < deadline, "{hosts}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = s.ok(&["get", "osprov"]);
    assert!(
        all.contains("osdispatcher.osprov.io/lab") && all.contains("managedhost.osprov.io/sim-000"),
        "{all}"
    );
}

#[test]
fn unknown_host_is_rejected_visibly() {
    let s = Standalone::start();
    let manifest = s.dir.path().join("ghost.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: osprov.io/v1alpha1\nkind: OSProvisioningRequest\nmetadata:\n  name: ghost\nspec:\n  host: not-a-host\n  os: debian-12\n",
    )
    .expect("manifest");
    s.ok(&["apply", "-f", &manifest.display().to_string()]);
    s.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Rejected",
        "ospr/ghost",
        "--timeout=60s",
    ]);
    let reason = s.ok(&[
        "get",
        "ospr",
        "ghost",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
    ]);
    assert_eq!(reason, "HostNotManaged");
    let described = s.ok(&["describe", "ospr", "ghost"]);
    assert!(described.contains("HostNotManaged"), "{described}");
}
