//! Leader election under faults (issue 13), on both API backends. Two controller replicas share
//! one simulated backend, whose ledger (reprovision calls per token, starts per host) lives
//! outside both. While requests keep arriving, a seeded driver strikes the current leader at
//! random moments: it either kills it (every task aborted at once, releasing nothing, as a
//! SIGKILL does) or cuts it off the API (a proxy that stops forwarding), and brings a fresh
//! replica back after a random pause. A sampler checks every 10 ms that no two live replicas
//! lead at once; at the end every request has succeeded and the ledger shows each one started
//! exactly once. The seed is printed; `OSPROV_FAULT_SEED` replays the driver's choices.
mod cluster;
mod harness;
mod replica;
mod support;

use cluster::{proxy::Proxy, TestCluster};
use harness::*;
use kube::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

on_both_backends!(no_two_leaders_act_and_nothing_starts_twice_under_kills_and_partitions);

const FAULTS: usize = 10;
const HOSTS: usize = 6;
const REQUESTS: usize = 18;

type Slots = Arc<Mutex<[Option<(Replica, Proxy)>; 2]>>;

async fn replica(t: &TestCluster, sims: &Arc<SimRegistry>, identity: &str) -> (Replica, Proxy) {
    let proxy = Proxy::start(t.api_addr()).await;
    let r = Replica::start(
        identity,
        t.client_via(&proxy, identity).await,
        fast_settings_in(&t.ns),
        Some(election_in(identity, &t.ns)),
        sims.clone(),
    );
    (r, proxy)
}

fn leader(slots: &Slots) -> Option<usize> {
    let s = slots.lock().unwrap_or_else(|p| p.into_inner());
    (0..2).find(|&i| {
        s[i].as_ref()
            .is_some_and(|(r, _)| !r.finished() && r.leading())
    })
}

async fn no_two_leaders_act_and_nothing_starts_twice_under_kills_and_partitions(t: TestCluster) {
    let seed: u64 = std::env::var("OSPROV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fault seed {seed} ({FAULTS} faults; OSPROV_FAULT_SEED={seed} replays the driver)");
    let mut rng = StdRng::seed_from_u64(seed);
    let sims = Arc::new(SimRegistry::default());
    let requests: Api<OSProvisioningRequest> = t.api();
    let dispatchers: Api<OSDispatcher> = t.api();
    let hosts: Api<ManagedHost> = t.api();

    let slots: Slots = Arc::new(Mutex::new([
        Some(replica(&t, &sims, "r0-0").await),
        Some(replica(&t, &sims, "r1-0").await),
    ]));
    create(
        &dispatchers,
        &sim_dispatcher("sim", sim(HOSTS as i32, 1500)),
    )
    .await;
    eventually(60, "the ManagedHosts", || async {
        let l = hosts.list(&Default::default()).await.ok()?;
        (l.items.len() == HOSTS && l.items.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;

    // The sampler: live replicas that believe they lead, every 10 ms.
    let done = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (slots, done, overlaps) = (slots.clone(), done.clone(), overlaps.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let leading = {
                    let s = slots.lock().unwrap_or_else(|p| p.into_inner());
                    s.iter()
                        .flatten()
                        .filter(|(r, _)| !r.finished() && r.leading())
                        .count()
                };
                if leading > 1 {
                    overlaps.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Requests keep arriving; each asks its host for another OS than the one before.
    let producer = {
        let requests = requests.clone();
        tokio::spawn(async move {
            for k in 0..REQUESTS {
                let os = if (k / HOSTS).is_multiple_of(2) {
                    "rocky-9"
                } else {
                    "debian-12"
                };
                let host = format!("sim-{:03}", k % HOSTS);
                create(&requests, &request(&format!("r{k}"), &host, os)).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };

    let mut kills = 0;
    for fault in 1..=FAULTS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let i = eventually(30, "a leader", || async { leader(&slots) }).await;
        let kill = rng.random_bool(0.5);
        let struck = slots.lock().unwrap_or_else(|p| p.into_inner())[i].take();
        let (r, proxy) = struck.expect("the leader's slot");
        if kill {
            kills += 1;
            r.kill().await;
        } else {
            proxy.cut();
            let mut r = r;
            tokio::time::timeout(Duration::from_secs(10), r.wait())
                .await
                .expect("a leader cut off the API stops")
                .expect_err("it stops because it lost its lease");
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2000))).await;
        let fresh = replica(&t, &sims, &format!("r{i}-{fault}")).await;
        slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(fresh);
    }
    producer.await.expect("producer");
    println!(
        "{FAULTS} faults: {kills} kills, {} partitions",
        FAULTS - kills
    );

    let finished = eventually(180, "every request Succeeded", || async {
        let l = requests.list(&Default::default()).await.ok()?;
        let done = l
            .items
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded));
        (done.count() == REQUESTS).then_some(l.items)
    })
    .await;
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "two live replicas led at once (seed {seed})"
    );

    // The ledger: each request that reprovisioned started once, on its host, and nothing else.
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    for r in &finished {
        let st = r.status.as_ref().expect("status");
        if st.reason.as_deref() == Some("Provisioned") {
            *expected.entry(r.spec.host.clone()).or_default() += 1;
        }
    }
    let stats = sims.get(&t.key("sim")).expect("fleet").stats();
    assert_eq!(
        stats.started_per_host, expected,
        "starts in the backend per host vs requests that reprovisioned (seed {seed}): {stats:?}"
    );
    assert!(
        stats.reprovision_calls.len() <= REQUESTS,
        "more tokens than requests (seed {seed}): {stats:?}"
    );
    println!(
        "starts per host {:?}; requests that reprovisioned per host {expected:?}",
        stats.started_per_host
    );
    drop(slots);
}
