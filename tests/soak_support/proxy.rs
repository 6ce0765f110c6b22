//! The soak's fault proxy: an HTTP proxy between the controller and the API server that answers
//! a seeded fraction of writes with a 409 Conflict (without forwarding them), holds a seeded
//! fraction of requests back before forwarding, and answers 503 while the API is down. The
//! controller talks plain HTTP to it; towards kube-apiserver it speaks TLS with the admin client
//! certificate. axum serves it and reqwest forwards, as nothing off the shelf injects Kubernetes
//! Status answers.
use super::Rng;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the fault proxy did.
#[derive(Default)]
pub struct ProxyCounts {
    pub forwarded: AtomicU64,
    pub conflicts: AtomicU64,
    pub delayed: AtomicU64,
    pub unavailable: AtomicU64,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    rng: Mutex<Rng>,
    conflict_rate: f64,
    delay_rate: f64,
    counts: Arc<ProxyCounts>,
}

/// The HTTP fault proxy.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<ProxyCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to `upstream`; `tls` is the CA and client identity (PEM) for an HTTPS upstream.
    pub async fn start(
        upstream: &str,
        tls: Option<(reqwest::Certificate, reqwest::Identity)>,
        seed: u64,
        conflict_rate: f64,
        delay_rate: f64,
    ) -> Self {
        let counts = Arc::new(ProxyCounts::default());
        let mut http = reqwest::Client::builder().no_proxy();
        if let Some((ca, identity)) = tls {
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .identity(identity);
        }
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: http.build().expect("client"),
            rng: Mutex::new(Rng::new(seed)),
            conflict_rate,
            delay_rate,
            counts: counts.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, counts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn forward(State(s): State<Arc<ProxyState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
    };
    let write = matches!(parts.method.as_str(), "PUT" | "PATCH" | "POST");
    let (roll, delay_roll, delay) = {
        let mut rng = s.rng.lock().unwrap_or_else(|p| p.into_inner());
        (rng.unit(), rng.unit(), rng.millis(50, 1500))
    };
    if write && roll < s.conflict_rate {
        s.counts.conflicts.fetch_add(1, Ordering::Relaxed);
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "injected by the soak's proxy: the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    if delay_roll < s.delay_rate {
        s.counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = s
        .http
        .request(parts.method.clone(), format!("{}{path}", s.upstream))
        .body(bytes);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            out = out.header(name, value);
        }
    }
    let r = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            s.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("the API is down: {e}"),
            );
        }
    };
    s.counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut b = Response::builder().status(r.status().as_u16());
    for (name, value) in r.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            b = b.header(name, value);
        }
    }
    b.body(Body::from_stream(r.bytes_stream()))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY, "InternalError", "bad answer"))
}
