//! Benchmark of the embedded API (not a test): creates and updates per second, and watch-delivery
//! latency, at 10,000 objects with 10 watchers, through the real kube client over HTTP.
//!
//! Run: `cargo bench --bench apiserver` (env: BENCH_OBJECTS, BENCH_WATCHERS, BENCH_CONCURRENCY,
//! BENCH_TLS=1 for HTTPS, BENCH_PERSIST=1 to write through to redb in a temporary directory).
//! Latency is measured from just before a write is sent to the moment a watcher reads the event.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::Api;
use serde_json::json;
use tokio::sync::Mutex;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Phase {
    name: &'static str,
    ops: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

/// Runs `n` writes with `concurrency` in flight; `write(i)` does write i.
async fn run_writes<F, Fut>(n: usize, concurrency: usize, write: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(&write)
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    start.elapsed()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; run as a test (`cargo test --all-targets`) it is a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let objects = env("BENCH_OBJECTS", if full { 10_000 } else { 200 });
    let watchers = env("BENCH_WATCHERS", 10);
    let concurrency = env("BENCH_CONCURRENCY", 32);
    let dir = tempfile::tempdir()?;
    let mut config = osprov::apiserver::Config::new(osprov::api::crds());
    config.tls = env("BENCH_TLS", 0) == 1;
    if env("BENCH_PERSIST", 0) == 1 {
        config.data_dir = Some(dir.path().join("data"));
    }
    config.watch_history = objects * 3;
    let server = osprov::apiserver::serve(config.clone()).await?;
    let client = server.client().await?;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "osprov.io",
        "v1alpha1",
        "OSProvisioningRequest",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);

    // Send times per object name and phase, read by the watchers.
    let epoch = Instant::now();
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let lat: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(), Vec::new()]));
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let api = api.clone();
        let lat = lat.clone();
        let rv = rv.clone();
        let expected = objects * 2;
        handles.push(tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await?
                .boxed();
            let mut seen = 0;
            while seen < expected {
                let Some(ev) = stream.try_next().await? else {
                    break;
                };
                let (phase, obj) = match ev {
                    WatchEvent::Added(o) => (0, o),
                    WatchEvent::Modified(o) => (1, o),
                    _ => continue,
                };
                let sent: f64 = obj
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("bench/sent-us"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                let now = epoch.elapsed().as_micros() as f64;
                lat.lock().await[phase].push((now - sent) / 1000.0);
                seen += 1;
            }
            Ok::<_, kube::Error>(seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stamp = || epoch.elapsed().as_micros().to_string();
    let create_time = run_writes(objects, concurrency, |i| {
        let api = api.clone();
        let body = json!({"apiVersion": "osprov.io/v1alpha1", "kind": "OSProvisioningRequest",
            "metadata": {"name": format!("req-{i:05}"), "labels": {"bench": "yes"}, "annotations": {"bench/sent-us": stamp()}},
            "spec": {"host": format!("host-{}", i % 500), "os": "ubuntu-24.04"}});
        async move {
            let obj: DynamicObject = serde_json::from_value(body).expect("object");
            api.create(&PostParams::default(), &obj).await.expect("create");
        }
    })
    .await;
    let update_time = run_writes(objects, concurrency, |i| {
        let api = api.clone();
        let patch = json!({"metadata": {"annotations": {"bench/sent-us": stamp()}}, "spec": {"os": "debian-12"}});
        async move {
            api.patch(&format!("req-{i:05}"), &PatchParams::default(), &Patch::Merge(&patch)).await.expect("update");
        }
    })
    .await;
    let mut delivered = 0;
    for h in handles {
        delivered += tokio::time::timeout(Duration::from_secs(120), h).await???;
    }
    let list_start = Instant::now();
    let mut pages = 0;
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        pages += 1;
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = ListParams::default().limit(500).continue_token(&c),
            _ => break,
        }
    }
    let list_time = list_start.elapsed();
    let lat = lat.lock().await;
    let phases = [
        Phase {
            name: "create",
            ops: objects,
            elapsed: create_time,
            latencies_ms: lat[0].clone(),
        },
        Phase {
            name: "update (merge patch)",
            ops: objects,
            elapsed: update_time,
            latencies_ms: lat[1].clone(),
        },
    ];
    println!();
    println!("embedded API benchmark: {objects} objects, {watchers} watchers, {concurrency} writes in flight, tls={}, persist={}", config.tls, config.data_dir.is_some());
    println!("| phase | ops | seconds | ops/s | watch events | latency p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        let mut l = p.latencies_ms.clone();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
            p.name,
            p.ops,
            p.elapsed.as_secs_f64(),
            p.ops as f64 / p.elapsed.as_secs_f64(),
            l.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "| list all ({pages} pages of 500) | {objects} | {:.3} | | | | | |",
        list_time.as_secs_f64()
    );
    println!(
        "watch events delivered: {delivered} of {}",
        objects * 2 * watchers
    );
    server.shutdown().await;
    Ok(())
}
