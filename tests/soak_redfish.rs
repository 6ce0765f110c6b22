//! The fault-injection soak with a Redfish dispatcher against the real sushy-tools emulator
//! (issue 13), at a smaller size than the simulator soak: the real `osprov controller` binary is
//! SIGKILLed and restarted every round, the BMC is killed and restarted (it keeps its state
//! directory), the API server (embedded, or kube-apiserver on etcd in the `_real` tests) restarts
//! on its data, and a proxy injects 409s and slow answers.
//! The driver plays the installers: when a system has the installer ISO inserted, it reports
//! success to the callback URL in the image URL (retrying as a real installer does).
//!
//! The ledger lives outside the controller: the emulator's access log (every InsertMedia,
//! EjectMedia and reset it answered) and the ISO server's record of each download, whose URL
//! carries the operation's key (`<request uid>-<generation>-<attempt>`). Checked at the end:
//! no ISO fetched for a key that is not a request the driver made; no request with more keys
//! than its attempts; per system, never a second insert before the eject of the first (one
//! operation per host), resets never more than inserts, inserts never more than the keys of the
//! requests for it (no token inserted twice); every request still there ends terminal.
//!
//! `redfish_soak_smoke` and `redfish_soak_smoke_real` run in the suite; `redfish_soak` and
//! `redfish_soak_real` (ignored) are the size in `docs/testing.md`.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod redfish_support;
mod soak_support;
mod support;

use cluster::Backend;
use harness::{free_port, report, request};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest};
use redfish_support::*;
use soak_support::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const NS: &str = "soak";
const OS: [&str; 2] = ["ubuntu-24.04", "debian-12"];

#[derive(Clone, Copy, Debug)]
struct Size {
    systems: usize,
    requests: usize,
    kills: usize,
}

const SMOKE: Size = Size {
    systems: 3,
    requests: 8,
    kills: 5,
};

const FULL: Size = Size {
    systems: 8,
    requests: 60,
    kills: 40,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_soak_smoke() {
    soak(SMOKE, Backend::Embedded).await;
}

/// The same on the real kube-apiserver (restarted on its etcd for the API restarts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_soak_smoke_real() {
    soak(SMOKE, Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the Redfish soak at the README's size; run it with --ignored"]
async fn redfish_soak() {
    soak(FULL, Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the Redfish soak at the README's size on kube-apiserver; run it with --ignored"]
async fn redfish_soak_real() {
    soak(FULL, Backend::Real).await;
}

/// The operation key in a download's query (`osprov_callback=<url>/callback/<key>.<secret>`).
fn key_of(query: &str) -> Option<String> {
    let encoded = query.split("osprov_callback=").nth(1)?;
    let url = percent_encoding::percent_decode_str(encoded.split('&').next()?)
        .decode_utf8()
        .ok()?
        .to_string();
    let token = url.rsplit("/callback/").next()?;
    Some(token.split('.').next()?.to_string())
}

/// The callback URL in an image URL.
fn callback_of(image: &str) -> Option<String> {
    let encoded = image.split("osprov_callback=").nth(1)?;
    percent_encoding::percent_decode_str(encoded.split('&').next()?)
        .decode_utf8()
        .ok()
        .map(|u| u.to_string())
}

async fn soak(size: Size, backend: Backend) {
    let seed = seed();
    println!("redfish soak: seed {seed} (OSPROV_SOAK_SEED replays it), {backend:?}, {size:?}");
    let t0 = Instant::now();
    let stage = Stage::start(backend, seed, NS).await;
    let (api, client) = (stage.api.clone(), stage.client.clone());

    let mut emu = Emulator::start(size.systems).await;
    let iso = IsoServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    create_bmc_secrets(&secrets, &emu, PASSWORD).await;
    let dispatchers: Api<OSDispatcher> = Api::namespaced(client.clone(), NS);
    let mut spec = redfish_spec(&emu, &iso, true);
    spec.images.push(osprov::api::RedfishImage {
        name: OS[1].into(),
        url: iso.url(OS[1]),
        checksum: None,
        kernel_args: None,
    });
    create_or_get(&dispatchers, &redfish_dispatcher("bmc", spec)).await;
    let callback = format!("127.0.0.1:{}", free_port());
    let mut ctl = ControllerProcess::new(&stage.proxied, NS);
    ctl.extra = vec!["--callback-addr".into(), callback.clone()];
    ctl.start();
    let hosts: Api<ManagedHost> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while hosts
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
        < size.systems
    {
        assert!(Instant::now() < deadline, "systems not mirrored");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The installers: report success for every image inserted, once it was accepted.
    let emu_view = Arc::new(emu.view());
    let stop = Arc::new(AtomicBool::new(false));
    let installers = {
        let (emu_view, stop) = (emu_view.clone(), stop.clone());
        let systems = size.systems;
        tokio::spawn(async move {
            let mut reported = BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                for i in 0..systems {
                    let path = format!("/redfish/v1/Systems/{}/VirtualMedia/Cd", system_uuid(i));
                    let Some(media) = emu_view.try_get(&path).await else {
                        continue;
                    };
                    let image = media["Image"].as_str().unwrap_or_default().to_string();
                    if media["Inserted"] != true || reported.contains(&image) {
                        continue;
                    }
                    if let Some(url) = callback_of(&image) {
                        if report(&url, r#"{"status":"succeeded"}"#).await == 200 {
                            reported.insert(image);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            reported.len()
        })
    };

    // Requests, some deleted mid-flight.
    let requests: Api<OSProvisioningRequest> = Api::namespaced(client.clone(), NS);
    let made: Arc<Mutex<BTreeMap<String, (String, String)>>> = Arc::default();
    let spacing = Duration::from_millis((size.kills as u64 * 2500 / size.requests as u64).max(50));
    let maker = {
        let (requests, made) = (requests.clone(), made.clone());
        let mut rng = Rng::new(seed ^ 0xabc);
        tokio::spawn(async move {
            for k in 0..size.requests {
                let host = format!("node-{}", rng.below(size.systems as u64));
                let name = format!("r-{k:04}");
                let mut r = request(&name, &host, OS[rng.below(2) as usize]);
                r.spec.max_attempts = Some(2);
                let created = create_or_get(&requests, &r).await;
                let uid = created.metadata.uid.clone().unwrap_or_default();
                made.lock().await.insert(uid, (name.clone(), host));
                if rng.unit() < 0.15 {
                    let (requests, later) = (requests.clone(), rng.millis(200, 4000));
                    tokio::spawn(async move {
                        tokio::time::sleep(later).await;
                        delete(&requests, &name).await;
                    });
                }
                tokio::time::sleep(spacing).await;
            }
        })
    };

    // Faults: every round ends with a SIGKILL of the controller.
    let mut rng = Rng::new(seed);
    let (mut bmc_restarts, mut api_restarts) = (0, 0);
    for k in 0..size.kills {
        tokio::time::sleep(rng.millis(500, 4000)).await;
        let roll = match k {
            0 => 0.0,
            1 => 0.35,
            _ => rng.unit(),
        };
        if roll < 0.3 {
            emu.stop();
            tokio::time::sleep(rng.millis(300, 3000)).await;
            emu.restart().await;
            bmc_restarts += 1;
        } else if roll < 0.4 {
            api.lock().await.restart(rng.millis(100, 2000)).await;
            api_restarts += 1;
        }
        ctl.kill();
        tokio::time::sleep(rng.millis(0, 1000)).await;
        ctl.start();
    }
    maker.await.expect("request maker");
    println!(
        "redfish soak: faults done after {:.1} s: {} controller kills, {bmc_restarts} BMC restarts, {api_restarts} API restarts, {}",
        t0.elapsed().as_secs_f64(),
        size.kills,
        stage.proxy_report(),
    );
    let phases = wait_all_terminal(&requests, 600).await;
    stop.store(true, Ordering::SeqCst);
    let reported = installers.await.expect("installers");
    ctl.kill();

    // The ledger.
    let made = made.lock().await.clone();
    let mut v = BTreeMap::<&str, Vec<String>>::new();
    let keys: Vec<String> = iso
        .queries
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|q| key_of(q))
        .collect();
    let mut keys_per_request: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut keys_per_host: HashMap<String, BTreeSet<String>> = HashMap::new();
    for key in &keys {
        // <uid>-<generation>-<attempt>; the uid has dashes of its own.
        let mut parts = key.rsplitn(3, '-');
        let (_attempt, _generation, uid) = (parts.next(), parts.next(), parts.next());
        match uid.and_then(|u| made.get(u).map(|m| (u, m))) {
            Some((u, (_, host))) => {
                keys_per_request
                    .entry(u.to_string())
                    .or_default()
                    .insert(key.clone());
                keys_per_host
                    .entry(host.clone())
                    .or_default()
                    .insert(key.clone());
            }
            None => v
                .entry("ISO fetched without a request")
                .or_default()
                .push(key.clone()),
        }
    }
    for (uid, ks) in &keys_per_request {
        if ks.len() > 2 {
            v.entry("requests over their attempts")
                .or_default()
                .push(format!("{uid}: {ks:?}"));
        }
    }
    let log = emu.requests();
    let mut inserts_total = 0;
    for i in 0..size.systems {
        let host = format!("node-{i}");
        let uuid = system_uuid(i);
        let ok = |suffix: &str| {
            log.iter()
                .filter(|(m, p, s)| {
                    m == "POST" && p.contains(&uuid) && p.ends_with(suffix) && *s < 300
                })
                .count()
        };
        let (inserts, resets) = (
            ok("/Actions/VirtualMedia.InsertMedia"),
            ok("/Actions/ComputerSystem.Reset"),
        );
        inserts_total += inserts;
        // Inserts and ejects alternate: a second insert before an eject is a second operation.
        let mut inserted = false;
        for (_, p, s) in log
            .iter()
            .filter(|(m, p, s)| m == "POST" && p.contains(&uuid) && *s < 300)
        {
            let _ = s;
            if p.ends_with("/Actions/VirtualMedia.InsertMedia") {
                if inserted {
                    v.entry("two operations on one host")
                        .or_default()
                        .push(host.clone());
                }
                inserted = true;
            } else if p.ends_with("/Actions/VirtualMedia.EjectMedia") {
                inserted = false;
            }
        }
        if resets > inserts {
            v.entry("resets without an insert")
                .or_default()
                .push(format!("{host}: {resets} resets, {inserts} inserts"));
        }
        let allowed = keys_per_host.get(&host).map_or(0, BTreeSet::len);
        if inserts > allowed {
            v.entry("a token inserted twice").or_default().push(format!(
                "{host}: {inserts} inserts for {allowed} operation keys"
            ));
        }
    }
    println!(
        "redfish soak: {} requests, {inserts_total} inserts, {} operation keys, {reported} installer reports; final phases {phases:?}; {:.1} s in all",
        made.len(),
        keys.iter().collect::<BTreeSet<_>>().len(),
        t0.elapsed().as_secs_f64()
    );
    let counts: Vec<String> = [
        "ISO fetched without a request",
        "requests over their attempts",
        "two operations on one host",
        "resets without an insert",
        "a token inserted twice",
    ]
    .iter()
    .map(|k| format!("{k} {}", v.get(k).map_or(0, Vec::len)))
    .collect();
    println!("redfish soak: violations: {}", counts.join(", "));
    assert!(v.is_empty(), "seed {seed}: {v:#?}");
    stage.stop().await;
}
