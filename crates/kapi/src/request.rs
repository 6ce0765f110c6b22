//! What every handler is given: the server's shared [`State`], and a [`Req`] — one request to a
//! resource endpoint, resolved against the registry, with its parsed [`Query`]. Its own module so
//! the HTTP front (`http.rs`) and the handlers it dispatches to depend on it, not on each other.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use percent_encoding::percent_decode_str;

use super::access::Access;
use super::resources::{Registry, ResourceInfo};
use super::store::Store;

pub struct State {
    pub registry: Registry,
    pub store: Store,
    pub token: String,
    pub access: Access,
    pub bookmark_interval: Duration,
    /// Wakes the garbage collector after deletions.
    pub gc_wake: tokio::sync::Notify,
    /// Becomes true when the server shuts down (ends open watches).
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// One permit per open watch.
    pub watches: std::sync::Arc<tokio::sync::Semaphore>,
    pub max_watches: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// Query parameters; kube-rs sends a leading empty pair (`?&limit=500`, B1), which is skipped.
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            m.entry(dec(k)).or_default().push(dec(v));
        }
        Query(m)
    }
    /// The first value of `k`, as Go's `url.Values.Get` reads it (a repeated parameter's later
    /// values are ignored); an empty value is no value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    /// Every value of `k`, empty ones included (for list-typed options such as `dryRun`).
    pub fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map_or(&[], Vec::as_slice)
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// A request to a resource endpoint, resolved against the registry.
pub struct Req {
    pub state: Arc<State>,
    pub info: Arc<ResourceInfo>,
    /// "" for cluster-scoped kinds and all-namespace lists.
    pub namespace: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: Query,
    pub headers: HeaderMap,
    pub user_agent: String,
}

impl Req {
    /// The Accept header, if it is text.
    fn accept(&self) -> Option<&str> {
        self.headers.get("accept").and_then(|v| v.to_str().ok())
    }

    /// True when the Accept header (if any) names a media type the API can answer in: JSON,
    /// YAML, Kubernetes protobuf, or a wildcard covering them. kube-apiserver answers 406
    /// otherwise.
    pub fn acceptable(&self) -> bool {
        let Some(accept) = self.accept().filter(|a| !a.trim().is_empty()) else {
            return true;
        };
        // kube-apiserver takes `application/*` for custom resources only (406 for built-ins).
        let custom = self.info.builtin == super::resources::Builtin::Custom;
        accept.split(',').any(|entry| {
            let media = entry.split(';').next().unwrap_or_default().trim();
            (custom && media.eq_ignore_ascii_case("application/*"))
                || matches!(
                    media.to_ascii_lowercase().as_str(),
                    "*/*"
                        | "application/json"
                        | "application/yaml"
                        | "application/vnd.kubernetes.protobuf"
                )
        })
    }

    /// PartialObjectMetadata output requested (kube-runtime's metadata_watcher)?
    pub fn wants_metadata(&self) -> bool {
        self.accept().is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=PartialObjectMetadata"))
        })
    }

    /// PartialObjectMetadataList named (what a metadata list asks for)?
    pub fn wants_metadata_list(&self) -> bool {
        self.accept().is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=PartialObjectMetadataList"))
        })
    }

    /// Table output requested (E4)?
    pub fn wants_table(&self) -> bool {
        self.accept().is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
                || a.starts_with("application/json;as=Table")
        })
    }
    /// The body's media type: Content-Type without parameters.
    pub fn media_type(&self) -> &str {
        self.content_type()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }
}
