//! A vim25 SOAP client for the handful of calls the vSphere adapter makes.
//!
//! Why hand-written: no maintained Rust crate speaks vim25 (the vSphere Automation REST API has
//! no PropertyCollector nor `WaitForUpdatesEx`, and vcsim does not serve VI/JSON), and osprov
//! needs about ten calls. Requests are small XML templates built with escaped values; responses
//! are read with `roxmltree` (a maintained read-only XML tree) by element names, so the
//! polymorphic vim types (`xsi:type`) need no generated bindings.
//!
//! Sessions: one login per client (single-flight), the `vmware_soap_session` cookie on every
//! call, a re-login and one resend on `NotAuthenticated` (an expired or revoked session), and
//! `logout` when the dispatcher session ends. Calls in flight are bounded by a semaphore.
//! Credentials are never logged; a refused login is [`SoapError::InvalidLogin`], and the account
//! is not tried again for a growing wait (10 s doubling to 5 min), so a wrong password neither
//! floods vCenter nor locks the account.
use reqwest::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The vim25 version osprov speaks (every vCenter since 7.0 accepts it).
const SOAP_ACTION: &str = "urn:vim25/7.0.3.0";

/// Errors of a SOAP call.
#[derive(Debug, thiserror::Error)]
pub enum SoapError {
    #[error("vCenter unreachable at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("vCenter refused the login for the configured account")]
    InvalidLogin,
    #[error("the vCenter session is not authenticated")]
    NotAuthenticated,
    #[error("vCenter fault {kind}: {message}")]
    Fault { kind: String, message: String },
    #[error("vCenter answered HTTP {status} without a SOAP fault")]
    Status { status: u16 },
    #[error("vCenter's answer is not the SOAP osprov expects: {0}")]
    Malformed(String),
}

/// A managed object reference: `type` and value (`VirtualMachine`, `vm-42`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// The reference as the element `name` (`<_this type="…">…</_this>`).
    pub fn xml(&self, name: &str) -> String {
        format!(
            "<{name} type=\"{}\">{}</{name}>",
            esc(&self.kind),
            esc(&self.value)
        )
    }
}

/// XML-escape a value for element text or an attribute.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The parts of the ServiceContent osprov uses.
#[derive(Clone, Debug)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    /// The VirtualDiskManager (the `template` strategy copies and deletes disks with it).
    pub virtual_disk_manager: Option<MoRef>,
}

/// How to reach one vCenter.
#[derive(Clone)]
pub struct SoapConfig {
    pub url: String,
    pub username: String,
    pub password: String,
    pub max_connections: usize,
    pub timeout: Duration,
}

impl std::fmt::Debug for SoapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapConfig")
            .field("url", &self.url)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// The SOAP client of one dispatcher.
pub struct Soap {
    cfg: SoapConfig,
    http: reqwest::Client,
    cookie: Mutex<Option<String>>,
    login: tokio::sync::Mutex<()>,
    content: tokio::sync::OnceCell<ServiceContent>,
    permits: Arc<Semaphore>,
    calls: std::sync::atomic::AtomicU64,
    /// Logins so far: objects made in a session (views, filters) are valid for one epoch.
    epoch: std::sync::atomic::AtomicU64,
    /// After a refused login: no new try before this instant, and the wait that led to it.
    refused: Mutex<Option<(Instant, Duration)>>,
}

/// The first wait after a refused login, and the longest (it doubles in between). A refused
/// account is not tried again sooner, so a wrong password does not lock the vCenter account nor
/// flood its log; a fixed Secret builds a new client at once.
const REFUSED_FIRST: Duration = Duration::from_secs(10);
const REFUSED_MAX: Duration = Duration::from_secs(300);

/// The `Body`'s first element of a SOAP response, as text to parse.
fn body_of(doc: &roxmltree::Document<'_>) -> Result<roxmltree::NodeId, SoapError> {
    doc.descendants()
        .find(|n| n.has_tag_name(("http://schemas.xmlsoap.org/soap/envelope/", "Body")))
        .and_then(|b| b.children().find(|c| c.is_element()))
        .map(|n| n.id())
        .ok_or_else(|| SoapError::Malformed("no SOAP Body".into()))
}

/// The fault in a SOAP body element, if it is one.
fn fault(node: roxmltree::Node<'_, '_>) -> Option<SoapError> {
    if node.tag_name().name() != "Fault" {
        return None;
    }
    let message = child_text(node, "faultstring").unwrap_or_default();
    let detail = node
        .children()
        .find(|c| c.has_tag_name("detail"))
        .and_then(|d| d.children().find(|c| c.is_element()));
    let kind = detail
        .map(|d| {
            xsi_type(d).unwrap_or_else(|| d.tag_name().name().trim_end_matches("Fault").to_string())
        })
        .unwrap_or_else(|| "Fault".into());
    Some(match kind.as_str() {
        "NotAuthenticated" => SoapError::NotAuthenticated,
        "InvalidLogin" => SoapError::InvalidLogin,
        _ => SoapError::Fault { kind, message },
    })
}

/// Whether a property-collector answer lists properties it could not read for want of a session
/// (vcsim answers a read without a session so, where vCenter sends a `NotAuthenticated` fault).
fn unauthenticated_read(doc: &roxmltree::Document<'_>) -> bool {
    doc.descendants()
        .filter(|n| n.has_tag_name("missingSet"))
        .flat_map(|m| m.descendants())
        .any(|f| {
            f.tag_name().name() == "fault" && xsi_type(f).as_deref() == Some("NotAuthenticated")
        })
}

/// The `xsi:type` of an element, without a namespace prefix.
pub fn xsi_type(node: roxmltree::Node<'_, '_>) -> Option<String> {
    node.attribute(("http://www.w3.org/2001/XMLSchema-instance", "type"))
        .map(|t| t.rsplit(':').next().unwrap_or(t).to_string())
}

/// The text of `node`'s first child element named `name`.
pub fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .map(|c| c.text().unwrap_or_default().to_string())
}

/// The managed object reference in element `node`.
pub fn moref(node: roxmltree::Node<'_, '_>) -> MoRef {
    MoRef::new(
        node.attribute("type").unwrap_or_default(),
        node.text().unwrap_or_default(),
    )
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
         <soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

impl Soap {
    /// A client over `http` (which carries the TLS settings).
    pub fn new(cfg: SoapConfig, http: reqwest::Client) -> Soap {
        let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
        Soap {
            cfg,
            http,
            cookie: Mutex::new(None),
            login: tokio::sync::Mutex::new(()),
            content: tokio::sync::OnceCell::new(),
            permits,
            calls: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::atomic::AtomicU64::new(0),
            refused: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// SOAP calls made so far (for the benchmark).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current session's number (see [`Soap::call`]'s re-login).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cookie(&self) -> Option<String> {
        self.cookie
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_cookie(&self, c: Option<String>) {
        *self.cookie.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Post one request body; the response text, or its fault.
    async fn post(&self, body: &str) -> Result<(String, Option<String>), SoapError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SoapError::Malformed("client closed".into()))?;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut req = self
            .http
            .post(&self.cfg.url)
            .timeout(self.cfg.timeout)
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(envelope(body));
        if let Some(c) = self.cookie() {
            if let Ok(v) = HeaderValue::from_str(&c) {
                req = req.header(COOKIE, v);
            }
        }
        let resp = req.send().await.map_err(|source| SoapError::Connect {
            url: self.cfg.url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let text = resp.text().await.map_err(|source| SoapError::Connect {
            url: self.cfg.url.clone(),
            source,
        })?;
        let doc = roxmltree::Document::parse(&text).map_err(|e| {
            if status >= 400 {
                SoapError::Status { status }
            } else {
                SoapError::Malformed(e.to_string())
            }
        })?;
        let node = doc
            .get_node(body_of(&doc)?)
            .ok_or_else(|| SoapError::Malformed("no SOAP Body".into()))?;
        if let Some(f) = fault(node) {
            return Err(f);
        }
        if unauthenticated_read(&doc) {
            return Err(SoapError::NotAuthenticated);
        }
        if status >= 400 {
            return Err(SoapError::Status { status });
        }
        Ok((text, cookie))
    }

    /// The ServiceContent (read once, without a session).
    pub async fn service_content(&self) -> Result<ServiceContent, SoapError> {
        self.content
            .get_or_try_init(|| async {
                let body = "<RetrieveServiceContent xmlns=\"urn:vim25\">\
                            <_this type=\"ServiceInstance\">ServiceInstance</_this>\
                            </RetrieveServiceContent>";
                let (text, _) = self.post(body).await?;
                parse_service_content(&text)
            })
            .await
            .cloned()
    }

    /// Log in unless a session exists (or `force`); concurrent callers share one login.
    async fn ensure_login(&self, force_after: Option<&str>) -> Result<(), SoapError> {
        let _one = self.login.lock().await;
        let current = self.cookie();
        let stale = match force_after {
            Some(old) => current.as_deref() == Some(old),
            None => current.is_none(),
        };
        if !stale {
            return Ok(());
        }
        let refused = *self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_some_and(|(until, _)| Instant::now() < until) {
            return Err(SoapError::InvalidLogin);
        }
        let sc = self.service_content().await?;
        let body = format!(
            "<Login xmlns=\"urn:vim25\">{}<userName>{}</userName><password>{}</password></Login>",
            sc.session_manager.xml("_this"),
            esc(&self.cfg.username),
            esc(&self.cfg.password)
        );
        self.set_cookie(None);
        let (_, cookie) = match self.post(&body).await {
            Err(SoapError::InvalidLogin) => {
                let wait = refused
                    .map(|(_, w)| (w * 2).min(REFUSED_MAX))
                    .unwrap_or(REFUSED_FIRST);
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now() + wait, wait));
                return Err(SoapError::InvalidLogin);
            }
            other => other?,
        };
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let cookie =
            cookie.ok_or_else(|| SoapError::Malformed("Login set no session cookie".into()))?;
        self.set_cookie(Some(cookie));
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::debug!(url = %self.cfg.url, "vCenter session opened");
        Ok(())
    }

    /// Make a call in the session, logging in first and once more on `NotAuthenticated`.
    pub async fn call(&self, body: &str) -> Result<String, SoapError> {
        self.ensure_login(None).await?;
        let used = self.cookie().unwrap_or_default();
        match self.post(body).await {
            Err(SoapError::NotAuthenticated) => {
                self.ensure_login(Some(&used)).await?;
                self.post(body).await.map(|(t, _)| t)
            }
            other => other.map(|(t, _)| t),
        }
    }

    /// End the session (best effort; a vCenter that is gone ends it itself).
    pub async fn logout(&self) {
        if self.cookie().is_none() {
            return;
        }
        let Ok(sc) = self.service_content().await else {
            return;
        };
        let body = format!(
            "<Logout xmlns=\"urn:vim25\">{}</Logout>",
            sc.session_manager.xml("_this")
        );
        if let Err(e) = self.post(&body).await {
            tracing::debug!(url = %self.cfg.url, error = %e, "vCenter logout failed");
        }
        self.set_cookie(None);
    }
}

/// Read the ServiceContent references from a `RetrieveServiceContent` answer.
pub fn parse_service_content(text: &str) -> Result<ServiceContent, SoapError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| SoapError::Malformed(e.to_string()))?;
    let rv = doc
        .descendants()
        .find(|n| n.has_tag_name("returnval"))
        .ok_or_else(|| SoapError::Malformed("no returnval".into()))?;
    let get = |name: &str| {
        rv.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
            .map(moref)
            .ok_or_else(|| SoapError::Malformed(format!("ServiceContent has no {name}")))
    };
    Ok(ServiceContent {
        root_folder: get("rootFolder")?,
        property_collector: get("propertyCollector")?,
        view_manager: get("viewManager")?,
        session_manager: get("sessionManager")?,
        virtual_disk_manager: get("virtualDiskManager").ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAULT: &str = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Cannot complete login due to an incorrect user name or password.</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn faults_are_classified_by_their_detail_type() {
        let doc = roxmltree::Document::parse(FAULT).expect("xml");
        let body = doc.get_node(body_of(&doc).expect("body")).expect("node");
        assert!(matches!(fault(body), Some(SoapError::InvalidLogin)));
        let other = FAULT
            .replace("InvalidLoginFault", "ManagedObjectNotFoundFault")
            .replace("\"InvalidLogin\"", "\"ManagedObjectNotFound\"");
        let doc = roxmltree::Document::parse(&other).expect("xml");
        let body = doc.get_node(body_of(&doc).expect("body")).expect("node");
        match fault(body) {
            Some(SoapError::Fault { kind, message }) => {
                assert_eq!(kind, "ManagedObjectNotFound");
                assert!(message.contains("incorrect"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_content_references_are_read() {
        let text = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><viewManager type="ViewManager">ViewManager</viewManager><sessionManager type="SessionManager">SessionManager</sessionManager></returnval></RetrieveServiceContentResponse></Body></Envelope>"#;
        let sc = parse_service_content(text).expect("parsed");
        assert_eq!(sc.root_folder, MoRef::new("Folder", "group-d1"));
        assert_eq!(
            sc.session_manager.xml("_this"),
            "<_this type=\"SessionManager\">SessionManager</_this>"
        );
    }

    #[test]
    fn a_read_without_a_session_is_not_authenticated() {
        let text = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1</obj><missingSet><path>name</path><fault xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="LocalizedMethodFault"><fault x:type="NotAuthenticated"><privilegeId>System.Read</privilegeId></fault></fault></missingSet></objects></returnval></RetrievePropertiesExResponse></Body></Envelope>"#;
        let doc = roxmltree::Document::parse(text).expect("xml");
        assert!(unauthenticated_read(&doc));
        let fine = text.replace("NotAuthenticated", "NoPermission");
        assert!(!unauthenticated_read(
            &roxmltree::Document::parse(&fine).expect("xml")
        ));
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
