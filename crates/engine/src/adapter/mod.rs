//! The adapter contract between the provisioner engine and a piece of management software.
//!
//! One narrow, async trait ([`Adapter`]) that every backend implements: subscribe to events,
//! discover the inventory, start a reprovision (idempotent per token), look an operation up by
//! token, and cancel where the backend can. Adapters never wait for a provisioning to finish: they
//! start it and report progress when asked or through events.
pub mod configdrive;
pub mod store;

use crate::api::{HostProvisioningState, PowerState};
pub use configdrive::{DriveFormat, HostConfig};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One host as the management software reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The backend's identifier for the host.
    pub id: String,
    /// The host's name (becomes the ManagedHost name after sanitising).
    pub name: String,
    /// The OS the host runs, when the backend knows.
    pub current_os: Option<String>,
    /// The OS images this host can take.
    pub available_os: Vec<String>,
    pub power: PowerState,
    pub provisioning: HostProvisioningState,
    /// Extra facts (manufacturer, model, serial, MACs…).
    pub details: BTreeMap<String, String>,
}

/// Everything one discovery found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hosts: Vec<HostInfo>,
}

/// A change the backend announces between discoveries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BackendEvent {
    /// A host's facts changed (including a host that appeared).
    HostChanged(HostInfo),
    /// A host disappeared from the backend.
    HostRemoved { id: String },
    /// An operation changed state.
    OperationChanged {
        host_id: String,
        token: String,
        state: OperationState,
    },
}

/// Progress of one backend operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    /// Still running.
    Running { progress: Option<String> },
    /// Finished; the host runs the requested OS.
    Succeeded,
    /// Finished unsuccessfully.
    Failed { message: String },
    /// Stopped by a cancel.
    Cancelled,
}

impl OperationState {
    /// True once the operation can no longer change.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OperationState::Running { .. })
    }
}

/// What the backend knows about one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStatus {
    /// The backend's own id for the operation.
    pub id: String,
    pub state: OperationState,
}

/// The outcome of a cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// The backend stopped the operation.
    Cancelled,
    /// The operation had already finished (or never existed); nothing to stop.
    NotRunning,
    /// This backend cannot cancel; the operation runs to its end.
    Unsupported,
}

/// Errors from an adapter. `Unreachable` and `Backend` are transient; the others need a person.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("management software unreachable: {0}")]
    Unreachable(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error("invalid adapter configuration: {0}")]
    Config(String),
    #[error("host {0} is not known to the management software")]
    UnknownHost(String),
    #[error("OS image {os} is not available on host {host}")]
    UnknownOs { host: String, os: String },
    #[error("host {host} is busy with another operation ({token})")]
    HostBusy { host: String, token: String },
    #[error("the {0} adapter is not available in this build")]
    Unavailable(&'static str),
    /// The operation's record is missing or not the controller's after the backend may have been
    /// touched: repeating the attempt could wipe the host twice, so it ends here.
    #[error("the operation record was lost: {0}")]
    RecordLost(String),
    #[error("backend error: {message}")]
    Backend {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl AdapterError {
    /// Every value [`Self::reason`] gives.
    pub const REASONS: [&'static str; 9] = [
        "Unreachable",
        "AuthenticationFailed",
        "InvalidConfiguration",
        "HostNotManaged",
        "OSNotAvailable",
        "HostBusy",
        "AdapterUnavailable",
        "BackendError",
        "OperationRecordLost",
    ];

    /// A machine-readable reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AdapterError::Unreachable(_) => "Unreachable",
            AdapterError::AuthenticationFailed(_) => "AuthenticationFailed",
            AdapterError::Config(_) => "InvalidConfiguration",
            AdapterError::UnknownHost(_) => "HostNotManaged",
            AdapterError::UnknownOs { .. } => "OSNotAvailable",
            AdapterError::HostBusy { .. } => "HostBusy",
            AdapterError::Unavailable(_) => "AdapterUnavailable",
            AdapterError::Backend { .. } => "BackendError",
            AdapterError::RecordLost(_) => crate::api::conditions::reason::OPERATION_RECORD_LOST,
        }
    }

    /// True when retrying later may help without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            AdapterError::Unreachable(_)
            | AdapterError::Backend { .. }
            | AdapterError::HostBusy { .. } => true,
            AdapterError::AuthenticationFailed(_)
            | AdapterError::Config(_)
            | AdapterError::UnknownHost(_)
            | AdapterError::UnknownOs { .. }
            | AdapterError::Unavailable(_)
            | AdapterError::RecordLost(_) => false,
        }
    }
}

/// The contract every backend implements. All methods are short calls: none waits for a
/// provisioning to finish.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    /// Register for backend events. Called before the first discovery so nothing is missed.
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError>;
    /// Report every host, its OS catalogue and state.
    async fn discover(&self) -> Result<Inventory, AdapterError>;
    /// Start reprovisioning `host_id` with `os`. Idempotent for the same `token`: a second call
    /// with a token the backend already knows returns that operation and starts nothing.
    /// `config` is the host's own configuration; an adapter that does not
    /// [deliver it](Adapter::delivers_config) is never given a custom one.
    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &HostConfig,
    ) -> Result<OperationStatus, AdapterError>;
    /// True when the adapter hands a host its own configuration (user-data, network-config,
    /// meta-data) in the convention `format`. Requests carrying configuration for a host whose
    /// adapter does not are rejected before anything touches the host.
    fn delivers_config(&self, format: DriveFormat) -> bool {
        let _ = format;
        false
    }
    /// Look an operation up by its token; `None` when the backend never saw that token.
    async fn operation(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError>;
    /// Stop an operation where the backend can.
    async fn cancel(&self, host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError>;
    /// Give back what the adapter holds at the backend (a Redfish session, say) because its
    /// dispatcher session ended. Best effort; the adapter is not used afterwards.
    async fn close(&self) {}
}

/// A host as tests need it: on, idle, running `os`, offering images `a` and `b`.
#[cfg(any(test, feature = "fixtures"))]
pub fn test_host(name: &str, os: &str) -> HostInfo {
    HostInfo {
        id: format!("id-{name}"),
        name: name.into(),
        current_os: Some(os.into()),
        available_os: vec!["a".into(), "b".into()],
        power: PowerState::On,
        provisioning: HostProvisioningState::Idle,
        details: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::AdapterError;

    #[test]
    fn reasons_lists_every_reason() {
        let all = [
            AdapterError::Unreachable(String::new()),
            AdapterError::AuthenticationFailed(String::new()),
            AdapterError::Config(String::new()),
            AdapterError::UnknownHost(String::new()),
            AdapterError::UnknownOs {
                host: String::new(),
                os: String::new(),
            },
            AdapterError::HostBusy {
                host: String::new(),
                token: String::new(),
            },
            AdapterError::Unavailable("x"),
            AdapterError::Backend {
                message: String::new(),
                source: None,
            },
            AdapterError::RecordLost(String::new()),
        ];
        let reasons: Vec<&str> = all.iter().map(AdapterError::reason).collect();
        assert_eq!(reasons, AdapterError::REASONS);
    }
}
