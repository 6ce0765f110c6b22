//! vSphere scale benchmark (ignored by default; `OSPROV_BENCH_VMS=1000 cargo test --test
//! vsphere_bench -- --ignored --nocapture`, see `docs/benchmarks.md`).
//!
//! One vcsim with `OSPROV_BENCH_VMS` VMs (default 1000) and SOAP tracing; one vSphere dispatcher
//! with `maxConcurrent: 20`. Measured: discovery (dispatcher created → every ManagedHost
//! written), then `OSPROV_BENCH_REPROVISIONS` (default 100) reprovisions (requests created → all
//! Succeeded). The installer is played from the operation Secrets (admin access): once a record
//! says the VM was reset, the test posts success to its callback URL — so vcsim sees only
//! osprov's calls. SOAP calls are counted by method from vcsim's trace; the floor is 6 per
//! reprovision (attach reconfigure, reset, detach reconfigure, and one read of each task's end).
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod support;
mod vsphere_support;

use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase};
use osprov::controller::settings::{MetricsAddr, Settings};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vsphere_support::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn vsphere_scale() {
    let (n, k) = (
        env_or("OSPROV_BENCH_VMS", 1000),
        env_or("OSPROV_BENCH_REPROVISIONS", 100),
    );
    let t0 = Instant::now();
    let sim = Vcsim::start(n);
    println!(
        "vcsim with {n} VMs up in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let c = cluster::TestCluster::start(cluster::Backend::Embedded).await;
    let secrets: Api<Secret> = c.api();
    account_secret(&secrets, PASSWORD).await;
    let callback: std::net::SocketAddr = ([127, 0, 0, 1], {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    })
        .into();
    let _ctl = RunningController::start(
        c.client.clone(),
        Settings {
            callback_addr: MetricsAddr(Some(callback)),
            ..fast_settings_in(&c.ns)
        },
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    );
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut d = vsphere_dispatcher("vc", vsphere_spec(&sim), "1h");
    d.spec.max_concurrent = Some(20);
    let calls_before = sim.total();
    let discovery_before = sim.snapshot();
    let t = Instant::now();
    create(&dispatchers, &d).await;
    eventually(600, "every VM mirrored", || async {
        let n_hosts = hosts.list(&ListParams::default()).await.ok()?.items.len();
        (n_hosts == n).then_some(())
    })
    .await;
    let discovery = t.elapsed();
    let discovery_calls = sim.total() - calls_before;
    let mut by_method: Vec<(String, usize)> = sim
        .snapshot()
        .into_iter()
        .map(|(m, n)| {
            let before = discovery_before.get(&m).copied().unwrap_or(0);
            (m, n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    by_method.sort();
    println!("discovery calls by method: {by_method:?}");

    let names: Vec<String> = (0..k).map(|i| format!("dc0-c0-rp0-vm{i}")).collect();
    let before = sim.snapshot();
    let t = Instant::now();
    for (i, h) in names.iter().enumerate() {
        let mut r = request(&format!("r{i}"), h, "debian-12");
        r.spec.max_attempts = Some(1);
        create(&requests, &r).await;
    }
    // The installer: post success once a record says its VM was reset.
    let mut done: HashSet<String> = HashSet::new();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let ops = ListParams::default().labels(osprov::controller::callback::OPERATION_LABEL);
    while done.len() < k && t.elapsed() < Duration::from_secs(900) {
        for s in secrets.list(&ops).await.expect("Secrets").items {
            let data = s.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).to_string())
                    .unwrap_or_default()
            };
            let token = field("token");
            if field("resetAt").is_empty() || done.contains(&token) {
                continue;
            }
            let key = osprov::adapter::store::token_key(&token);
            let url = format!("http://{callback}/callback/{key}.{}", field("secret"));
            if http
                .post(&url)
                .body("{\"status\":\"succeeded\"}")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                done.insert(token);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(600, "every request Succeeded", || async {
        let all = requests.list(&ListParams::default()).await.ok()?.items;
        let ok = all
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            .count();
        (ok == k).then_some(())
    })
    .await;
    let reprovision = t.elapsed();
    let after = sim.snapshot();
    let per = |m: &str| {
        (after.get(m).copied().unwrap_or(0) - before.get(m).copied().unwrap_or(0)) as f64 / k as f64
    };
    let total: usize = after.values().sum::<usize>() - before.values().sum::<usize>();
    println!("| | result |");
    println!("|---|---|");
    println!(
        "| discovery of {n} VMs (dispatcher created → every ManagedHost written) | {:.1} s, {discovery_calls} SOAP calls |",
        discovery.as_secs_f64()
    );
    println!(
        "| {k} reprovisions at maxConcurrent 20 (created → all Succeeded) | {:.1} s |",
        reprovision.as_secs_f64()
    );
    println!(
        "| SOAP calls per reprovision (floor: 6) | **{:.2}** |",
        total as f64 / k as f64
    );
    for m in [
        "ReconfigVM_Task",
        "ResetVM_Task",
        "RetrievePropertiesEx",
        "WaitForUpdatesEx",
        "Login",
    ] {
        println!("| — {m} per reprovision | {:.2} |", per(m));
    }
}
