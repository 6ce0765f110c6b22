//! Authentication: the service root (read once, without credentials) and Redfish sessions — one
//! `X-Auth-Token` per adapter (so per dispatcher), shared by every call.
//!
//! Real BMCs (iDRAC, iLO, XCC) cap concurrent sessions and throttle basic-auth logins, so a
//! client that sends the password with every request, or opens a session per call, runs the BMC
//! out of sessions. Here a session is opened lazily by the first call that needs one (logins are
//! single-flight: concurrent calls wait for the one login), renewed once when the BMC answers 401
//! to the token (an expired or deleted session), and deleted by [`Client::logout`], which the
//! adapter calls when its dispatcher session ends (dispatcher deleted, Secret rotated, shutdown).
//!
//! Which scheme: [`RedfishAuth::Basic`] never logs in; [`RedfishAuth::Session`] always does;
//! [`RedfishAuth::Auto`] logs in when the service root (read once, without credentials, as the
//! Redfish spec allows) links a SessionService or `Links.Sessions`, and falls back to basic auth
//! otherwise (sushy-tools, some OpenBMC builds). The login body carries the password; it is never
//! logged nor put in an error.
use super::{decode, error_message, Client, RedfishError};
use crate::adapter::redfish::model::ServiceRoot;
use crate::api::RedfishAuth;
use reqwest::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// The standard Sessions collection (Redfish 1.6+), for roots that link only the SessionService.
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// What a request is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Credential {
    Token(Arc<str>),
    Basic,
}

#[derive(Clone)]
struct Token {
    value: Arc<str>,
    /// The session resource, deleted on logout.
    location: Option<String>,
}

/// Where sessions are opened, once decided: `None` means basic auth.
type Plan = Option<String>;

#[derive(Default)]
struct State {
    plan: Option<Plan>,
    token: Option<Token>,
}

/// Session state of one client.
pub(super) struct Sessions {
    mode: RedfishAuth,
    state: tokio::sync::Mutex<State>,
}

impl Sessions {
    pub(super) fn new(mode: RedfishAuth) -> Sessions {
        Sessions {
            mode,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }
}

impl Client {
    /// The service root, read once without credentials (the Redfish spec requires it to be
    /// readable so; it names the collections and whether sessions are offered).
    pub async fn root(&self) -> Result<ServiceRoot, RedfishError> {
        self.root
            .get_or_try_init(|| async {
                let url = self.url("/redfish/v1/");
                let _permit =
                    self.connections
                        .acquire()
                        .await
                        .map_err(|_| RedfishError::Connect {
                            url: url.clone(),
                            detail: "client closed".into(),
                        })?;
                let mut with_basic = false;
                let (status, body) = loop {
                    self.pace().await;
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    let mut req = self
                        .http
                        .get(&url)
                        .header("Accept", "application/json")
                        .header("OData-Version", "4.0");
                    if with_basic {
                        req = req.basic_auth(&self.cfg.username, Some(&self.cfg.password));
                    }
                    let resp = req
                        .send()
                        .await
                        .map_err(|e| self.transport_error(&Method::GET, &url, &e).0)?;
                    let status = resp.status();
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| self.transport_error(&Method::GET, &url, &e).0)?;
                    // A service that guards even its root: ask again with the account.
                    if status == StatusCode::UNAUTHORIZED && !with_basic {
                        with_basic = true;
                        continue;
                    }
                    break (status, body);
                };
                if status == StatusCode::UNAUTHORIZED {
                    self.note_auth(true);
                    return Err(RedfishError::Auth(401));
                }
                if !status.is_success() {
                    return Err(RedfishError::Status {
                        method: "GET".into(),
                        url,
                        status: status.as_u16(),
                        message: error_message(&body),
                    });
                }
                decode(&url, &body)
            })
            .await
            .cloned()
    }

    /// The credential for the next request: the session's token (logging in first when there is
    /// none yet) or basic auth.
    pub(super) async fn credential(&self) -> Result<Credential, RedfishError> {
        if self.sessions.mode == RedfishAuth::Basic {
            return Ok(Credential::Basic);
        }
        let mut state = self.sessions.state.lock().await;
        if let Some(t) = &state.token {
            return Ok(Credential::Token(t.value.clone()));
        }
        let plan = match &state.plan {
            Some(plan) => plan.clone(),
            None => {
                let plan = self.session_plan().await?;
                state.plan = Some(plan.clone());
                plan
            }
        };
        let Some(collection) = plan else {
            return Ok(Credential::Basic);
        };
        match self.login(&collection).await? {
            Some(token) => {
                let value = token.value.clone();
                state.token = Some(token);
                Ok(Credential::Token(value))
            }
            None => {
                // Auto, and the service turned out to have no Sessions collection after all.
                state.plan = Some(None);
                Ok(Credential::Basic)
            }
        }
    }

    /// Put `credential` on a request.
    pub(super) fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        credential: &Credential,
    ) -> reqwest::RequestBuilder {
        match credential {
            Credential::Token(token) => req.header("X-Auth-Token", &**token),
            Credential::Basic => req.basic_auth(&self.cfg.username, Some(&self.cfg.password)),
        }
    }

    /// Open a long-lived GET (a server-sent event stream) with the session's credential. A
    /// refused token is forgotten, so the caller's next try logs in again.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, RedfishError> {
        self.check_auth_cool_down()?;
        let credential = self.credential().await?;
        let url = self.target(path)?;
        self.pace().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let req = self
            .stream_http
            .get(&url)
            .header("Accept", "text/event-stream")
            .header("OData-Version", "4.0");
        let resp = self
            .authorize(req, &credential)
            .send()
            .await
            .map_err(|e| self.transport_error(&Method::GET, &url, &e).0)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED {
            if let Credential::Token(token) = &credential {
                self.session_expired(token).await;
                return Err(RedfishError::SessionExpired);
            }
            self.note_auth(true);
            return Err(RedfishError::Auth(401));
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(RedfishError::Status {
            method: "GET".into(),
            url,
            status: status.as_u16(),
            message: error_message(&body),
        })
    }

    /// The BMC refused `token`: forget it (unless a newer one replaced it already) so the next
    /// request logs in again.
    pub(super) async fn session_expired(&self, token: &str) {
        let mut state = self.sessions.state.lock().await;
        if state.token.as_ref().is_some_and(|t| &*t.value == token) {
            info!(endpoint = %self.cfg.endpoint, "Redfish session expired; logging in again");
            state.token = None;
        }
    }

    /// True while a session is open (for tests and metrics).
    pub async fn has_session(&self) -> bool {
        self.sessions.state.lock().await.token.is_some()
    }

    /// Delete the session, if one is open. Best effort: a BMC that cannot be reached ends the
    /// session by its own timeout.
    pub async fn logout(&self) {
        let token = self.sessions.state.lock().await.token.take();
        let Some(Token {
            value,
            location: Some(location),
        }) = token
        else {
            return;
        };
        let Ok(url) = self.target(&location) else {
            warn!("the session's Location is off the service's origin; not deleting it there");
            return;
        };
        self.pace().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .http
            .delete(&url)
            .header("X-Auth-Token", &*value)
            .header("OData-Version", "4.0")
            .send()
            .await;
        match sent {
            Ok(r) => debug!(status = %r.status(), %url, "Redfish session deleted"),
            Err(e) => debug!(error = %e, %url, "deleting the Redfish session failed"),
        }
    }

    /// Where to open sessions, from the configured mode and the service root.
    async fn session_plan(&self) -> Result<Plan, RedfishError> {
        let root = self.root().await?;
        let linked = root
            .links
            .as_ref()
            .and_then(|l| l.sessions.as_ref())
            .map(|l| l.id.clone());
        let offered = linked
            .clone()
            .or_else(|| root.session_service.as_ref().map(|_| SESSIONS.to_string()));
        Ok(match (self.sessions.mode, offered) {
            (RedfishAuth::Basic, _) => None,
            (_, Some(path)) => Some(path),
            (RedfishAuth::Session, None) => Some(SESSIONS.to_string()),
            (RedfishAuth::Auto, None) => {
                info!(endpoint = %self.cfg.endpoint, "the Redfish service offers no SessionService; using basic auth");
                None
            }
        })
    }

    /// POST the account to the Sessions collection. `Ok(None)`: the service has no such
    /// collection and the mode allows basic auth instead.
    async fn login(&self, collection: &str) -> Result<Option<Token>, RedfishError> {
        self.check_auth_cool_down()?;
        let url = self.target(collection)?;
        let body =
            serde_json::json!({"UserName": self.cfg.username, "Password": self.cfg.password});
        self.pace().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        debug!(%url, "Redfish login");
        let resp = self
            .http
            .request(Method::POST, &url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0")
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(&Method::POST, &url, &e).0)?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let token = header("x-auth-token");
        let location = header("location");
        let bytes = resp.bytes().await.unwrap_or_default();
        match status {
            s if s.is_success() => {
                let value =
                    token
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| RedfishError::Invalid {
                            url: url.clone(),
                            detail: "the login answer has no X-Auth-Token header".into(),
                        })?;
                let location = location.or_else(|| {
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v["@odata.id"].as_str().map(str::to_string))
                });
                self.note_auth(false);
                info!(endpoint = %self.cfg.endpoint, "Redfish session opened");
                Ok(Some(Token {
                    value: value.into(),
                    location,
                }))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST => {
                self.note_auth(true);
                Err(RedfishError::Auth(status.as_u16()))
            }
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED
                if self.sessions.mode == RedfishAuth::Auto =>
            {
                info!(endpoint = %self.cfg.endpoint, %status, "the Redfish service refuses sessions; using basic auth");
                Ok(None)
            }
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => Err(RedfishError::Unsupported(format!(
                "the Redfish service has no SessionService (HTTP {status} from {url}); \
                     set spec.redfish.auth to Basic or Auto"
            ))),
            _ => Err(RedfishError::Status {
                method: "POST".into(),
                url,
                status: status.as_u16(),
                message: error_message(&bytes),
            }),
        }
    }
}
