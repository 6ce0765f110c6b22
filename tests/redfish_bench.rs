//! Redfish scale benchmark, osprov side by side with Ironic's client `sushy` (ignored by default;
//! see docs/redfish.md for how to run it).
//!
//! One sushy-emulator (with the SessionService of `redfish_support/session_emulator.py`) with
//! `OSPROV_BENCH_SYSTEMS` fake systems (default 1000). osprov: one Redfish dispatcher with
//! `maxConcurrent: 50`; discovery (dispatcher created → every ManagedHost written) and
//! reprovisioning every system (requests created → all Succeeded). The "installer" is the ISO
//! server: when the emulator downloads the image it reads the callback URL from the query string
//! and posts success after a short delay. sushy: `redfish_support/sushy_flow.py` does the same
//! job (discovery; media, boot override once, reset, then eject and clear) on 16 threads. Both
//! sides' HTTP requests are counted from the emulator's access log; the floor is 6 per
//! reprovision (insert, boot override, its read-back, reset, eject, clear).
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod harness;
mod redfish_support;
mod support;

use harness::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{
    CredentialsSecretRef, ManagedHost, OSDispatcher, OSDispatcherSpec, OSProvisioningRequest,
    Phase, RedfishImage, RedfishSpec, RedfishTls, SecretKeyRef,
};
use osprov::controller::settings::{MetricsAddr, Settings};
use redfish_support::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TestApi;

/// An ISO server that plays the installer: every download posts the callback it carries.
async fn installer(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/images/{name}",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                if let Some(cb) = q.get("osprov_callback").cloned() {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let http = reqwest::Client::builder().no_proxy().build().expect("client");
                        for _ in 0..20 {
                            match http.post(&cb).body("{\"status\":\"succeeded\"}").send().await {
                                Ok(r) if r.status().is_success() => return,
                                _ => tokio::time::sleep(Duration::from_millis(500)).await,
                            }
                        }
                    });
                }
                vec![0u8; 4096]
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/images/bench.iso")
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect::<BTreeMap<_, _>>(),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --test redfish_bench -- --ignored --nocapture"]
async fn redfish_scale() {
    let n: usize = std::env::var("OSPROV_BENCH_SYSTEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let api = TestApi::start().await;
    // No event stream: every power change would cost one GET of the system (the reprovision
    // flow is what is measured here).
    let emu = Emulator::start_with(n, Some(1800), false).await;
    let image = installer(Duration::from_millis(500)).await;
    let c = api.client.clone();
    let (secrets, dispatchers, hosts, requests): (
        Api<Secret>,
        Api<OSDispatcher>,
        Api<ManagedHost>,
        Api<OSProvisioningRequest>,
    ) = (
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
    );
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &secret("bmc", &[("username", USER), ("password", PASSWORD)]),
        )
        .await
        .expect("secret");
    secrets
        .create(&pp, &secret("bmc-ca", &[("ca.crt", &emu.cert_pem)]))
        .await
        .expect("secret");
    let settings = Settings {
        callback_addr: MetricsAddr(Some(([127, 0, 0, 1], free_port()).into())),
        poll_interval: Duration::from_secs(1),
        lookup_interval: Duration::from_secs(300),
        ..fast_settings()
    };
    let _ctl = RunningController::start(c.clone(), settings, Arc::new(SimRegistry::default()));
    let served_before = emu.requests().len();
    let t0 = Instant::now();
    let d = OSDispatcher::new(
        "bmc",
        OSDispatcherSpec {
            adapter: osprov::api::AdapterKind::Redfish,
            provisioner: "osp".into(),
            // No periodic re-discovery inside the measured reprovisioning.
            lookup_interval: Some("2h".into()),
            max_concurrent: Some(50),
            simulator: None,
            libvirt: None,
            vsphere: None,
            redfish: Some(RedfishSpec {
                endpoint: emu.endpoint(),
                insecure_http: false,
                credentials_secret_ref: CredentialsSecretRef {
                    name: "bmc".into(),
                    username_key: None,
                    password_key: None,
                },
                tls: Some(RedfishTls {
                    fingerprint: None,
                    ca_secret_ref: Some(SecretKeyRef {
                        name: "bmc-ca".into(),
                        key: None,
                    }),
                    insecure_skip_verify: false,
                }),
                images: ["ubuntu-24.04", "debian-12"]
                    .map(|name| RedfishImage {
                        name: name.into(),
                        url: image.clone(),
                        checksum: None,
                        kernel_args: None,
                    })
                    .to_vec(),
                systems: vec![],
                callback_timeout: None,
                requests_per_second: Some(5000),
                max_connections: Some(16),
                auth: None,
                config_medium: None,
            }),
        },
    );
    create(&dispatchers, &d).await;
    eventually(1800, "every ManagedHost", || async {
        let list = hosts.list(&Default::default()).await.ok()?;
        (list.items.len() == n && list.items.iter().all(|h| h.status.is_some())).then_some(())
    })
    .await;
    let discovery = t0.elapsed();
    let discovery_requests = emu.requests().len() - served_before;
    note(&format!(
        "discovery of {n} systems: {:.1} s, {discovery_requests} HTTP requests",
        discovery.as_secs_f64()
    ));

    // Two rounds: the first finds each system's CD device (two GETs, once per system), the
    // second is the steady state.
    let mut osprov_per = f64::NAN;
    for (round, os) in [(1, "ubuntu-24.04"), (2, "debian-12")] {
        let served_before = emu.requests().len();
        let t1 = Instant::now();
        for i in 0..n {
            create(
                &requests,
                &request(&format!("r{round}-{i}"), &format!("node-{i}"), os),
            )
            .await;
        }
        eventually(3600, "every request Succeeded", || async {
            let list = requests.list(&Default::default()).await.ok()?;
            let mine = |r: &&OSProvisioningRequest| {
                r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("r{round}-")))
            };
            let phase = |p| {
                list.items
                    .iter()
                    .filter(mine)
                    .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(p))
                    .count()
            };
            assert_eq!(phase(Phase::Failed), 0, "no request may fail");
            (phase(Phase::Succeeded) == n).then_some(())
        })
        .await;
        let total = t1.elapsed();
        let reqs = emu.requests();
        let during = &reqs[served_before..];
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for (m, p, _) in during {
            let kind = p.rsplit('/').next().unwrap_or("").to_string();
            let kind = if kind.contains('-') {
                "<system>".into()
            } else {
                kind
            };
            *by_kind.entry(format!("{m} {kind}")).or_default() += 1;
        }
        let inserts = emu.count("POST", "", "/Actions/VirtualMedia.InsertMedia");
        let resets = emu.count("POST", "", "/Actions/ComputerSystem.Reset");
        assert_eq!(
            (inserts, resets),
            (round * n, round * n),
            "exactly one insert and one reset per system and round"
        );
        osprov_per = during.len() as f64 / n as f64;
        note(&format!(
            "osprov round {round}: reprovisioning {n} systems (maxConcurrent 50): {:.1} s, {} HTTP requests = {osprov_per:.2} per reprovision ({:.2}x the minimum of 6); logins so far: {}; by kind: {by_kind:?}",
            total.as_secs_f64(),
            during.len(),
            osprov_per / 6.0,
            emu.count("POST", "/SessionService/Sessions", ""),
        ));
    }

    // The same job with sushy, against the same emulator (its systems now in a new state).
    let ca = emu.dir.path().join("cert.pem");
    let served_before = emu.requests().len();
    let out = std::process::Command::new(venv_bin("python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/redfish_support/sushy_flow.py"
        ))
        .args([
            &emu.endpoint(),
            &ca.display().to_string(),
            USER,
            PASSWORD,
            &image,
            "16",
        ])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("python runs sushy_flow.py");
    assert!(
        out.status.success(),
        "sushy_flow.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("sushy_flow.py prints JSON");
    let reqs = emu.requests();
    let sushy_reqs = &reqs[served_before..];
    let discovery_n = sushy_reqs
        .iter()
        .take_while(|(_, p, _)| !p.contains("VirtualMedia"))
        .count();
    let sushy_per = (sushy_reqs.len() - discovery_n) as f64 / n as f64;
    note(&format!(
        "sushy: discovery {:.1} s, {discovery_n} HTTP requests (osprov: {discovery_requests}); reprovisioning {n} systems on 16 threads: {:.1} s, {:.2} HTTP requests per reprovision ({:.2}x the minimum of 6)",
        report["discovery_s"].as_f64().unwrap_or(f64::NAN),
        report["reprovision_s"].as_f64().unwrap_or(f64::NAN),
        sushy_per,
        sushy_per / 6.0,
    ));
    assert!(
        osprov_per <= 1.2 * 6.0 + 1e-9,
        "osprov spends {osprov_per:.2} requests per reprovision, more than 1.2x the minimum"
    );
    assert!(
        osprov_per <= sushy_per,
        "osprov spends more requests per reprovision ({osprov_per:.2}) than sushy ({sushy_per:.2})"
    );
}
