//! How the callback endpoint is served: TLS when it has a certificate, and limits that keep a
//! slow or noisy client from holding the controller.
//!
//! The endpoint faces whatever network the hosts are on, so each connection is bounded:
//!
//! | limit | value | what a client over it gets |
//! |---|---|---|
//! | connections at once | [`MAX_CONNECTIONS`] | the connection closed at once |
//! | TLS handshake | [`HANDSHAKE_TIME`] | the connection closed |
//! | request headers | [`HEADER_TIME`] | the connection closed (hyper's header-read timeout) |
//! | whole connection (headers, body, answer) | [`CONNECTION_TIME`]; [`TRANSFER_TIME`] once a handler streams a medium ([`LongTransfer`]) | the connection closed |
//! | request body | [`MAX_BODY`] bytes | `413` |
//! | callbacks per second (all clients) | [`RATE`], bursts of [`BURST`] | `429`, which the documented `curl --retry-all-errors` retries |
//! | medium reads per second (all BMCs) | [`READ_RATE`], bursts of [`READ_BURST`] | `429` |
//!
//! A BMC reads a boot ISO of several GiB in one long answer, or in many ranged ones: the
//! connection time would cut the first, the callbacks' rate the second. So a handler that has
//! authenticated a read of a medium marks its connection ([`LongTransfer`]), which then may
//! last [`TRANSFER_TIME`], and medium reads have a bucket of their own.
//!
//! axum's own `serve` sets no header or connection time, so the accept loop is written here over
//! hyper-util's connection builder (a dozen lines); the router stays axum's.
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

pub const MAX_CONNECTIONS: usize = 64;
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
pub const HEADER_TIME: Duration = Duration::from_secs(10);
pub const CONNECTION_TIME: Duration = Duration::from_secs(30);
pub const MAX_BODY: usize = 16 * 1024;
pub const RATE: f64 = 20.0;
pub const BURST: f64 = 40.0;
/// How long a connection that streams a medium may last (a 4 GiB ISO at 1 MB/s takes 70 min).
pub const TRANSFER_TIME: Duration = Duration::from_secs(4 * 3600);
pub const READ_RATE: f64 = 200.0;
pub const READ_BURST: f64 = 400.0;

/// A connection's permission to outlive [`CONNECTION_TIME`]: in every request's extensions,
/// granted by a handler that streams an authenticated read of a medium.
#[derive(Clone, Debug, Default)]
pub struct LongTransfer(Arc<std::sync::atomic::AtomicBool>);

impl LongTransfer {
    /// Let this connection run up to [`TRANSFER_TIME`].
    pub fn allow(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn allowed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A token bucket shared by every connection.
pub struct Bucket {
    state: Mutex<(f64, Instant)>,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            state: Mutex::new((burst, Instant::now())),
            rate,
            burst,
        }
    }

    /// Take one token if there is one.
    pub fn take(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn rate_limited(State(bucket): State<Arc<Bucket>>, req: Request, next: Next) -> Response {
    if bucket.take() {
        next.run(req).await
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"message": "too many callbacks; try again"})),
        )
            .into_response()
    }
}

/// `router` with the body limit and the callbacks' rate limit.
pub fn limited(router: Router) -> Router {
    let bucket = Arc::new(Bucket::new(RATE, BURST));
    router
        .layer(axum::middleware::from_fn_with_state(bucket, rate_limited))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// `router` (medium reads) with the body limit and the reads' own rate limit.
pub fn limited_reads(router: Router) -> Router {
    let bucket = Arc::new(Bucket::new(READ_RATE, READ_BURST));
    router
        .layer(axum::middleware::from_fn_with_state(bucket, rate_limited))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A TLS acceptor for the PEM certificate chain and key at these paths.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("reading {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the callback certificate and key do not fit: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `router` on `addr` (TLS when `tls` is given) until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, tls = tls.is_some(), "provisioning callback endpoint listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "callback connection refused: too many at once");
            continue;
        };
        let long = LongTransfer::default();
        let (tls, router) = (
            tls.clone(),
            router.clone().layer(axum::Extension(long.clone())),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let work = async move {
                match tls {
                    Some(acceptor) => {
                        let stream = tokio::time::timeout(HANDSHAKE_TIME, acceptor.accept(stream))
                            .await
                            .map_err(|_| "TLS handshake timed out".to_string())?
                            .map_err(|e| format!("TLS handshake failed: {e}"))?;
                        connection(stream, router).await
                    }
                    None => connection(stream, router).await,
                }
            };
            tokio::pin!(work);
            let served = match tokio::time::timeout(CONNECTION_TIME, &mut work).await {
                Err(_) if long.allowed() => {
                    tokio::time::timeout(TRANSFER_TIME.saturating_sub(CONNECTION_TIME), work).await
                }
                other => other,
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "callback connection ended"),
                Err(_) => debug!(%peer, "callback connection closed after its time"),
            }
        });
    }
}

async fn connection<S>(stream: S, router: Router) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIME)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let b = Bucket::new(1.0, 3.0);
        assert!((0..3).all(|_| b.take()), "a burst of 3");
        assert!(!b.take(), "then empty");
    }
}
