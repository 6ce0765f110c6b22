//! The HTTP transport to one Redfish service, and the Redfish error type.
//!
//! Hand-written over `reqwest` (rustls) rather than a Redfish crate: osprov needs only a dozen
//! calls, but needs full control of what happens on the wire — a per-BMC request rate, a bounded
//! number of connections, retries that know which calls are idempotent (a `Reset` is never
//! re-sent once it may have reached the BMC), task monitors, a cool-down after a refused login so
//! a wrong password never becomes a retry storm, and a request counter for the benchmark. The
//! crates looked at (`nv-redfish`, generated from the full CSDL and feature-gated per service;
//! `redfish`, young and with its own retry policy) would have had to be wrapped to get all of that.
//!
//! Authentication is one Redfish session per client where the service offers sessions, basic auth
//! otherwise ([`auth`]); credentials are never logged or put in an error message. The service
//! root, which never changes while the client lives, is read once ([`Client::root`]).
mod auth;

use super::model::{ServiceRoot, Task};
use crate::adapter::AdapterError;
use crate::api::RedfishAuth;
use auth::{Credential, Sessions};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Errors of the Redfish adapter.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error(
        "the Redfish service refused the credentials (HTTP {0}); check the credentials Secret"
    )]
    Auth(u16),
    #[error("the Redfish service refused the credentials recently; not trying again for {0:?}")]
    AuthCoolDown(Duration),
    #[error("TLS with {endpoint} failed: {detail}; give the BMC's CA bundle in spec.redfish.tls.caSecretRef, or pin its certificate with spec.redfish.tls.fingerprint")]
    Tls { endpoint: String, detail: String },
    #[error("cannot reach {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{method} {url} timed out")]
    Timeout { method: String, url: String },
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {url}: {detail}")]
    Invalid { url: String, detail: String },
    #[error("task {url} ended {state}: {message}")]
    TaskFailed {
        url: String,
        state: String,
        message: String,
    },
    #[error("invalid Redfish configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("operation store: {0}")]
    Store(String),
    /// The operation's record is gone or not the controller's (see `adapter::store`).
    #[error("{0}")]
    RecordLost(String),
    /// The BMC refused the session token (expired or deleted); the client logs in again once.
    #[error("the Redfish service refused the session token")]
    SessionExpired,
}

impl RedfishError {
    /// True when the same call may succeed later without anyone changing anything. Matched
    /// exhaustively: a new kind of error must be placed here on purpose.
    pub fn is_transient(&self) -> bool {
        match self {
            RedfishError::Connect { .. } | RedfishError::Timeout { .. } => true,
            RedfishError::Status { status, .. } => *status >= 500 || *status == 429,
            RedfishError::Store(_) => true,
            RedfishError::Auth(_)
            | RedfishError::AuthCoolDown(_)
            | RedfishError::Tls { .. }
            | RedfishError::Invalid { .. }
            | RedfishError::TaskFailed { .. }
            | RedfishError::Config(_)
            | RedfishError::Unsupported(_)
            | RedfishError::RecordLost(_)
            | RedfishError::SessionExpired => false,
        }
    }

    /// The engine's view of this error; transient ones keep this error as their source.
    pub fn into_adapter(self) -> AdapterError {
        match self {
            RedfishError::Auth(_)
            | RedfishError::AuthCoolDown(_)
            | RedfishError::SessionExpired => AdapterError::AuthenticationFailed(self.to_string()),
            RedfishError::Status { status: 403, .. } => {
                AdapterError::AuthenticationFailed(self.to_string())
            }
            RedfishError::Tls { .. } | RedfishError::Config(_) | RedfishError::Unsupported(_) => {
                AdapterError::Config(self.to_string())
            }
            RedfishError::Connect { .. } | RedfishError::Timeout { .. } => {
                AdapterError::Unreachable(self.to_string())
            }
            RedfishError::Status { status, .. } if status >= 500 || status == 429 => {
                AdapterError::Backend {
                    message: self.to_string(),
                    source: Some(Box::new(self)),
                }
            }
            RedfishError::Store(_) => AdapterError::Backend {
                message: self.to_string(),
                source: Some(Box::new(self)),
            },
            RedfishError::RecordLost(m) => AdapterError::RecordLost(m),
            // Any other 4xx, a malformed answer or a failed task needs a person.
            RedfishError::Status { .. }
            | RedfishError::Invalid { .. }
            | RedfishError::TaskFailed { .. } => AdapterError::Config(self.to_string()),
        }
    }
}

/// How to reach one Redfish service.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host[:port]`, without the `/redfish/v1` suffix.
    pub endpoint: String,
    pub username: String,
    pub password: String,
    /// PEM CA bundle; only these CAs are trusted when set.
    pub ca_pem: Option<Vec<u8>>,
    /// SHA-256 fingerprint of the one certificate to trust (see `adapter::tls`).
    pub fingerprint: Option<String>,
    pub insecure_skip_verify: bool,
    pub requests_per_second: u32,
    pub max_connections: usize,
    pub timeout: Duration,
    /// Attempts for idempotent calls on 5xx, timeouts and connection errors.
    pub attempts: u32,
    /// Session or basic auth.
    pub auth: RedfishAuth,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("username", &"<redacted>")
            .field("password", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("fingerprint", &self.fingerprint)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Whether a call may be sent again after it may have reached the BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotent {
    Yes,
    /// Re-sent only when the connection could not even be made.
    No,
}

/// A response: status, `Location` header, body.
pub struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: bytes::Bytes,
}

/// Rate-limited, connection-bounded, retrying HTTP client for one Redfish service.
pub struct Client {
    http: reqwest::Client,
    /// For long-lived streams (the EventService): no overall timeout.
    stream_http: reqwest::Client,
    cfg: ClientConfig,
    connections: Semaphore,
    next_slot: Mutex<Instant>,
    auth: Mutex<AuthState>,
    requests: AtomicU64,
    sessions: Sessions,
    root: tokio::sync::OnceCell<ServiceRoot>,
}

#[derive(Default)]
struct AuthState {
    blocked_until: Option<Instant>,
    backoff: Duration,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, RedfishError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(RedfishError::Config(format!(
                "endpoint {endpoint:?} must start with https:// or http://"
            )));
        }
        let http = http_client(&cfg, Some(cfg.timeout))?;
        // Event streams stay open: no overall timeout, only the connect one.
        let stream_http = http_client(&cfg, None)?;
        Ok(Client {
            http,
            stream_http,
            connections: Semaphore::new(cfg.max_connections.max(1)),
            next_slot: Mutex::new(Instant::now()),
            auth: Mutex::new(AuthState::default()),
            requests: AtomicU64::new(0),
            sessions: Sessions::new(cfg.auth),
            root: tokio::sync::OnceCell::new(),
            cfg: ClientConfig { endpoint, ..cfg },
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    /// HTTP requests sent so far (retries and task polls included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Absolute URL of a Redfish path (`/redfish/v1/...`) or an absolute link (for messages;
    /// requests go through [`Self::target`]).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.cfg.endpoint, path)
        }
    }

    /// The URL a request for `path` goes to: a path under the endpoint, or an absolute link on
    /// the endpoint's own origin. A link elsewhere is refused: the BMC's credentials never go
    /// to another origin.
    pub fn target(&self, path: &str) -> Result<String, RedfishError> {
        let url = self.url(path);
        if origin::same_origin(&url, &self.cfg.endpoint) {
            Ok(url)
        } else {
            Err(RedfishError::Unsupported(format!(
                "the Redfish service linked to {} outside its own origin; osprov follows links \
                 on {} only",
                origin::origin(&url).unwrap_or("an unparsable URL"),
                origin::origin(&self.cfg.endpoint).unwrap_or(&self.cfg.endpoint)
            )))
        }
    }

    /// GET a resource and decode it.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RedfishError> {
        let reply = self
            .send(Method::GET, path, None, Idempotent::Yes, true)
            .await?;
        decode(&self.url(path), &reply.body)
    }

    /// PATCH a resource.
    pub async fn patch(&self, path: &str, body: serde_json::Value) -> Result<(), RedfishError> {
        let reply = self
            .send(Method::PATCH, path, Some(body), Idempotent::Yes, true)
            .await?;
        self.follow_task(reply).await
    }

    /// POST an action, following a task monitor when the service returns one.
    pub async fn action(
        &self,
        target: &str,
        body: serde_json::Value,
        idempotent: Idempotent,
    ) -> Result<(), RedfishError> {
        let reply = self
            .send(Method::POST, target, Some(body), idempotent, true)
            .await?;
        self.follow_task(reply).await
    }

    /// A 202 with a `Location` is a task monitor: poll it until the task ends (bounded).
    async fn follow_task(&self, reply: Reply) -> Result<(), RedfishError> {
        if reply.status != StatusCode::ACCEPTED {
            return Ok(());
        }
        let Some(monitor) = reply.location else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = self
                .send(Method::GET, &monitor, None, Idempotent::Yes, false)
                .await?;
            if r.status == StatusCode::ACCEPTED {
                if Instant::now() > deadline {
                    return Err(RedfishError::Timeout {
                        method: "task".into(),
                        url: self.url(&monitor),
                    });
                }
                continue;
            }
            if r.body.is_empty() {
                return Ok(());
            }
            let task: Task = match serde_json::from_slice(&r.body) {
                Ok(t) => t,
                // The final answer of the action, not a Task: done.
                Err(_) => return Ok(()),
            };
            return match task.task_state.as_deref() {
                Some(state @ ("Exception" | "Killed" | "Cancelled")) => {
                    Err(RedfishError::TaskFailed {
                        url: self.url(&monitor),
                        state: state.to_string(),
                        message: task
                            .messages
                            .iter()
                            .filter_map(|m| m.message.clone())
                            .collect::<Vec<_>>()
                            .join("; "),
                    })
                }
                Some("Running" | "New" | "Pending" | "Starting" | "Stopping") => {
                    if Instant::now() > deadline {
                        return Err(RedfishError::Timeout {
                            method: "task".into(),
                            url: self.url(&monitor),
                        });
                    }
                    continue;
                }
                _ => Ok(()),
            };
        }
    }

    fn check_auth_cool_down(&self) -> Result<(), RedfishError> {
        let auth = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = auth.blocked_until {
            let now = Instant::now();
            if until > now {
                return Err(RedfishError::AuthCoolDown(until - now));
            }
        }
        Ok(())
    }

    fn note_auth(&self, refused: bool) {
        let mut auth = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if refused {
            auth.backoff =
                (auth.backoff * 2).clamp(Duration::from_secs(10), Duration::from_secs(300));
            auth.blocked_until = Some(Instant::now() + auth.backoff);
        } else {
            *auth = AuthState::default();
        }
    }

    /// Wait for a request slot under the per-service rate.
    async fn pace(&self) {
        let gap = Duration::from_secs_f64(1.0 / f64::from(self.cfg.requests_per_second.max(1)));
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + gap;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Send one request with retries; non-2xx answers become errors.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        idempotent: Idempotent,
        retry: bool,
    ) -> Result<Reply, RedfishError> {
        let url = self.target(path)?;
        let attempts = if retry { self.cfg.attempts.max(1) } else { 1 };
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            attempt += 1;
            let result = self.send_once(&method, &url, body.as_ref()).await;
            let err = match result {
                Ok(reply) => return Ok(reply),
                // A refused token means the BMC did not act on the request: log in again and
                // send it once more, whatever the method. A second refusal is a refused login.
                Err((RedfishError::SessionExpired, _)) if !renewed => {
                    renewed = true;
                    attempt -= 1;
                    continue;
                }
                Err((RedfishError::SessionExpired, _)) => {
                    self.note_auth(true);
                    return Err(RedfishError::Auth(401));
                }
                Err((err, sent)) => {
                    let retryable = err.is_transient()
                        && (idempotent == Idempotent::Yes || !sent)
                        && !matches!(err, RedfishError::Status { status: 429, .. });
                    if !retryable || attempt >= attempts {
                        return Err(err);
                    }
                    err
                }
            };
            let backoff = Duration::from_millis(200u64 << attempt.min(6))
                .mul_f64(rand::rng().random_range(0.8..1.2));
            warn!(error = %err, attempt, ?backoff, "Redfish call failed; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    /// One HTTP exchange. The flag says whether the request may have reached the service.
    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, (RedfishError, bool)> {
        self.check_auth_cool_down().map_err(|e| (e, false))?;
        let credential = self.credential().await.map_err(|e| (e, false))?;
        let _permit = self.connections.acquire().await.map_err(|_| {
            (
                RedfishError::Connect {
                    url: url.to_string(),
                    detail: "client closed".into(),
                },
                false,
            )
        })?;
        self.pace().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .authorize(self.http.request(method.clone(), url), &credential)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        if let Some(b) = body {
            req = req.json(b);
        }
        debug!(%method, %url, "Redfish request");
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(method, url, &e)),
        };
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(method, url, &e))?;
        if status == StatusCode::UNAUTHORIZED {
            if let Credential::Token(token) = &credential {
                self.session_expired(token).await;
                return Err((RedfishError::SessionExpired, true));
            }
            self.note_auth(true);
            return Err((RedfishError::Auth(status.as_u16()), true));
        }
        if status.is_success() {
            self.note_auth(false);
            return Ok(Reply {
                status,
                location,
                body,
            });
        }
        Err((
            RedfishError::Status {
                method: method.to_string(),
                url: url.to_string(),
                status: status.as_u16(),
                message: error_message(&body),
            },
            true,
        ))
    }

    fn transport_error(
        &self,
        method: &Method,
        url: &str,
        e: &reqwest::Error,
    ) -> (RedfishError, bool) {
        let chain = error_chain(e);
        let lower = chain.to_lowercase();
        // Only certificate problems are configuration errors; a connection cut mid-TLS (a BMC
        // rebooting) is an ordinary transient failure.
        if lower.contains("certificate") || lower.contains("unknownissuer") {
            return (
                RedfishError::Tls {
                    endpoint: self.cfg.endpoint.clone(),
                    detail: chain,
                },
                false,
            );
        }
        if e.is_timeout() {
            return (
                RedfishError::Timeout {
                    method: method.to_string(),
                    url: url.to_string(),
                },
                true,
            );
        }
        (
            RedfishError::Connect {
                url: url.to_string(),
                detail: chain,
            },
            !e.is_connect(),
        )
    }
}

/// A reqwest client for `cfg`'s TLS settings, with `timeout` for whole requests. Redirects are
/// followed only on the endpoint's own origin.
fn http_client(
    cfg: &ClientConfig,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, RedfishError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(cfg.max_connections)
        .redirect(origin::same_origin_redirects(&cfg.endpoint))
        .user_agent(concat!("osprov/", env!("CARGO_PKG_VERSION")));
    if let Some(fp) = cfg.fingerprint.as_deref() {
        let tls = crate::adapter::tls::pinned_config(fp, "the BMC")
            .map_err(|e| RedfishError::Config(format!("tls.fingerprint: {e}")))?;
        builder = builder.use_preconfigured_tls(tls);
    } else if let Some(pem) = cfg.ca_pem.as_deref() {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            RedfishError::Config(format!("the TLS CA bundle is not valid PEM: {e}"))
        })?;
        if certs.is_empty() {
            return Err(RedfishError::Config(
                "the TLS CA bundle holds no certificate".into(),
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if cfg.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    builder
        .build()
        .map_err(|e| RedfishError::Config(format!("cannot build the HTTP client: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The message of a Redfish error body (`error.@Message.ExtendedInfo` or `error.message`).
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return text.chars().take(200).collect();
    };
    let err = &v["error"];
    let extended: Vec<String> = err["@Message.ExtendedInfo"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["Message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !extended.is_empty() {
        return extended.join("; ");
    }
    err["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, RedfishError> {
    serde_json::from_slice(body).map_err(|e| RedfishError::Invalid {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

mod origin;
#[cfg(test)]
mod tests;
