//! Hostile BMC answers for the Redfish adapter (issue 13). sushy-tools always answers well, so a
//! seeded generator plays the BMC here: each answer is a valid Redfish document for its path, or
//! one made hostile — truncated, a value of the wrong type, a link or key missing, not JSON, empty,
//! 100,000 levels deep, an unexpected status, a task monitor. The adapter's subscribe, discover,
//! reprovision, operation lookup and cancel run against it for many rounds (a fresh adapter each
//! round, so the service root is fuzzed too). Every call must come back within its deadline with a
//! result or an error that says something, and nothing may panic, in the call or in the tasks the
//! adapter spawns. The seed is printed; `OSPROV_FUZZ_SEED` replays (the calls run concurrently,
//! so a replay is close, not exact), `OSPROV_FUZZ_ROUNDS` sizes it.
use osprov::adapter::redfish::client::ClientConfig;
use osprov::adapter::redfish::{RedfishAdapter, RedfishConfig};
use osprov::adapter::store::MemoryStore;
use osprov::adapter::Adapter;
use osprov::api::{RedfishAuth, RedfishImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The valid document for `path`, if it names one.
fn valid(path: &str) -> Option<Value> {
    let p = path.trim_end_matches('/');
    let sys = |n: &str| format!("/redfish/v1/Systems/{n}");
    Some(match p {
        "/redfish/v1" => {
            json!({"@odata.id": "/redfish/v1", "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
            "EventService": {"@odata.id": "/redfish/v1/EventService"}})
        }
        "/redfish/v1/Systems" => {
            json!({"Members": [{"@odata.id": sys("1")}, {"@odata.id": sys("2")}]})
        }
        "/redfish/v1/EventService" => {
            json!({"ServiceEnabled": true, "ServerSentEventUri": "/redfish/v1/EventService/SSE"})
        }
        "/redfish/v1/TaskService/Tasks/1" => json!({"TaskState": "Completed"}),
        _ => {
            let rest = p.strip_prefix("/redfish/v1/Systems/")?;
            let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let base = sys(id);
            match tail {
                "" => json!({"@odata.id": base, "Id": id, "Name": format!("node-{id}"),
                    "PowerState": "On", "UUID": format!("uuid-{id}"),
                    "Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled",
                             "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd", "Hdd"]},
                    "EthernetInterfaces": {"@odata.id": format!("{base}/EthernetInterfaces")},
                    "VirtualMedia": {"@odata.id": format!("{base}/VirtualMedia")},
                    "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]},
                    "Actions": {"#ComputerSystem.Reset": {"target": format!("{base}/Actions/ComputerSystem.Reset"),
                        "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"]}}}),
                "EthernetInterfaces" => {
                    json!({"Members": [{"@odata.id": format!("{base}/EthernetInterfaces/nic0")}]})
                }
                "EthernetInterfaces/nic0" => json!({"MACAddress": "52:54:00:00:00:01"}),
                "VirtualMedia" => {
                    json!({"Members": [{"@odata.id": format!("{base}/VirtualMedia/Cd")}]})
                }
                "VirtualMedia/Cd" => {
                    json!({"@odata.id": format!("{base}/VirtualMedia/Cd"), "MediaTypes": ["CD", "DVD"],
                    "Image": "http://x/old.iso", "Inserted": true,
                    "Actions": {"#VirtualMedia.InsertMedia": {"target": format!("{base}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia")},
                                "#VirtualMedia.EjectMedia": {"target": format!("{base}/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia")}}})
                }
                _ => return None,
            }
        }
    })
}

/// A value of some JSON type, to put where another type belongs.
fn any_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => Value::Null,
        1 => json!(rng.random::<i64>()),
        2 => json!(rng.random::<bool>()),
        3 => json!("x".repeat(rng.random_range(0..2000))),
        4 => json!([1, "two", null]),
        5 => json!({"@odata.id": 7}),
        _ => json!(-0.5),
    }
}

/// Replace or drop one value somewhere in `doc`.
fn mangle(doc: &mut Value, rng: &mut StdRng, drop: bool) {
    match doc {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            if rng.random_bool(0.5) {
                if let Some(inner) = map.get_mut(k) {
                    if inner.is_object() || inner.is_array() {
                        return mangle(inner, rng, drop);
                    }
                }
            }
            if drop {
                map.remove(k);
            } else {
                map.insert(k.clone(), any_value(rng));
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            if drop {
                items.remove(i);
            } else {
                items[i] = any_value(rng);
            }
        }
        other => *other = any_value(rng),
    }
}

/// One answer of the hostile BMC: status, headers, body.
fn answer(
    method: &str,
    path: &str,
    rng: &mut StdRng,
) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let doc = if method == "GET" { valid(path) } else { None };
    let ok: (u16, Vec<(&'static str, String)>, Vec<u8>) = match (&doc, method) {
        (Some(d), _) => (200, vec![], d.to_string().into_bytes()),
        (None, "POST") if path.ends_with("/Sessions") => (
            201,
            vec![
                ("X-Auth-Token", "t0k3n".into()),
                ("Location", "/redfish/v1/SessionService/Sessions/1".into()),
            ],
            b"{}".to_vec(),
        ),
        (None, "POST" | "PATCH" | "DELETE") => (204, vec![], Vec::new()),
        _ => (
            404,
            vec![],
            br#"{"error":{"message":"no such resource"}}"#.to_vec(),
        ),
    };
    if rng.random_bool(0.5) {
        return ok;
    }
    let (status, headers, body) = ok;
    match rng.random_range(0..10) {
        0 => (
            status,
            headers,
            body[..rng.random_range(0..=body.len())].to_vec(),
        ),
        1 | 2 => {
            let mut d: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            mangle(&mut d, rng, false);
            (status, headers, d.to_string().into_bytes())
        }
        3 => {
            let mut d: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            mangle(&mut d, rng, true);
            (status, headers, d.to_string().into_bytes())
        }
        4 => (status, headers, b"<html>BMC busy</html>".to_vec()),
        5 => (status, headers, Vec::new()),
        6 => (status, headers, "[".repeat(100_000).into_bytes()),
        7 => {
            let s = [400, 401, 403, 404, 405, 409, 412, 429, 500, 503][rng.random_range(0..10)];
            let body = if rng.random_bool(0.5) {
                br#"{"error":{"@Message.ExtendedInfo":[{"Message":"nope"}, 5]}}"#.to_vec()
            } else {
                b"\xff\xfe".to_vec()
            };
            (s, headers, body)
        }
        8 => (
            202,
            vec![("Location", "/redfish/v1/TaskService/Tasks/1".into())],
            Vec::new(),
        ),
        _ => (
            200,
            headers,
            json!([body.len(), "wrong"]).to_string().into_bytes(),
        ),
    }
}

async fn serve(seed: u64) -> String {
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let app =
        axum::Router::new().fallback(move |method: axum::http::Method, uri: axum::http::Uri| {
            let rng = rng.clone();
            async move {
                let (status, headers, body) = {
                    let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                    answer(method.as_str(), uri.path(), &mut rng)
                };
                let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                *resp.status_mut() = axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                for (k, v) in headers {
                    if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
                        resp.headers_mut().insert(k, v);
                    }
                }
                resp
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn adapter(endpoint: &str) -> RedfishAdapter {
    let cfg = RedfishConfig {
        client: ClientConfig {
            endpoint: endpoint.to_string(),
            username: "u".into(),
            password: "p".into(),
            ca_pem: None,
            fingerprint: None,
            insecure_skip_verify: false,
            requests_per_second: 10_000,
            max_connections: 8,
            timeout: Duration::from_secs(2),
            attempts: 2,
            auth: RedfishAuth::Auto,
        },
        images: vec![RedfishImage {
            name: "os".into(),
            url: "http://images/os.iso".into(),
            checksum: None,
            kernel_args: None,
        }],
        systems: vec![],
        callback_timeout: Duration::from_secs(3600),
        callback_base: Some("http://127.0.0.1:1".into()),
        config_medium: osprov::api::ConfigMedium::BootIso,
    };
    RedfishAdapter::new(cfg, Arc::new(MemoryStore::default())).expect("adapter")
}

/// A call must come back in time; an error must say something.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    round: usize,
    seed: u64,
    f: impl std::future::Future<Output = Result<T, E>>,
) {
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert!(
            !e.to_string().trim().is_empty(),
            "{what} (round {round}, seed {seed}): an error with no message"
        ),
        Err(_) => panic!("{what} (round {round}, seed {seed}) did not come back"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bmc_answers_are_errors_never_panics_or_hangs() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let seed: u64 = std::env::var("OSPROV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("OSPROV_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    println!("redfish fuzz seed {seed} ({rounds} rounds; OSPROV_FUZZ_SEED={seed} replays)");
    let endpoint = serve(seed).await;
    let mut outcomes = [0usize; 2];
    for round in 0..rounds {
        let a = adapter(&endpoint);
        let events = tokio::time::timeout(Duration::from_secs(120), a.subscribe())
            .await
            .unwrap_or_else(|_| panic!("subscribe (round {round}, seed {seed}) did not come back"));
        let discovered = tokio::time::timeout(Duration::from_secs(120), a.discover())
            .await
            .unwrap_or_else(|_| panic!("discover (round {round}, seed {seed}) did not come back"));
        outcomes[usize::from(discovered.is_ok())] += 1;
        if let Err(e) = &discovered {
            assert!(!e.to_string().trim().is_empty(), "discover: an empty error");
        }
        let token = format!("uid-{round}/1/1");
        for host in ["1", "2"] {
            bounded(
                "reprovision",
                round,
                seed,
                a.reprovision(host, "os", &token, &osprov::adapter::HostConfig::default()),
            )
            .await;
        }
        bounded("operation", round, seed, a.operation("1", &token)).await;
        bounded("cancel", round, seed, a.cancel("1", &token)).await;
        // Let the event-stream task meet a few hostile answers, then end it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(events);
        a.close().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "discoveries: {} failed with an error, {} succeeded",
        outcomes[0], outcomes[1]
    );
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a panic (seed {seed}); see above"
    );
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "the generator made both kinds of answers"
    );
}
