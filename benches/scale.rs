//! Scale benchmark of the provisioner (issue 3): N simulated hosts over D dispatchers, then N
//! requests with 0 s simulated provisioning, to convergence.
//!
//! The "cluster" is the embedded API in this process; the controller is the real `osprov
//! controller` binary in a child process (so its peak RSS is its own), talking to the API over
//! HTTP. Reports: time to discover and sync every ManagedHost, time for all requests to succeed,
//! request→dispatch latency (request created → `status.operation.started`, recorded just before the
//! backend call) p50/p99, and the controller's peak RSS (VmHWM) until the ManagedHosts mirror the
//! new OS. Then a restart: a new controller process over everything (its simulated fleets start
//! again, so every ManagedHost changes back), the time to re-sync every ManagedHost and that
//! process's peak RSS; no finished request may change.
//!
//! `cargo bench --bench scale` runs the full size (10,000 hosts over 100 dispatchers); run without
//! `--bench` (as `cargo test --all-targets` does) it runs a small smoke size and checks the result.
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use osprov::api::{
    ManagedHost, OSDispatcher, OSDispatcherSpec, OSProvisioningRequest, OSProvisioningRequestSpec,
    Phase, SimulatorSpec,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Size {
    dispatchers: usize,
    hosts_per_dispatcher: usize,
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A kube-runtime reflector kept current in the background.
fn reflect<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut size = if full {
        Size {
            dispatchers: 100,
            hosts_per_dispatcher: 100,
        }
    } else {
        Size {
            dispatchers: 2,
            hosts_per_dispatcher: 5,
        }
    };
    // Other sizes for experiments: OSPROV_BENCH_DISPATCHERS=20 OSPROV_BENCH_HOSTS=100.
    if let Some(d) = std::env::var("OSPROV_BENCH_DISPATCHERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        size.dispatchers = d;
    }
    if let Some(h) = std::env::var("OSPROV_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        size.hosts_per_dispatcher = h;
    }
    let total = size.dispatchers * size.hosts_per_dispatcher;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = osprov::apiserver::Config::new(osprov::api::crds());
    config.watch_history = 200_000;
    let server = osprov::apiserver::serve(config)
        .await
        .expect("embedded API");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let client = server.client().await.expect("client");

    // OSPROV_BENCH_METRICS=127.0.0.1:9393 exposes the controller's metrics while it runs.
    let log_level = std::env::var("OSPROV_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let metrics_addr = std::env::var("OSPROV_BENCH_METRICS").unwrap_or_else(|_| "off".into());
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_osprov"))
            .args([
                "controller",
                "--metrics-addr",
                &metrics_addr,
                "--log-level",
                &log_level,
                "--poll-interval",
                "1s",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .spawn()
            .expect("controller starts")
    };
    let mut child = spawn();
    let pid = child.id();

    let dispatchers: Api<OSDispatcher> = Api::namespaced(client.clone(), "default");
    let hosts: Api<ManagedHost> = Api::namespaced(client.clone(), "default");
    let requests: Api<OSProvisioningRequest> = Api::namespaced(client.clone(), "default");
    // Watch (not poll) hosts and requests, as a client of a real cluster would.
    let host_store = reflect(hosts.clone());
    let request_store = reflect(requests.clone());
    for d in 0..size.dispatchers {
        let spec = OSDispatcherSpec {
            adapter: Default::default(),
            provisioner: "osp".into(),
            lookup_interval: None,
            max_concurrent: None,
            redfish: None,
            simulator: Some(SimulatorSpec {
                hosts: size.hosts_per_dispatcher as i32,
                host_prefix: format!("d{d:03}-"),
                provision_millis: 0,
                ..Default::default()
            }),
        };
        dispatchers
            .create(
                &PostParams::default(),
                &OSDispatcher::new(&format!("d{d:03}"), spec),
            )
            .await
            .expect("dispatcher");
    }
    let sync = wait_until(Duration::from_secs(600), "ManagedHosts", || async {
        let list = host_store.state();
        list.len() == total && list.iter().all(|h| h.status.is_some())
    })
    .await;
    let first_create = Instant::now();

    // Requests, created 16 at a time; remember when each was created (wall clock).
    let created_at: HashMap<String, Timestamp> = {
        let names: Vec<(String, String)> = (0..size.dispatchers)
            .flat_map(|d| {
                (0..size.hosts_per_dispatcher)
                    .map(move |h| (format!("r-{d:03}-{h:03}"), format!("d{d:03}-{h:03}")))
            })
            .collect();
        let stream = futures::stream::iter(names.into_iter().map(|(name, host)| {
            let requests = requests.clone();
            async move {
                let r = OSProvisioningRequest::new(
                    &name,
                    OSProvisioningRequestSpec {
                        host,
                        os: "debian-12".into(),
                        dispatcher: None,
                        max_attempts: None,
                    },
                );
                let at = Timestamp::now();
                requests
                    .create(&PostParams::default(), &r)
                    .await
                    .expect("request");
                (name, at)
            }
        }));
        stream.buffer_unordered(16).collect().await
    };
    let converge = wait_until(Duration::from_secs(900), "requests to succeed", || async {
        let list = request_store.state();
        list.iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            .count()
            == total
    })
    .await;
    let converge_total = first_create.elapsed();
    let list = requests
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    let mut latencies: Vec<f64> = list
        .iter()
        .filter_map(|r| {
            let started = r.status.as_ref()?.operation.as_ref()?.started.as_ref()?.0;
            let created = created_at.get(r.metadata.name.as_deref()?)?;
            Some(started.duration_since(*created).as_secs_f64())
        })
        .collect();
    // The ManagedHosts mirror the new OS (the backend's events reach the host sync).
    let mirrored = |os: &'static str| {
        let host_store = host_store.clone();
        move || {
            let list = host_store.state();
            let ok = list.len() == total
                && list
                    .iter()
                    .all(|h| h.status.as_ref().and_then(|s| s.current_os.as_deref()) == Some(os));
            async move { ok }
        }
    };
    wait_until(
        Duration::from_secs(300),
        "ManagedHosts showing the new OS",
        mirrored("debian-12"),
    )
    .await;
    let rss = peak_rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();

    // Restart over everything: a new controller process reads 10,000 ManagedHosts and 10,000
    // finished requests. The simulated fleets live in the controller process, so they start
    // again with their initial OS and every ManagedHost is rewritten; no finished request may
    // move (no second reprovision for a request).
    let mut child = spawn();
    let pid = child.id();
    let resync = wait_until(
        Duration::from_secs(600),
        "ManagedHosts re-synced",
        mirrored("ubuntu-24.04"),
    )
    .await;
    // One more lookup interval, so the restarted controller has looked at every request too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restart_rss = peak_rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let before: HashMap<_, _> = list
        .iter()
        .map(|r| {
            let st = r.status.as_ref();
            (
                r.metadata.name.clone(),
                (
                    st.and_then(|s| s.phase),
                    st.and_then(|s| s.operation.clone()),
                ),
            )
        })
        .collect();
    let moved = requests
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|r| {
            let st = r.status.as_ref();
            before.get(&r.metadata.name)
                != Some(&(
                    st.and_then(|s| s.phase),
                    st.and_then(|s| s.operation.clone()),
                ))
        })
        .count();

    latencies.sort_by(|a, b| a.total_cmp(b));
    println!("| metric | value |");
    println!("|---|---|");
    println!("| hosts / dispatchers | {total} / {} |", size.dispatchers);
    println!(
        "| discover + sync all ManagedHosts | {:.2} s |",
        sync.as_secs_f64()
    );
    println!(
        "| {total} requests to Succeeded (after the last create) | {:.2} s |",
        converge.as_secs_f64()
    );
    println!(
        "| from the first create to the last success | {:.2} s |",
        converge_total.as_secs_f64()
    );
    println!(
        "| request→dispatch p50 | {:.3} s |",
        percentile(&latencies, 0.5)
    );
    println!(
        "| request→dispatch p99 | {:.3} s |",
        percentile(&latencies, 0.99)
    );
    println!(
        "| controller peak RSS | {} MiB |",
        rss.map(|k| (k / 1024).to_string())
            .unwrap_or_else(|| "n/a".into())
    );
    println!(
        "| restart: re-discover and re-sync all ManagedHosts | {:.2} s |",
        resync.as_secs_f64()
    );
    println!(
        "| restarted controller peak RSS | {} MiB |",
        restart_rss
            .map(|k| (k / 1024).to_string())
            .unwrap_or_else(|| "n/a".into())
    );
    assert_eq!(moved, 0, "finished requests changed after the restart");
    assert_eq!(
        latencies.len(),
        total,
        "every request has a recorded dispatch"
    );
    server.shutdown().await;
}
