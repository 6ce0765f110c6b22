//! Scale benchmark of the provisioner (issue 3): N simulated hosts over D dispatchers, then N
//! requests with 0 s simulated provisioning, to convergence.
//!
//! The controller is the real `osprov
//! controller` binary in a child process (so its peak RSS is its own), talking to the API over
//! HTTP. Reports: time to discover and sync every ManagedHost, time for all requests to succeed,
//! request→dispatch latency (request created → `status.operation.started`, recorded just before the
//! backend call) p50/p99, and the controller's peak RSS (VmHWM) until the ManagedHosts mirror the
//! new OS. Then a restart: a new controller process over everything (its simulated fleets start
//! again, so every ManagedHost changes back), the time to re-sync every ManagedHost and that
//! process's peak RSS; no finished request may change.
//!
//! Both API servers are measured in one run (`OSPROV_BENCH_API=embedded|real|both`, default
//! both): the embedded API in this process, and the real kube-apiserver on etcd started on
//! loopback by the test harness's control plane (tests/cluster/real.rs). The table also gives the
//! API server's writes per second during convergence (growth of its revision).
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
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../tests/cluster/real.rs"]
mod real;

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Real,
}

/// The API server a run measures: the embedded API in this process, or the real control plane
/// (kube-apiserver + etcd, built from their Go modules; see tests/cluster/real.rs).
struct Cluster {
    kubeconfig: PathBuf,
    client: kube::Client,
    embedded: Option<osprov::apiserver::ApiServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Embedded => {
                let mut config = osprov::apiserver::Config::new(osprov::api::crds());
                config.watch_history = 200_000;
                let server = osprov::apiserver::serve(config)
                    .await
                    .expect("embedded API");
                let kubeconfig = dir.path().join("kubeconfig");
                server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
                let client = server.client().await.expect("client");
                Cluster {
                    kubeconfig,
                    client,
                    embedded: Some(server),
                    _dir: dir,
                }
            }
            Backend::Real => {
                let plane = tokio::task::spawn_blocking(real::plane)
                    .await
                    .expect("control plane");
                let kc =
                    kube::config::Kubeconfig::read_from(&plane.kubeconfig).expect("kubeconfig");
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .expect("config");
                Cluster {
                    kubeconfig: plane.kubeconfig.clone(),
                    client: kube::Client::try_from(config).expect("client"),
                    embedded: None,
                    _dir: dir,
                }
            }
        }
    }
}

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
    // OSPROV_BENCH_API=embedded|real|both (default both): the API server(s) to measure, one
    // after the other in this run.
    let which = std::env::var("OSPROV_BENCH_API").unwrap_or_else(|_| "both".into());
    let backends: Vec<Backend> = match which.as_str() {
        "embedded" => vec![Backend::Embedded],
        "real" => vec![Backend::Real],
        "both" => vec![Backend::Embedded, Backend::Real],
        other => panic!("OSPROV_BENCH_API={other}: expected embedded, real or both"),
    };
    let mut results = Vec::new();
    for b in &backends {
        results.push(run(*b, &size).await);
    }
    let col =
        |f: &dyn Fn(&Results) -> String| results.iter().map(f).collect::<Vec<_>>().join(" | ");
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mib = |m: Option<u64>| {
        m.map(|m| format!("{m} MiB"))
            .unwrap_or_else(|| "n/a".into())
    };
    let names: Vec<&str> = backends
        .iter()
        .map(|b| match b {
            Backend::Embedded => "embedded API",
            Backend::Real => "kube-apiserver + etcd",
        })
        .collect();
    println!("| metric | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    println!(
        "| hosts / dispatchers | {} |",
        col(&|_| format!("{total} / {}", size.dispatchers))
    );
    println!(
        "| discover + sync all ManagedHosts | {} |",
        col(&|r| secs(r.sync))
    );
    println!(
        "| {total} requests to Succeeded (after the last create) | {} |",
        col(&|r| secs(r.converge))
    );
    println!(
        "| from the first create to the last success | {} |",
        col(&|r| secs(r.converge_total))
    );
    println!(
        "| request→dispatch p50 / p99 | {} |",
        col(&|r| format!("{:.3} s / {:.3} s", r.p50, r.p99))
    );
    println!(
        "| API writes per second during convergence | {} |",
        col(&|r| format!("{:.0}", r.writes_per_s))
    );
    println!("| controller peak RSS | {} |", col(&|r| mib(r.rss_mib)));
    println!(
        "| restart: re-discover and re-sync all ManagedHosts | {} |",
        col(&|r| secs(r.resync))
    );
    println!(
        "| restarted controller peak RSS | {} |",
        col(&|r| mib(r.restart_rss_mib))
    );
}

struct Results {
    sync: Duration,
    converge: Duration,
    converge_total: Duration,
    p50: f64,
    p99: f64,
    rss_mib: Option<u64>,
    resync: Duration,
    restart_rss_mib: Option<u64>,
    writes_per_s: f64,
}

/// The API server's current revision (a quorum list's resourceVersion): both the embedded API
/// and etcd count every write with it, so its growth is the number of writes.
async fn revision<K>(api: &Api<K>) -> u64
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .and_then(|v| v.parse().ok())
        .expect("numeric resourceVersion")
}

async fn run(backend: Backend, size: &Size) -> Results {
    let total = size.dispatchers * size.hosts_per_dispatcher;
    let api = Cluster::start(backend).await;
    let (kubeconfig, client) = (api.kubeconfig.clone(), api.client.clone());

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
            libvirt: None,
            vsphere: None,
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
    let revision_at_first_create = revision(&requests).await;

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
                        ..Default::default()
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
    let writes = revision(&requests).await - revision_at_first_create;
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
    assert_eq!(moved, 0, "finished requests changed after the restart");
    assert_eq!(
        latencies.len(),
        total,
        "every request has a recorded dispatch"
    );
    if let Some(server) = api.embedded {
        server.shutdown().await;
    }
    Results {
        sync,
        converge,
        converge_total,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        rss_mib: rss.map(|k| k / 1024),
        resync,
        restart_rss_mib: restart_rss.map(|k| k / 1024),
        writes_per_s: writes as f64 / converge_total.as_secs_f64(),
    }
}
