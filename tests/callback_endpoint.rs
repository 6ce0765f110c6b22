//! The provisioning callback endpoint of a running controller, as a hostile network sees it, on
//! both API backends: HTTPS only when it has a certificate; slow headers, too many connections,
//! floods and large bodies get closed or refused (`callback_server`'s limits), and each refusal
//! is seen as the client sees it (a closed socket, a status code). A connection whose handler
//! streams a medium (a boot ISO) may outlive the connection time; any other is cut at it.
mod cluster;
mod harness;
mod support;

use cluster::TestCluster;
use harness::*;
use osprov::adapter::simulator::SimRegistry;
use osprov::controller::callback_server::{
    LongTransfer, BURST, CONNECTION_TIME, HEADER_TIME, MAX_BODY, MAX_CONNECTIONS,
};
use osprov::controller::settings::{MetricsAddr, Settings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(
    with_a_certificate_the_endpoint_speaks_https_only,
    slow_many_or_large_callbacks_are_cut_off,
);

const OK: &str = r#"{"status":"succeeded"}"#;

fn controller(
    c: &TestCluster,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> (RunningController, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let settings = Settings {
        callback_addr: MetricsAddr(Some(addr)),
        callback_tls_cert: tls.map(|t| t.0.to_path_buf()),
        callback_tls_key: tls.map(|t| t.1.to_path_buf()),
        ..fast_settings_in(&c.ns)
    };
    let ctl =
        RunningController::start(c.client.clone(), settings, Arc::new(SimRegistry::default()));
    (ctl, addr)
}

/// Wait until the endpoint on `addr` answers an unknown key as such (404: listening, leading,
/// caches filled; before that it says 503, try again).
async fn answering(client: &reqwest::Client, base: &str) {
    let url = format!("{base}/callback/nobody.{}", "0".repeat(48));
    eventually(30, "the callback endpoint answering", || async {
        let r = client.post(&url).body(OK).send().await.ok()?;
        (r.status().as_u16() == 404).then_some(())
    })
    .await;
}

async fn with_a_certificate_the_endpoint_speaks_https_only(c: TestCluster) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    let (_ctl, addr) = controller(&c, Some((&cert, &key)));
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).expect("pem"),
        )
        .no_proxy()
        .build()
        .expect("client");
    // An unknown key, answered over TLS.
    answering(&https, &format!("https://{addr}")).await;
    assert_eq!(
        post(
            &format!("http://{addr}/callback/nobody.{}", "0".repeat(48)),
            OK
        )
        .await,
        0,
        "no answer in plain HTTP"
    );
}

/// Read until the peer closes (Some(elapsed)) or `within` passes (None).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn slow_many_or_large_callbacks_are_cut_off(c: TestCluster) {
    let (_ctl, addr) = controller(&c, None);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    answering(&client, &format!("http://{addr}")).await;
    let url = format!("http://{addr}/callback/nobody.{}", "0".repeat(48));

    // Headers that never end: the connection is closed after the header time.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /callback/nobody.x HTTP/1.1\r\nHost: osprov\r\n")
        .await
        .expect("write");
    let closed = closed_within(&mut slow, HEADER_TIME + Duration::from_secs(8)).await;
    assert!(
        closed.is_some(),
        "a client that never finishes its headers is cut off"
    );

    // A body over the limit: 413.
    assert_eq!(post(&url, &" ".repeat(MAX_BODY + 1)).await, 413);

    // More connections than the endpoint serves at once: the extra one is closed at once, while
    // the others stay open.
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(3))
            .await
            .is_some(),
        "the connection over the limit is closed"
    );
    assert!(
        closed_within(&mut held[0], Duration::from_millis(200))
            .await
            .is_none(),
        "the connections within the limit stay open"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A flood: past the burst, callbacks get 429 (which the installer's curl retries).
    let mut codes = Vec::new();
    for _ in 0..(2 * BURST as usize) {
        let sent = client.post(&url).body(OK).send().await;
        codes.push(sent.map(|r| r.status().as_u16()).unwrap_or(0));
    }
    assert!(
        codes.contains(&404),
        "callbacks within the rate are answered: {codes:?}"
    );
    assert!(codes.contains(&429), "a flood is slowed down: {codes:?}");
}

/// An answer streamed for longer than the connection time: one chunk a second.
fn slow_body(long: Option<axum::Extension<LongTransfer>>, allow: bool) -> axum::body::Body {
    if let (true, Some(axum::Extension(long))) = (allow, long) {
        long.allow();
    }
    let chunks = CONNECTION_TIME.as_secs() + 4;
    let stream = futures::stream::unfold(0u64, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")),
            i + 1,
        ))
    });
    axum::body::Body::from_stream(stream)
}

#[tokio::test]
async fn a_streamed_medium_outlives_the_connection_time_and_nothing_else_does() {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/medium",
            get(|long: Option<axum::Extension<LongTransfer>>| async move { slow_body(long, true) }),
        )
        .route(
            "/other",
            get(
                |long: Option<axum::Extension<LongTransfer>>| async move { slow_body(long, false) },
            ),
        );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = tokio::spawn(osprov::controller::callback_server::serve(
        addr, None, router,
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let read = |path: &'static str| {
        let client = client.clone();
        async move {
            for _ in 0..50 {
                if let Ok(r) = client.get(format!("http://{addr}{path}")).send().await {
                    let started = Instant::now();
                    return (r.bytes().await.map(|b| b.len()), started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the server never answered");
        }
    };
    let ((medium, took), (other, cut)) = tokio::join!(read("/medium"), read("/other"));
    let whole = usize::try_from(CONNECTION_TIME.as_secs() + 4).unwrap_or(0);
    assert_eq!(
        medium.ok(),
        Some(whole),
        "the medium streamed whole, in {took:?}"
    );
    assert!(took > CONNECTION_TIME, "{took:?}");
    assert!(
        other.map_or(true, |n| n < whole),
        "any other answer is cut at the connection time ({cut:?})"
    );
    server.abort();
}
