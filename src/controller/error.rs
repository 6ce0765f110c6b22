//! The controllers' error type and the error policy every controller shares: count the error,
//! look again soon after a conflict (spread out), else after the controller's fallback.
use super::leader::LeaderError;
use super::{metrics, Scope};

/// After a conflict, look again after this long plus up to [`CONFLICT_JITTER_MS`] (a safety net:
/// the watch normally brings the newer version sooner).
const CONFLICT_RETRY_MS: u64 = 1000;
/// Spread of the conflict requeue, so a lagging watch is not answered by a synchronised storm.
const CONFLICT_JITTER_MS: u64 = 2000;

/// Errors of the controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("serialisation error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cancelling the operation must wait: {0}")]
    CleanupPending(String),
    #[error("leader election: {0}")]
    Leader(#[from] LeaderError),
    #[error("invalid setting: {0}")]
    Setting(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(_) => "Kube",
            Error::Finalizer(_) => "Finalizer",
            Error::MissingField(_) => "MissingField",
            Error::Json(_) => "Serialisation",
            Error::CleanupPending(_) => "CleanupPending",
            Error::Leader(_) => "Leader",
            Error::Setting(_) => "Setting",
        }
    }

    /// True when the write failed because our view of the object was stale: a resourceVersion
    /// conflict (409), or the finalizer helper's JSON-patch `test` failing (422). The watch will
    /// bring the newer version, which triggers the next reconcile.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        let stale =
            |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 409,
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => stale(e),
                F::UnnamedObject | F::InvalidFinalizer => false,
            },
            _ => false,
        }
    }
}

/// The common error policy: count the error, look again soon after a conflict, else after
/// `fallback`.
pub fn on_error(
    controller: &str,
    err: &Error,
    scope: &Scope,
    fallback: std::time::Duration,
) -> kube::runtime::controller::Action {
    let label = metrics::ErrorLabel {
        controller: controller.into(),
        kind: err.kind().into(),
    };
    scope.shared.metrics.errors.get_or_create(&label).inc();
    if err.is_conflict() {
        // Our view was stale. The watch delivers the newer version and that triggers the next
        // reconcile; this requeue is only a safety net, spread out so that a lagging watch is
        // not answered with a storm of doomed writes.
        tracing::debug!(
            controller,
            "write conflicted; waiting for the newer version"
        );
        let jitter = rand::Rng::random_range(&mut rand::rng(), 0..CONFLICT_JITTER_MS);
        return kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(
            CONFLICT_RETRY_MS + jitter,
        ));
    }
    tracing::warn!(controller, error = %err, "reconcile failed");
    kube::runtime::controller::Action::requeue(fallback)
}
