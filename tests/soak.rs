//! Fault-injection soak (issue 13): simulator dispatchers whose fleets live in an `osprov
//! simulate` process of their own, the real `osprov controller` binary, and the embedded API
//! behind a proxy that injects 409s and slow answers. Requests arrive while others run, some
//! change `spec.os`, some are deleted mid-flight; meanwhile a seeded driver SIGKILLs and restarts
//! the controller, takes fleets' management software down and up, and restarts the API on its
//! data directory. At the end the simulator's ledger (every provisioning started and ended, with
//! its token) and the API are checked from outside the controller:
//! - no host reprovisioned without a request for it (every started token belongs to a request
//!   the driver made for that host), and nothing started for a request after it was gone;
//! - no token started twice, and no request started more attempts than it allows;
//! - at most one provisioning running per host at any moment, and never more per dispatcher
//!   than its `maxConcurrent`;
//! - every request still there ends in a terminal phase (none lost or stuck).
//!
//! `soak_smoke` (embedded API) and `soak_smoke_real` (kube-apiserver on etcd, restarted on its
//! data for the API restarts) run in the normal suite; `soak_full` and `soak_full_real` (ignored)
//! are the sizes in `docs/testing.md`: `cargo test --release --test soak soak_full -- --ignored
//! --nocapture`. `OSPROV_SOAK_SEED` replays a run.
mod cluster;
mod harness;
mod soak_support;
mod support;

use cluster::Backend;
use harness::{request, sim, sim_dispatcher};
use kube::api::{Api, Patch, PatchParams};
use osprov::adapter::simulator::serve::LedgerView;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, SimulatorFailures};
use soak_support::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const NS: &str = "soak";
const OS: [&str; 3] = ["ubuntu-24.04", "debian-12", "rocky-9"];

/// How big a run is.
#[derive(Clone, Copy, Debug)]
struct Size {
    dispatchers: usize,
    hosts: usize,
    requests: usize,
    kills: usize,
    max_concurrent: i32,
    provision_millis: i64,
}

/// What the driver did to one request.
#[derive(Clone, Debug, Default)]
struct Made {
    host: String,
    dispatcher: String,
    uid: String,
    /// Tokens the ledger had started for it when the driver saw it gone.
    gone_with: Option<BTreeSet<String>>,
}

const SMOKE: Size = Size {
    dispatchers: 2,
    hosts: 10,
    requests: 30,
    kills: 6,
    max_concurrent: 3,
    provision_millis: 300,
};

const FULL: Size = Size {
    dispatchers: 10,
    hosts: 100,
    requests: 2000,
    kills: 200,
    max_concurrent: 8,
    provision_millis: 800,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_smoke() {
    soak(SMOKE, Backend::Embedded).await;
}

/// The same on the real kube-apiserver (restarted on its etcd for the API restarts).
#[cfg(osprov_full_tests)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_smoke_real() {
    soak(SMOKE, Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full soak: minutes; run it with --ignored (see the README)"]
async fn soak_full() {
    soak(FULL, Backend::Embedded).await;
}

#[cfg(osprov_full_tests)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full soak on kube-apiserver: minutes; run it with --ignored (see the README)"]
async fn soak_full_real() {
    soak(FULL, Backend::Real).await;
}

async fn soak(size: Size, backend: Backend) {
    let seed = seed();
    println!("soak: seed {seed} (OSPROV_SOAK_SEED={seed} replays it), {backend:?}, {size:?}");
    let t0 = Instant::now();
    let stage = Stage::start(backend, seed, NS).await;
    let (api, client) = (stage.api.clone(), stage.client.clone());
    let simp = SimProcess::start();
    let dispatchers: Api<OSDispatcher> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..size.dispatchers)
        .map(|i| format!("fleet-{i}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut spec = sim(size.hosts as i32, size.provision_millis);
        spec.host_prefix = format!("d{i}-");
        spec.endpoint = Some(simp.url.clone());
        spec.failures = Some(SimulatorFailures {
            fail_fraction: Some(0.05),
            seed: (seed % 1_000_000) as i64 + i as i64,
            ..Default::default()
        });
        let mut d = sim_dispatcher(name, spec);
        d.spec.max_concurrent = Some(size.max_concurrent);
        d.spec.lookup_interval = Some("10s".into());
        create_or_get(&dispatchers, &d).await;
    }
    let mut ctl = ControllerProcess::new(&stage.proxied, NS);
    ctl.start();
    let hosts: Api<ManagedHost> = Api::namespaced(client.clone(), NS);
    let want = size.dispatchers * size.hosts;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = hosts.list(&Default::default()).await.map(|l| l.items.len());
        if n.as_ref().is_ok_and(|n| *n == want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{want} hosts not mirrored: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "soak: {want} hosts mirrored in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // The requests: a steady stream, with os changes and deletions mid-flight.
    let requests: Api<OSProvisioningRequest> = Api::namespaced(client.clone(), NS);
    let made: Arc<Mutex<BTreeMap<String, Made>>> = Arc::default();
    let spacing = Duration::from_millis((size.kills as u64 * 1700 / size.requests as u64).max(5));
    let maker = {
        let (requests, made, simp_url) = (requests.clone(), made.clone(), simp.url.clone());
        let names = names.clone();
        let mut rng = Rng::new(seed ^ 0xabc);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            for k in 0..size.requests {
                let d = rng.below(size.dispatchers as u64) as usize;
                let host = format!("d{d}-{:03}", rng.below(size.hosts as u64));
                let os = OS[rng.below(3) as usize];
                let name = format!("r-{k:05}");
                let mut r = request(&name, &host, os);
                r.spec.max_attempts = Some(2);
                let created = create_or_get(&requests, &r).await;
                made.lock().await.insert(
                    name.clone(),
                    Made {
                        host,
                        dispatcher: names[d].clone(),
                        uid: created.metadata.uid.clone().unwrap_or_default(),
                        gone_with: None,
                    },
                );
                let roll = rng.unit();
                if roll < 0.1 {
                    let (requests, name) = (requests.clone(), name.clone());
                    let later = rng.millis(100, 2500);
                    let os2 = OS[rng.below(3) as usize];
                    tokio::spawn(async move {
                        tokio::time::sleep(later).await;
                        let p = serde_json::json!({"spec": {"os": os2}});
                        let _ = requests
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                            .await;
                    });
                } else if roll < 0.2 {
                    let (requests, made, name) = (requests.clone(), made.clone(), name.clone());
                    let (later, http, simp_url) =
                        (rng.millis(100, 2500), http.clone(), simp_url.clone());
                    let fleet = names[d].clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(later).await;
                        delete(&requests, &name).await;
                        // Gone (its finalizer released): from now on nothing may start for it.
                        // Seen gone twice, a second apart: a kube-apiserver that is starting
                        // answers 404 for a custom resource before its CRD is served again.
                        let mut seen_gone = 0;
                        for _ in 0..1200 {
                            if matches!(requests.get_opt(&name).await, Ok(None)) {
                                seen_gone += 1;
                                if seen_gone == 2 {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                            seen_gone = 0;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let url = format!("{simp_url}/v1/fleets/{NS}/{fleet}/ledger");
                        let ledger: Option<LedgerView> = match http.get(&url).send().await {
                            Ok(r) => r.json().await.ok(),
                            Err(_) => None,
                        };
                        let mut m = made.lock().await;
                        if let (Some(l), Some(entry)) = (ledger, m.get_mut(&name)) {
                            entry.gone_with = Some(started_for(&l, &entry.uid));
                        }
                    });
                }
                tokio::time::sleep(spacing).await;
            }
        })
    };

    // The faults.
    let mut rng = Rng::new(seed);
    let (mut outages, mut api_restarts) = (0, 0);
    for k in 0..size.kills {
        tokio::time::sleep(rng.millis(200, 3000)).await;
        // The first fault is a backend outage and the second an API restart, so even the smoke
        // size has each kind; later ones are drawn. Both happen while the controller runs; every
        // round ends with a SIGKILL and a fresh controller.
        let roll = match k {
            0 => 0.0,
            1 => 0.12,
            _ => rng.unit(),
        };
        if roll < 0.1 {
            let fleet = &names[rng.below(names.len() as u64) as usize];
            simp.outage(NS, fleet, true).await;
            tokio::time::sleep(rng.millis(500, 4000)).await;
            simp.outage(NS, fleet, false).await;
            outages += 1;
        } else if roll < 0.15 {
            api.lock().await.restart(rng.millis(100, 2000)).await;
            api_restarts += 1;
            tokio::time::sleep(rng.millis(0, 1500)).await;
        }
        ctl.kill();
        tokio::time::sleep(rng.millis(0, 1000)).await;
        ctl.start();
    }
    maker.await.expect("request maker");
    println!(
        "soak: faults done after {:.1} s: {} kills, {outages} backend outages, {api_restarts} API restarts, {}",
        t0.elapsed().as_secs_f64(),
        size.kills,
        stage.proxy_report(),
    );

    // Every request still there reaches a terminal phase.
    let phases = wait_all_terminal(&requests, 600).await;
    ctl.kill();

    // The ledger, checked from outside.
    let made = made.lock().await.clone();
    let by_uid: HashMap<&str, (&String, &Made)> =
        made.iter().map(|(n, m)| (m.uid.as_str(), (n, m))).collect();
    let mut v = Violations::default();
    let mut started = 0;
    for fleet in &names {
        let l = simp.ledger(NS, fleet).await;
        v.check_fleet(fleet, &l, size.max_concurrent, &by_uid);
        started += l.entries.iter().filter(|e| e.event == "started").count();
    }
    for (name, m) in &made {
        if let Some(before) = &m.gone_with {
            let mut after = BTreeSet::new();
            let l = simp.ledger(NS, &m.dispatcher).await;
            after.extend(started_for(&l, &m.uid));
            if &after != before {
                v.after_gone
                    .push(format!("{name}: {before:?} then {after:?}"));
            }
        }
    }
    println!(
        "soak: {} requests made, {started} provisionings started; final phases {phases:?}; {:.1} s in all",
        made.len(),
        t0.elapsed().as_secs_f64()
    );
    println!("soak: violations: {}", v.summary());
    assert!(v.is_empty(), "seed {seed}: {v:#?}");
    stage.stop().await;
}

/// The tokens of request `uid` the ledger shows started.
fn started_for(l: &LedgerView, uid: &str) -> BTreeSet<String> {
    l.entries
        .iter()
        .filter(|e| e.event == "started" && e.token.split('/').next() == Some(uid))
        .map(|e| e.token.clone())
        .collect()
}

#[derive(Debug, Default)]
struct Violations {
    without_request: Vec<String>,
    started_twice: Vec<String>,
    too_many_attempts: Vec<String>,
    two_on_one_host: Vec<String>,
    over_max_concurrent: Vec<String>,
    after_gone: Vec<String>,
}

impl Violations {
    fn is_empty(&self) -> bool {
        self.summary().split(", ").all(|p| p.ends_with(" 0"))
    }

    fn summary(&self) -> String {
        format!(
            "hosts reprovisioned without a request {}, tokens started twice {}, requests over their attempts {}, two provisionings on one host {}, dispatchers over maxConcurrent {}, starts after a request was gone {}",
            self.without_request.len(),
            self.started_twice.len(),
            self.too_many_attempts.len(),
            self.two_on_one_host.len(),
            self.over_max_concurrent.len(),
            self.after_gone.len()
        )
    }

    fn check_fleet(
        &mut self,
        fleet: &str,
        l: &LedgerView,
        max_concurrent: i32,
        by_uid: &HashMap<&str, (&String, &Made)>,
    ) {
        let mut seen = BTreeSet::new();
        let mut per_request: HashMap<(String, String), usize> = HashMap::new();
        let mut running: HashMap<String, String> = HashMap::new();
        let mut in_flight = 0usize;
        let mut most = 0usize;
        for e in &l.entries {
            if e.event == "started" {
                let mut parts = e.token.split('/');
                let (uid, generation) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                match by_uid.get(uid) {
                    Some((_, m)) if m.host == e.host => {}
                    other => self.without_request.push(format!(
                        "{fleet}: {} on {} (request {:?})",
                        e.token,
                        e.host,
                        other.map(|(n, m)| (n.as_str(), m.host.as_str()))
                    )),
                }
                if !seen.insert(e.token.clone()) {
                    self.started_twice.push(format!("{fleet}: {}", e.token));
                }
                let n = per_request
                    .entry((uid.to_string(), generation.to_string()))
                    .or_default();
                *n += 1;
                if *n > 2 {
                    self.too_many_attempts
                        .push(format!("{fleet}: {uid} generation {generation}: {n}"));
                }
                if let Some(other) = running.insert(e.host.clone(), e.token.clone()) {
                    self.two_on_one_host.push(format!(
                        "{fleet}: {} while {other} ran on {}",
                        e.token, e.host
                    ));
                }
                in_flight += 1;
                most = most.max(in_flight);
            } else if running.get(&e.host) == Some(&e.token) {
                running.remove(&e.host);
                in_flight = in_flight.saturating_sub(1);
            }
        }
        let limit = usize::try_from(max_concurrent).unwrap_or(0);
        if most > limit || l.max_in_flight > limit {
            self.over_max_concurrent.push(format!(
                "{fleet}: {most} running at once by the ledger, {} by the fleet, limit {limit}",
                l.max_in_flight
            ));
        }
    }
}
