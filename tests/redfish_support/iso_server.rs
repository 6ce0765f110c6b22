//! A tiny HTTP server for the installer ISOs the BMC emulator downloads: stand-in bytes, or a
//! real installer ISO from a file.
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
            axum::routing::get(move |query: axum::extract::RawQuery| {
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
                    if let Some(file) = file {
                        return tokio::fs::read(&file).await.expect("the served image");
                    }
                    // A few KiB standing in for an installer ISO.
                    let mut body = Vec::with_capacity(8192);
                    for i in 0..8192u32 {
                        body.push((i % 251) as u8);
                    }
                    body
                }
            }),
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

impl Drop for IsoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
