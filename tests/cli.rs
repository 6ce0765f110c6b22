//! The `osprov` command line, the real binary, against both API backends with the real controller
//! and the simulator: each subcommand's output and exit codes, `--wait` until success and until
//! failure, the discovery asked for when no OS image is known, and a wave of 20 hosts at
//! `--max-unavailable 3` that never has more than 3 in flight, interrupted and resumed.
mod cluster;
mod harness;
mod support;

use std::sync::Arc;
use std::time::Duration;

use cluster::TestCluster;
use harness::*;
use kube::api::{Api, ListParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, SimulatorFailures};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn osprov(c: &TestCluster, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_osprov"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .expect("osprov runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(c: &TestCluster, args: &[&str]) -> String {
    let out = osprov(c, args).await;
    assert_eq!(out.code, 0, "osprov {args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

struct Env {
    c: TestCluster,
    sims: Arc<SimRegistry>,
    _ctl: RunningController,
}

async fn env(c: TestCluster) -> Env {
    let sims = Arc::new(SimRegistry::default());
    let ctl = RunningController::start(c.client.clone(), fast_settings_in(&c.ns), sims.clone());
    Env { c, sims, _ctl: ctl }
}

impl Env {
    async fn dispatcher(&self, d: OSDispatcher, hosts: usize) {
        let api: Api<OSDispatcher> = self.c.api();
        create(&api, &d).await;
        let hosts_api: Api<ManagedHost> = self.c.api();
        let prefix = d
            .spec
            .simulator
            .as_ref()
            .map(|s| s.host_prefix.clone())
            .unwrap_or_default();
        eventually(30, &format!("{hosts} ManagedHosts of {prefix}"), || async {
            let l = hosts_api.list(&ListParams::default()).await.ok()?;
            let n = l
                .items
                .iter()
                .filter(|h| {
                    h.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .filter(|h| h.status.is_some())
                .count();
            (n == hosts).then_some(())
        })
        .await;
    }
}

on_both_backends!(
    hosts_os_list_discover_and_status,
    os_list_asks_for_a_discovery_when_nothing_is_known,
    reprovision_waits_for_success_and_failure,
    a_wave_keeps_to_max_unavailable_and_resumes_after_an_interruption,
    a_wave_stops_at_a_failure_and_a_rerun_retries_it,
);

async fn hosts_os_list_discover_and_status(c: TestCluster) {
    let e = env(c).await;
    e.dispatcher(sim_dispatcher("sim", sim(3, 0)), 3).await;
    let c = &e.c;

    let table = ok(c, &["hosts"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME      DISPATCHER   OS             POWER   STATE   REQUEST"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[1].starts_with("sim-000   sim          ubuntu-24.04   On      Idle    <none>"));
    let wide = ok(c, &["hosts", "-o", "wide"]).await;
    assert!(wide.contains("AVAILABLE OS") && wide.contains("ubuntu-24.04,debian-12,rocky-9"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(c, &["hosts", "-o", "json"]).await).expect("JSON");
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["items"][0]["kind"], "ManagedHost");
    let yaml = ok(c, &["hosts", "-o", "yaml", "--os", "debian-12"]).await;
    assert!(yaml.contains("items: []"), "{yaml}");
    assert_eq!(
        ok(c, &["hosts", "--dispatcher", "other"])
            .await
            .lines()
            .count(),
        1
    );
    let ns_flag = ok(c, &["hosts", "-n", &c.ns]).await;
    assert_eq!(ns_flag, table);
    let all = ok(c, &["hosts", "-A"]).await;
    assert!(all.starts_with("NAMESPACE "), "{all}");
    assert!(all.contains(&format!("{}   sim-002", c.ns)), "{all}");
    let completion = std::process::Command::new(env!("CARGO_BIN_EXE_osprov"))
        .args(["completion", "bash"])
        .output()
        .expect("completion");
    assert!(completion.status.success());
    assert!(String::from_utf8_lossy(&completion.stdout).contains("_osprov()"));

    let os = ok(c, &["os", "list", "--host", "sim-001"]).await;
    assert!(os.starts_with("HOST      OS             CURRENT\n"), "{os}");
    assert!(os.contains("sim-001   ubuntu-24.04   *\n") && os.contains("sim-001   rocky-9\n"));
    let catalogue = ok(c, &["os", "list"]).await;
    assert!(catalogue.contains("sim          debian-12"), "{catalogue}");

    let before = e
        .sims
        .get(&c.key("sim"))
        .expect("fleet")
        .stats()
        .discoveries;
    let done = ok(c, &["discover", "sim", "--wait"]).await;
    assert_eq!(done, "discovery of sim finished: 3 hosts, 3 OS images\n");
    assert!(
        e.sims
            .get(&c.key("sim"))
            .expect("fleet")
            .stats()
            .discoveries
            > before
    );
    let missing = osprov(c, &["discover", "nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no OSDispatcher named nope"),
        "{}",
        missing.stderr
    );

    let status = ok(c, &["status"]).await;
    assert!(status.contains("sim    Ready   3       3"), "{status}");
    assert!(status.contains("Nothing is stuck."), "{status}");
    let doc: serde_json::Value =
        serde_json::from_str(&ok(c, &["status", "-o", "json"]).await).expect("JSON");
    assert_eq!(doc["dispatchers"][0]["state"], "Ready");
}

async fn os_list_asks_for_a_discovery_when_nothing_is_known(c: TestCluster) {
    let e = env(c).await;
    let mut spec = sim(1, 0);
    spec.os_images = Vec::new();
    let mut d = sim_dispatcher("bare", spec.clone());
    d.spec.lookup_interval = Some("1h".into());
    e.dispatcher(d, 1).await;
    // The backend starts offering images; osprov has not discovered since.
    spec.os_images = vec!["debian-12".into(), "freebsd-14".into()];
    e.sims.fleet(&e.c.key("bare"), &spec);
    let out = osprov(&e.c, &["os", "list", "--dispatcher", "bare"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("asking bare for a discovery"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("bare         freebsd-14"),
        "{}",
        out.stdout
    );
}

async fn reprovision_waits_for_success_and_failure(c: TestCluster) {
    let e = env(c).await;
    e.dispatcher(sim_dispatcher("sim", sim(2, 300)), 2).await;
    let mut broken = sim(1, 20);
    broken.host_prefix = "bad-".into();
    broken.failures = Some(SimulatorFailures {
        fail_fraction: Some(1.0),
        ..Default::default()
    });
    e.dispatcher(sim_dispatcher("broken", broken), 1).await;
    let c = &e.c;

    let created = ok(c, &["reprovision", "sim-000", "debian-12"]).await;
    assert_eq!(
        created,
        "osprovisioningrequest.osprov.io/sim-000-debian-12 created\n"
    );
    // Piped output: one plain line per change, then the result.
    let out = osprov(
        c,
        &[
            "reprovision",
            "sim-001",
            "rocky-9",
            "--wait",
            "--name",
            "r1",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Provisioning Provisioning attempt 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("r1: Succeeded (Provisioned) in "),
        "{}",
        out.stdout
    );
    let requests: Api<OSProvisioningRequest> = c.api();
    wait_phase(&requests, "sim-000-debian-12", Phase::Succeeded, 30).await;
    // The same command again does not pass off the finished request as a new result.
    let again = osprov(c, &["reprovision", "sim-000", "debian-12", "--wait"]).await;
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("already ended (Succeeded)"),
        "{}",
        again.stderr
    );
    assert_eq!(
        e.sims.get(&c.key("sim")).expect("fleet").stats().started(),
        2
    );

    let failed = osprov(c, &["reprovision", "bad-000", "debian-12", "--wait"]).await;
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    assert!(
        failed.stderr.contains("Failed (AttemptsExhausted)"),
        "{}",
        failed.stderr
    );

    let ghost = osprov(c, &["reprovision", "ghost", "debian-12"]).await;
    assert_eq!(ghost.code, 1);
    assert!(
        ghost.stderr.contains("host ghost is not managed"),
        "{}",
        ghost.stderr
    );
    let bad_os = osprov(c, &["reprovision", "sim-000", "windows-95"]).await;
    assert_eq!(bad_os.code, 1);
    assert!(bad_os
        .stderr
        .contains("OS windows-95 is not in the catalogue of host sim-000"));
    let clash = osprov(c, &["reprovision", "sim-000", "rocky-9", "--name", "r1"]).await;
    assert_eq!(clash.code, 1);
    assert!(
        clash.stderr.contains("request r1 already exists"),
        "{}",
        clash.stderr
    );
    let timeout = osprov(
        c,
        &[
            "reprovision",
            "sim-000",
            "rocky-9",
            "--wait",
            "--timeout",
            "0",
        ],
    )
    .await;
    assert_eq!(timeout.code, 3, "{}{}", timeout.stdout, timeout.stderr);
    let usage = osprov(c, &["reprovision", "-l", "a=b", "sim-000", "rocky-9"]).await;
    assert_eq!(usage.code, 2);
    let all = osprov(c, &["reprovision", "sim-000", "rocky-9", "-A"]).await;
    assert_eq!(all.code, 2, "{}", all.stderr);
}

async fn a_wave_keeps_to_max_unavailable_and_resumes_after_an_interruption(c: TestCluster) {
    let e = env(c).await;
    e.dispatcher(sim_dispatcher("fleet", sim(20, 400)), 20)
        .await;
    let c = &e.c;
    let requests: Api<OSProvisioningRequest> = c.api();
    let args = [
        "reprovision",
        "-l",
        "osprov.io/dispatcher=fleet",
        "debian-12",
        "--max-unavailable",
        "3",
    ];
    // First run, interrupted once some hosts are done.
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_osprov"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("wave starts");
    let succeeded = || async {
        let l = requests.list(&ListParams::default()).await.ok()?;
        Some(
            l.items
                .iter()
                .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
                .count(),
        )
    };
    eventually(60, "six hosts done", || async {
        (succeeded().await? >= 6).then_some(())
    })
    .await;
    first.kill().await.expect("interrupt the wave");
    let after_kill = succeeded().await.unwrap_or(0);
    assert!(after_kill < 20, "the wave was interrupted before the end");

    // The same command picks up where it stopped.
    let out = tokio::time::timeout(Duration::from_secs(120), osprov(c, &args))
        .await
        .expect("the resumed wave ends");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("20/20 hosts run debian-12"),
        "{}",
        out.stdout
    );
    let stats = e.sims.get(&c.key("fleet")).expect("fleet").stats();
    assert_eq!(stats.started(), 20, "{stats:?}");
    assert!(
        stats.started_per_host.values().all(|n| *n == 1),
        "{stats:?}"
    );
    assert!(stats.max_in_flight <= 3, "{} at once", stats.max_in_flight);
    assert_eq!(stats.max_in_flight, 3, "the wave uses its budget");
    assert_eq!(
        requests
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        20
    );
}

async fn a_wave_stops_at_a_failure_and_a_rerun_retries_it(c: TestCluster) {
    let e = env(c).await;
    let mut spec = sim(3, 50);
    spec.failures = Some(SimulatorFailures {
        fail_fraction: Some(1.0),
        ..Default::default()
    });
    e.dispatcher(sim_dispatcher("flaky", spec), 3).await;
    let c = &e.c;
    let args = ["reprovision", "-l", "osprov.io/dispatcher=flaky", "rocky-9"];
    let first = osprov(c, &args).await;
    assert_eq!(first.code, 1, "{}{}", first.stdout, first.stderr);
    assert!(
        first.stderr.contains("failed on sim-000")
            && first.stderr.contains("stopped at the first failure"),
        "{}",
        first.stderr
    );
    let fleet = e.sims.get(&c.key("flaky")).expect("fleet");
    assert_eq!(
        fleet.stats().started_per_host.keys().collect::<Vec<_>>(),
        ["sim-000"],
        "nothing after the failed host was started"
    );
    // The backend is fixed; the same command retries the failed host and goes on.
    let dispatchers: Api<OSDispatcher> = c.api();
    dispatchers
        .patch(
            "flaky",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"simulator": {"failures": null}}}),
            ),
        )
        .await
        .expect("patch");
    eventually(20, "the dispatcher observed the fix", || async {
        let d = dispatchers.get("flaky").await.ok()?;
        (d.status?.observed_generation == d.metadata.generation).then_some(())
    })
    .await;
    let again = osprov(c, &args).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("retrying sim-000"),
        "{}",
        again.stderr
    );
    assert!(
        again.stdout.contains("3/3 hosts run rocky-9"),
        "{}",
        again.stdout
    );
}
