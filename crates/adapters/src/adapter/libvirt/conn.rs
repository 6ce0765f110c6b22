//! Connections to libvirt: opened with the dispatcher's credentials, shared per URI and user,
//! reopened when found dead, and every call run off the async runtime (libvirt's API blocks).
//!
//! Sharing matters beyond saving sockets: libvirt's test driver keeps a `test:///<file>` node's
//! state per connection, so a controller restarted in-process (and a test that changes a
//! domain "outside osprov") sees the same node only through the same connection.
//!
//! libvirt asks for credentials through a callback that the `virt` crate takes as a plain `fn`
//! (no closure, no user data), so the credentials of the open in progress sit in a static
//! behind a lock that serialises opens with credentials. They are never logged.
use super::events;
use crate::adapter::AdapterError;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use virt::connect::{Connect, ConnectAuth, ConnectCredential, ConnectCredentialType};
use virt::error::{Error as VirtError, ErrorNumber};

/// A libvirt user name and password (SASL, or the test driver's `<auth>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The credentials of the open in progress (see the module doc).
static OPENING: Mutex<Option<Credentials>> = Mutex::new(None);

// The `virt` crate fixes this signature (`ConnectAuthCallback`).
#[allow(clippy::ptr_arg)]
fn answer(creds: &mut Vec<ConnectCredential>) {
    let guard = OPENING.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = guard.as_ref() else {
        return;
    };
    for cred in creds.iter_mut() {
        cred.result = match cred.typed {
            ConnectCredentialType::AuthName | ConnectCredentialType::UserName => {
                Some(c.username.clone())
            }
            ConnectCredentialType::Passphrase | ConnectCredentialType::NoEchoPrompt => {
                Some(c.password.clone())
            }
            _ => None,
        };
    }
}

/// Serialises opens with credentials, so [`OPENING`] holds the right ones.
static OPEN_LOCK: Mutex<()> = Mutex::new(());

fn open(uri: &str, creds: Option<&Credentials>) -> Result<Connect, VirtError> {
    let Some(creds) = creds else {
        return Connect::open(Some(uri));
    };
    let _serial = OPEN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    *OPENING.lock().unwrap_or_else(|p| p.into_inner()) = Some(creds.clone());
    let mut auth = ConnectAuth::new(
        vec![
            ConnectCredentialType::AuthName,
            ConnectCredentialType::Passphrase,
        ],
        answer,
    );
    let result = Connect::open_auth(Some(uri), &mut auth, 0);
    *OPENING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    result
}

/// Open connections by URI and user name.
static SHARED: LazyLock<Mutex<HashMap<String, Connect>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The live connection to `uri` as `creds`' user, opened when there is none (or it died).
/// Blocks: call it from [`blocking`].
pub fn shared_connection(uri: &str, creds: Option<&Credentials>) -> Result<Connect, AdapterError> {
    events::ensure_loop()?;
    let key = format!(
        "{uri}\0{}",
        creds.map(|c| c.username.as_str()).unwrap_or("")
    );
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(conn) = shared.get(&key) {
        if conn.is_alive().unwrap_or(false) {
            return Ok(conn.clone());
        }
        shared.remove(&key);
    }
    let conn = open(uri, creds).map_err(|e| opening(uri, &e))?;
    shared.insert(key, conn.clone());
    Ok(conn)
}

/// The error of a failed open: refused credentials need a person, the rest may pass.
fn opening(uri: &str, e: &VirtError) -> AdapterError {
    use virt::enumutil::Enum::Known;
    match e.code() {
        Known(ErrorNumber::AuthFailed | ErrorNumber::AuthCancelled) => {
            AdapterError::AuthenticationFailed(format!("libvirt at {uri}: {}", e.message()))
        }
        _ => AdapterError::Unreachable(format!("connecting to libvirt at {uri}: {}", e.message())),
    }
}

/// The driver does not offer the call at all (not a passing failure).
pub fn unsupported(e: &VirtError) -> bool {
    use virt::enumutil::Enum::Known;
    matches!(
        e.code(),
        Known(ErrorNumber::NoSupport | ErrorNumber::OperationUnsupported)
    )
}

/// The adapter error of a failed call.
pub fn call(what: &str, e: &VirtError) -> AdapterError {
    use virt::enumutil::Enum::Known;
    let message = format!("{what}: {}", e.message());
    match e.code() {
        Known(
            ErrorNumber::NoConnect
            | ErrorNumber::SystemError
            | ErrorNumber::Rpc
            | ErrorNumber::InvalidConn
            | ErrorNumber::OperationTimeout,
        ) => AdapterError::Unreachable(message),
        Known(ErrorNumber::AuthFailed | ErrorNumber::AuthCancelled) => {
            AdapterError::AuthenticationFailed(message)
        }
        Known(ErrorNumber::NoStoragePool | ErrorNumber::NoStorageVolume) => {
            AdapterError::Config(message)
        }
        _ => AdapterError::Backend {
            message,
            source: Some(Box::new(e.clone())),
        },
    }
}

/// Run a blocking libvirt call on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, AdapterError>
where
    F: FnOnce() -> Result<T, AdapterError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdapterError::Backend {
            message: format!("a libvirt call did not finish: {e}"),
            source: None,
        })?
}
