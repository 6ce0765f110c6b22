//! Discovery at scale through the libvirt adapter (issue 11): a libvirt test-driver node with N
//! domains (`test:///<node.xml>`), measured twice:
//! - the adapter alone: one `discover()` (every domain listed, its metadata and info read),
//!   median of five;
//! - the real controller in this process on the embedded API: from creating the dispatcher to
//!   N ManagedHosts, and the libvirt calls that took.
//!
//! `cargo bench --bench libvirt --features libvirt` runs 1,000 domains; run without `--bench`
//! (as `cargo test --all-targets` does) it runs 20 and checks the counts.
#[path = "../tests/libvirt_support/mod.rs"]
mod libvirt_support;

use kube::api::{Api, ListParams, PostParams};
use libvirt_support::{libvirt_dispatcher, libvirt_spec, Node};
use osprov::adapter::libvirt::{LibvirtAdapter, LibvirtConfig};
use osprov::adapter::Adapter;
use osprov::api::{ManagedHost, OSDispatcher};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 1000 } else { 20 };
    let node = Node::new(n, None);
    let spec = libvirt_spec(&node.uri);
    let cfg = LibvirtConfig {
        uri: spec.uri.clone(),
        credentials: None,
        names: Vec::new(),
        labelled: false,
        image_pool: spec.image_pool.clone(),
        images: spec
            .images
            .iter()
            .map(|i| (i.name.clone(), i.volume.clone()))
            .collect(),
        root_disk: None,
        strategy: osprov::api::LibvirtStrategy::Image,
        callback_base: None,
        callback_timeout: std::time::Duration::from_secs(3600),
    };
    let adapter = LibvirtAdapter::new(cfg);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let inv = adapter.discover().await.expect("discover");
        times.push(t.elapsed());
        assert_eq!(inv.hosts.len(), n);
    }
    times.sort();
    let median = times[2];

    let server = osprov::apiserver::serve(osprov::apiserver::Config::new(osprov::api::crds()))
        .await
        .expect("embedded API");
    let client = server.client().await.expect("client");
    let settings = osprov::controller::settings::Settings {
        lookup_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ctl = tokio::spawn(osprov::controller::run(
        client.clone(),
        settings,
        async move {
            let _ = stopped.await;
        },
    ));
    let dispatchers: Api<OSDispatcher> = Api::namespaced(client.clone(), "default");
    let hosts: Api<ManagedHost> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    dispatchers
        .create(
            &PostParams::default(),
            &libvirt_dispatcher("kvm", spec, "1h"),
        )
        .await
        .expect("dispatcher");
    loop {
        let listed = hosts
            .list_metadata(&ListParams::default())
            .await
            .expect("list");
        if listed.items.len() == n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "ManagedHosts never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced = t.elapsed();
    let _ = stop.send(());
    let _ = ctl.await;
    server.shutdown().await;

    println!("| metric | value |");
    println!("|---|---|");
    println!("| domains | {n} |");
    println!(
        "| adapter `discover()` (median of 5) | {:.3} s ({:.2} ms per domain) |",
        median.as_secs_f64(),
        median.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "| dispatcher created → {n} ManagedHosts (embedded API) | {:.2} s |",
        synced.as_secs_f64()
    );
}
