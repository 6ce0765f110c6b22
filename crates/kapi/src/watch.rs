//! WATCH: a chunked stream of `{"type","object"}` lines (B5–B9).
//!
//! A spawned task per watcher reads the store's broadcast channel, filters and renders events, and
//! feeds a bounded channel that is the HTTP body. A watcher that lags behind the broadcast channel,
//! or asks for a revision older than the kept history, gets one `ERROR` event carrying a 410
//! Expired Status and the stream ends (HTTP status stays 200, as kube-apiserver does), which makes
//! kube-runtime's watcher relist. Bookmarks go out every `bookmark_interval` and before a timeout.
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::error::{ApiError, ApiResult};
use super::reads::{include_object, partial, range, view, Filter};
use super::request::Req;
use super::resources::{Builtin, ResourceInfo};
use super::store::{Change, ChangeType};
use super::table;

struct Watcher {
    info: Arc<ResourceInfo>,
    filter: Filter,
    table: bool,
    include_object: String,
    bookmarks: bool,
    metadata_only: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// The newest revision this watcher has seen (sent or filtered out).
    seen: u64,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

impl Watcher {
    fn plain(&self) -> bool {
        !self.table
            && !self.metadata_only
            && self.info.builtin == Builtin::Custom
            && self.filter.labels.is_empty()
            && self.filter.fields.is_empty()
    }

    fn render(&self, kind: &str, obj: &Value) -> Bytes {
        if self.table {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut t = table::table(
                &self.info,
                std::slice::from_ref(obj),
                rv,
                None,
                &self.include_object,
            );
            if let Some(o) = t.as_object_mut() {
                o.remove("metadata");
            }
            return line(kind, &t);
        }
        if self.metadata_only {
            return line(kind, &partial(obj));
        }
        line(kind, obj)
    }

    /// The line for a change, if this watcher should see it.
    fn event(&self, c: &Change) -> Option<Bytes> {
        if c.key.0 != self.info.store_key
            || (!self.filter.namespace.is_empty() && c.key.1 != self.filter.namespace)
        {
            return None;
        }
        if self.plain() && self.info.api_version() == api_version_of(&c.object) {
            let mut v = Vec::with_capacity(64 + c.json().len());
            v.extend_from_slice(b"{\"type\":\"");
            v.extend_from_slice(c.kind.as_str().as_bytes());
            v.extend_from_slice(b"\",\"object\":");
            v.extend_from_slice(&c.json());
            v.extend_from_slice(b"}\n");
            return Some(Bytes::from(v));
        }
        let now = view(&self.info, &c.object);
        let now_match = self.filter.matches(&now);
        let was_match = c
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches(&view(&self.info, p)));
        let kind = match c.kind {
            ChangeType::Added if now_match => "ADDED",
            ChangeType::Deleted if now_match || was_match => "DELETED",
            ChangeType::Modified if now_match && was_match => "MODIFIED",
            ChangeType::Modified if now_match => "ADDED",
            ChangeType::Modified if was_match => {
                // No longer matching: DELETED with the previous state at this revision, as
                // kube-apiserver's watch cache sends it.
                let mut prev = c.prev.as_ref().map_or(now, |p| view(&self.info, p));
                if let Some(m) = prev.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(c.rev.to_string()));
                }
                return Some(self.render("DELETED", &prev));
            }
            _ => return None,
        };
        Some(self.render(kind, &now))
    }

    fn bookmark_object(&self) -> Value {
        json!({"kind": self.info.kind, "apiVersion": self.info.api_version(),
               "metadata": {"resourceVersion": self.seen.to_string()}})
    }

    fn bookmark(&self) -> Bytes {
        line("BOOKMARK", &self.bookmark_object())
    }

    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(Ok(b)).await.is_ok()
    }
}

fn api_version_of(v: &Value) -> &str {
    v.get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn expired_line(message: &str) -> Bytes {
    line("ERROR", &ApiError::gone(message).status_body())
}

pub fn watch(req: Req) -> ApiResult<Response> {
    let filter = Filter::from_req(&req)?;
    // Held by the watch's task: given back when the watch ends.
    let permit = req.state.watches.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            429,
            "TooManyRequests",
            format!(
                "too many watches are open (at most {}); retry later",
                req.state.max_watches
            ),
        )
    })?;
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv = req.query.get("resourceVersion").unwrap_or("0").to_string();
    let (tx, rx) = mpsc::channel(256);
    let mut w = Watcher {
        info: req.info.clone(),
        filter,
        table: req.wants_table(),
        metadata_only: req.wants_metadata(),
        include_object: include_object(&req).to_string(),
        bookmarks: req.query.flag("allowWatchBookmarks"),
        tx,
        seen: 0,
    };
    let store = &req.state.store;
    let mut initial: Vec<Bytes> = Vec::new();
    // sendInitialEvents (streaming lists, B10): the current state, then a bookmark marking its end.
    let streaming = req.query.flag("sendInitialEvents");
    let sub = if rv == "0" || streaming {
        let (rev, objects, sub) = store.snapshot_and_subscribe();
        for (_, obj) in range(&objects, &w.info.store_key, &w.filter.namespace, None) {
            let v = view(&w.info, obj);
            if w.filter.matches(&v) {
                initial.push(w.render("ADDED", &v));
            }
        }
        w.seen = rev;
        if streaming {
            let mut end = w.bookmark_object();
            end["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            initial.push(line("BOOKMARK", &end));
        }
        Some(sub)
    } else {
        let rv: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
        match store.watch_from(rv) {
            Ok((past, sub)) => {
                w.seen = rv;
                for c in past {
                    if let Some(b) = w.event(&c) {
                        initial.push(b);
                    }
                    w.seen = c.rev;
                }
                Some(sub)
            }
            Err(e) => {
                initial.push(expired_line(&e.message));
                None
            }
        }
    };
    let interval = req.state.bookmark_interval;
    let closing = req.state.closing.clone();
    tokio::spawn(async move {
        let _permit = permit;
        for b in initial {
            if !w.send(b).await {
                return;
            }
        }
        if let Some(sub) = sub {
            run(w, sub, Duration::from_secs(timeout), interval, closing).await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn run(
    mut w: Watcher,
    mut sub: broadcast::Receiver<Arc<Change>>,
    timeout: Duration,
    interval: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                if w.bookmarks {
                    w.send(w.bookmark()).await;
                }
                return;
            }
            _ = ticker.tick() => {
                if w.bookmarks && !w.send(w.bookmark()).await {
                    return;
                }
            }
            _ = w.tx.closed() => return,
            _ = closing.changed() => return,
            msg = sub.recv() => match msg {
                Ok(c) => {
                    if c.rev <= w.seen {
                        continue;
                    }
                    let ev = w.event(&c);
                    w.seen = c.rev;
                    if let Some(b) = ev {
                        if !w.send(b).await {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(skipped = n, "dropping a watcher that fell behind");
                    w.send(expired_line("the watcher fell behind; relist")).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
