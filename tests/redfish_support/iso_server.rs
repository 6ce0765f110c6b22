//! A tiny HTTP server for the installer ISOs the BMC emulator downloads: stand-in bytes, or a
//! real installer ISO from a file; a single `Range` is answered with 206, as image servers do.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tiny HTTP server for the test ISO; can hold the first download for a while and tell when
/// a download started.
pub struct IsoServer {
    pub addr: SocketAddr,
    pub downloads: Arc<AtomicU64>,
    /// The query string of every download (the image URL osprov gave the BMC carries the
    /// callback URL, and so the operation's key).
    pub queries: Arc<Mutex<Vec<String>>>,
    /// Delay applied to the next download only.
    pub hold_next: Arc<Mutex<Option<Duration>>>,
    pub started: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl IsoServer {
    pub async fn start() -> IsoServer {
        IsoServer::serving(None).await
    }

    /// Serve the file at `path` (a real installer ISO) instead of the stand-in bytes.
    pub async fn serving(file: Option<PathBuf>) -> IsoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let downloads = Arc::new(AtomicU64::new(0));
        let hold_next: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
        let started = Arc::new(tokio::sync::Notify::new());
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let (d, h, s, q) = (
            downloads.clone(),
            hold_next.clone(),
            started.clone(),
            queries.clone(),
        );
        let app = axum::Router::new().route(
            "/images/{name}",
            axum::routing::get(
                move |query: axum::extract::RawQuery, headers: axum::http::HeaderMap| {
                    let (d, h, s, q) = (d.clone(), h.clone(), s.clone(), q.clone());
                    let file = file.clone();
                    async move {
                        d.fetch_add(1, Ordering::SeqCst);
                        q.lock().expect("lock").push(query.0.unwrap_or_default());
                        s.notify_waiters();
                        let hold = h.lock().expect("lock").take();
                        if let Some(hold) = hold {
                            tokio::time::sleep(hold).await;
                        }
                        let body = match file {
                            Some(file) => tokio::fs::read(&file).await.expect("the served image"),
                            // A few KiB standing in for an installer ISO.
                            None => (0..8192u32).map(|i| (i % 251) as u8).collect(),
                        };
                        ranged(&headers, body)
                    }
                },
            ),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        IsoServer {
            addr,
            downloads,
            queries,
            hold_next,
            started,
            task,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/images/{name}.iso", self.addr)
    }
}

/// The whole body, or the one range asked for (206), as image servers answer.
fn ranged(headers: &axum::http::HeaderMap, body: Vec<u8>) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let total = body.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| http_range_header::parse_range_header(r).ok())
        .and_then(|r| r.validate(total).ok());
    match range.as_deref() {
        Some([one]) => {
            let (a, b) = (*one.start(), *one.end());
            (
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, format!("bytes {a}-{b}/{total}"))],
                body[a as usize..=b as usize].to_vec(),
            )
                .into_response()
        }
        _ => body.into_response(),
    }
}

impl Drop for IsoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
