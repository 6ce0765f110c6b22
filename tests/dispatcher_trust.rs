//! The dispatcher trust boundary, on both API backends: what an OSDispatcher can make the
//! controller do with the Secrets of its namespace. A TLS setting that would silently ignore
//! half of itself is refused by the API server (422); a Redfish service that links or redirects
//! elsewhere does not get the BMC account sent there: a hostile service (axum on loopback) whose
//! root names a Sessions collection on another origin, or redirects there, and a collector on
//! that origin that counts what it received.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod redfish_support;
mod support;

use axum::response::{IntoResponse, Redirect};
use cluster::TestCluster;
use harness::*;
use kube::api::{Api, PostParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{
    OSDispatcher, RedfishTls, SecretKeyRef, VsphereSpec, VsphereStrategy, VsphereTls,
};
use redfish_support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

on_both_backends!(
    tls_settings_that_contradict_each_other_are_refused,
    plain_http_needs_an_opt_in_and_is_warned_about,
    a_self_signed_bmc_is_trusted_by_its_pinned_fingerprint,
    credentials_never_leave_the_services_origin,
);

/// Create `d`, which the API must refuse with a 422 naming `why`.
async fn refused(api: &Api<OSDispatcher>, d: &OSDispatcher, why: &str) {
    match api.create(&PostParams::default(), d).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains(why), "{}", s.message);
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

async fn tls_settings_that_contradict_each_other_are_refused(c: TestCluster) {
    let api: Api<OSDispatcher> = c.api();
    let ca = Some(SecretKeyRef {
        name: "bmc-ca".into(),
        key: None,
    });
    let mut spec = redfish_spec_for("https://bmc.example.net");
    spec.tls = Some(RedfishTls {
        fingerprint: None,
        ca_secret_ref: ca.clone(),
        insecure_skip_verify: true,
    });
    refused(
        &api,
        &redfish_dispatcher("both", spec.clone()),
        "insecureSkipVerify excludes caSecretRef and fingerprint",
    )
    .await;
    spec.tls = Some(RedfishTls {
        ca_secret_ref: ca.clone(),
        fingerprint: Some("AB".repeat(32)),
        insecure_skip_verify: false,
    });
    refused(
        &api,
        &redfish_dispatcher("pin-and-ca", spec.clone()),
        "caSecretRef and fingerprint exclude each other",
    )
    .await;
    // Either alone is accepted.
    spec.tls = Some(RedfishTls {
        fingerprint: None,
        ca_secret_ref: ca.clone(),
        insecure_skip_verify: false,
    });
    create(&api, &redfish_dispatcher("ca-only", spec)).await;

    let mut d = redfish_dispatcher("vc", redfish_spec_for("https://bmc.example.net"));
    d.spec.adapter = osprov::api::AdapterKind::Vsphere;
    d.spec.redfish = None;
    d.spec.vsphere = Some(VsphereSpec {
        tls: Some(VsphereTls {
            ca_secret_ref: None,
            thumbprint: Some("AB:".repeat(31) + "AB"),
            insecure_skip_verify: true,
        }),
        ..vsphere_spec()
    });
    refused(
        &api,
        &d,
        "insecureSkipVerify excludes caSecretRef and thumbprint",
    )
    .await;
}

async fn plain_http_needs_an_opt_in_and_is_warned_about(c: TestCluster) {
    let api: Api<OSDispatcher> = c.api();
    let mut spec = redfish_spec_for("http://127.0.0.1:9");
    spec.insecure_http = false;
    refused(
        &api,
        &redfish_dispatcher("plain", spec.clone()),
        "an http:// endpoint sends the BMC account in clear text",
    )
    .await;
    let mut d = redfish_dispatcher("vc", redfish_spec_for("https://bmc.example.net"));
    d.spec.adapter = osprov::api::AdapterKind::Vsphere;
    d.spec.redfish = None;
    d.spec.vsphere = Some(VsphereSpec {
        url: "http://vcenter.example.net/sdk".into(),
        ..vsphere_spec()
    });
    refused(
        &api,
        &d,
        "an http:// URL sends the vCenter account in clear text",
    )
    .await;

    // Allowed explicitly: accepted, and the controller says what it means.
    spec.insecure_http = true;
    create(&api, &redfish_dispatcher("plain", spec)).await;
    let _ctl = RunningController::start(
        c.client.clone(),
        fast_settings_in(&c.ns),
        Arc::new(SimRegistry::default()),
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = c.api();
    let note = eventually(60, "the InsecureEndpoint Warning", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some("InsecureEndpoint")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref()?.name.as_deref() == Some("plain"))
            .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(note.contains("http://127.0.0.1:9"), "{note}");
}

/// A Redfish spec for `endpoint` with the test account (`insecureHttp` for `http://`).
fn redfish_spec_for(endpoint: &str) -> osprov::api::RedfishSpec {
    serde_json::from_value(serde_json::json!({
        "endpoint": endpoint,
        "insecureHttp": endpoint.starts_with("http://"),
        "credentialsSecretRef": {"name": "bmc"},
        "images": [{"name": "ubuntu-24.04", "url": "http://images.example.net/u.iso"}],
    }))
    .expect("redfish spec")
}

fn vsphere_spec() -> VsphereSpec {
    serde_json::from_value(serde_json::json!({
        "url": "https://vcenter.example.net/sdk",
        "credentialsSecretRef": {"name": "vc"},
        "images": [{"name": "ubuntu-24.04", "iso": "[ds] u.iso"}],
        "strategy": VsphereStrategy::Iso,
    }))
    .expect("vsphere spec")
}

/// Serve `app` on a free loopback port.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn credentials_never_leave_the_services_origin(c: TestCluster) {
    let dispatchers: Api<OSDispatcher> = c.api();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    create(
        &secrets,
        &secret("bmc", &[("username", USER), ("password", PASSWORD)]),
    )
    .await;
    // The collector: another origin, counting every request and any that carries the account.
    let seen = Arc::new(AtomicUsize::new(0));
    let leaked = Arc::new(AtomicUsize::new(0));
    let (s, l) = (seen.clone(), leaked.clone());
    let collector = serve(axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: String| {
            let (s, l) = (s.clone(), l.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                if body.contains(PASSWORD) || headers.contains_key("authorization") {
                    l.fetch_add(1, Ordering::SeqCst);
                }
                axum::http::StatusCode::CREATED
            }
        },
    ))
    .await;
    // A service whose root links its Sessions collection on the collector's origin.
    let elsewhere = format!("http://{collector}/redfish/v1/SessionService/Sessions");
    let root = serde_json::json!({
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Links": {"Sessions": {"@odata.id": elsewhere}},
    });
    let linking = serve(axum::Router::new().route(
        "/redfish/v1/",
        axum::routing::get(move || {
            let root = root.clone();
            async move { axum::Json(root) }
        }),
    ))
    .await;
    // A service that redirects everything to the collector.
    let to = format!("http://{collector}");
    let redirecting = serve(axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let to = to.clone();
        async move { Redirect::temporary(&format!("{to}{uri}")).into_response() }
    }))
    .await;

    let _ctl = RunningController::start(
        c.client.clone(),
        fast_settings_in(&c.ns),
        Arc::new(SimRegistry::default()),
    );
    for (name, addr, why) in [
        ("linking", linking, "outside its own origin"),
        (
            "redirecting",
            redirecting,
            "redirect off the Redfish service's origin",
        ),
    ] {
        let spec = redfish_spec_for(&format!("http://{addr}"));
        create(&dispatchers, &redfish_dispatcher(name, spec)).await;
        let message = eventually(
            60,
            &format!("{name}: the refusal on the dispatcher"),
            || async {
                let d = dispatchers.get(name).await.ok()?;
                let ready = d
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                (ready.status == "False" && ready.message.contains(why)).then_some(ready.message)
            },
        )
        .await;
        assert!(!message.contains(PASSWORD), "{message}");
    }
    assert_eq!(
        leaked.load(Ordering::SeqCst),
        0,
        "the account reached another origin ({} requests there)",
        seen.load(Ordering::SeqCst)
    );
}

async fn a_self_signed_bmc_is_trusted_by_its_pinned_fingerprint(c: TestCluster) {
    // The BMC's own certificate is marked CA:TRUE: rustls refuses it even as the trusted CA.
    let (cert, key, der) = self_signed_ca_marked();
    let emu = Emulator::start_with_cert(1, Some(1800), false, (cert, key)).await;
    let iso = IsoServer::start().await;
    create_bmc_secrets(&c.api(), &emu, PASSWORD).await;
    let dispatchers: Api<OSDispatcher> = c.api();
    let pinned = |fp: String| {
        let mut spec = redfish_spec(&emu, &iso, false);
        spec.tls = Some(RedfishTls {
            fingerprint: Some(fp),
            ..Default::default()
        });
        spec
    };
    let hex: Vec<String> = osprov::adapter::tls::thumbprint_of(&der, 32)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    create(
        &dispatchers,
        &redfish_dispatcher("pinned", pinned(hex.join(":"))),
    )
    .await;
    create(
        &dispatchers,
        &redfish_dispatcher("wrong", pinned("AB".repeat(32))),
    )
    .await;
    create(
        &dispatchers,
        &redfish_dispatcher("ca", redfish_spec(&emu, &iso, true)),
    )
    .await;
    let _ctl = RunningController::start(
        c.client.clone(),
        fast_settings_in(&c.ns),
        Arc::new(SimRegistry::default()),
    );
    let ready = |name: &'static str| {
        let dispatchers = dispatchers.clone();
        async move {
            let d = dispatchers.get(name).await.ok()?;
            let st = d.status?;
            let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            Some((c.status, c.message, st.host_count))
        }
    };
    eventually(60, "the pinned dispatcher Ready with its host", || async {
        let (status, _, hosts) = ready("pinned").await?;
        (status == "True" && hosts == Some(1)).then_some(())
    })
    .await;
    let wrong = eventually(60, "the wrong pin refused", || async {
        let (status, message, _) = ready("wrong").await?;
        (status == "False" && message.contains("TLS")).then_some(message)
    })
    .await;
    assert!(
        wrong.contains("does not match the pinned fingerprint"),
        "{wrong}"
    );
    let ca = eventually(60, "the CA-marked certificate refused as a CA", || async {
        let (status, message, _) = ready("ca").await?;
        (status == "False" && message.contains("TLS")).then_some(message)
    })
    .await;
    assert!(
        ca.contains("fingerprint"),
        "the refusal points at the pin: {ca}"
    );
}
