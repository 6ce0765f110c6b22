//! Condition helpers shared by the three kinds.
//!
//! Conditions are `metav1.Condition`s kept as a list-map keyed by `type`. Setting a condition only
//! moves `lastTransitionTime` when the status flips, as the API conventions ask, so a controller that
//! re-applies identical conditions writes nothing new.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition status values.
pub const TRUE: &str = "True";
/// Condition status values.
pub const FALSE: &str = "False";
/// Condition status values.
pub const UNKNOWN: &str = "Unknown";

/// Condition types, the one list of them.
pub mod kind {
    /// Request: the host and OS are valid.
    pub const ACCEPTED: &str = "Accepted";
    /// Request: something is happening or about to.
    pub const PROGRESSING: &str = "Progressing";
    /// Request: the host runs the requested OS.
    pub const PROVISIONED: &str = "Provisioned";
    /// Dispatcher: connected and discovering.
    pub const READY: &str = "Ready";
    /// Dispatcher: a discovered host's name is taken by another dispatcher's ManagedHost.
    pub const HOST_NAME_CONFLICT: &str = "HostNameConflict";
}

/// Condition and phase reasons, the one list of them.
pub mod reason {
    /// `Accepted` of a request past validation.
    pub const HOST_AND_OS_VALID: &str = "HostAndOSValid";
    /// `Accepted` false: no dispatcher reports the host.
    pub const HOST_NOT_MANAGED: &str = "HostNotManaged";
    /// `Accepted` false: the host's dispatcher does not offer the OS.
    pub const OS_NOT_AVAILABLE: &str = "OSNotAvailable";
    /// `Accepted` false: the request names another dispatcher than the one that has the host.
    pub const DISPATCHER_MISMATCH: &str = "DispatcherMismatch";
    /// Pending: another request holds the host.
    pub const HOST_BUSY: &str = "HostBusy";
    /// Pending: the dispatcher's `maxConcurrent` is reached.
    pub const WAITING_FOR_CAPACITY: &str = "WaitingForCapacity";
    /// Pending: the host's dispatcher is not Ready.
    pub const DISPATCHER_UNAVAILABLE: &str = "DispatcherUnavailable";
    /// Pending: the dispatcher has not discovered its hosts yet.
    pub const WAITING_FOR_DISCOVERY: &str = "WaitingForDiscovery";
    /// `Progressing`: an attempt runs.
    pub const PROVISIONING: &str = "Provisioning";
    /// An attempt failed; the next one starts at `nextRetryAt`.
    pub const RETRY_SCHEDULED: &str = "RetryScheduled";
    /// The recorded operation succeeded.
    pub const PROVISIONED: &str = "Provisioned";
    /// The host already runs the OS: nothing to do.
    pub const ALREADY_PROVISIONED: &str = "AlreadyProvisioned";
    /// Failed: `maxAttempts` attempts failed.
    pub const ATTEMPTS_EXHAUSTED: &str = "AttemptsExhausted";
    /// Failed: the management software refused the reprovision for good.
    pub const BACKEND_REJECTED: &str = "BackendRejected";
    /// The operation's record (its `osprov-op-*` Secret) is missing or not the controller's after
    /// the backend may have been touched: the attempt ends and is never started again by itself.
    pub const OPERATION_RECORD_LOST: &str = "OperationRecordLost";
    /// The operation was cancelled (the request was deleted or changed).
    pub const CANCELLED: &str = "Cancelled";
    /// `spec.timeout` cannot be read as a duration.
    pub const INVALID_TIMEOUT: &str = "InvalidTimeout";
    /// A configuration Secret (or its key) the request names does not exist.
    pub const CONFIGURATION_MISSING: &str = "ConfigurationMissing";
    /// A configuration Secret's content cannot be used (not UTF-8, meta-data not a mapping…).
    pub const CONFIGURATION_INVALID: &str = "ConfigurationInvalid";
    /// The request carries configuration its host's dispatcher cannot deliver.
    pub const CONFIGURATION_UNSUPPORTED: &str = "ConfigurationUnsupported";
}

/// A desired condition, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    /// The condition's type (`Accepted`, `Progressing`, `Provisioned`, `Ready`, `Discovered`).
    pub type_: &'a str,
    /// `True`, `False` or `Unknown`.
    pub status: &'a str,
    /// One of [`reason`].
    pub reason: &'a str,
    /// For people; never holds Secret contents.
    pub message: String,
}

/// Insert or update one condition in `conditions`, keeping `lastTransitionTime` unless the status
/// changed. Returns true when anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    want: Desired<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == want.type_) {
        Some(existing) => {
            let changed = existing.status != want.status
                || existing.reason != want.reason
                || existing.message != want.message
                || existing.observed_generation != generation;
            if existing.status != want.status {
                existing.last_transition_time = Time(now);
            }
            existing.status = want.status.to_string();
            existing.reason = want.reason.to_string();
            existing.message = want.message;
            existing.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: want.type_.to_string(),
                status: want.status.to_string(),
                reason: want.reason.to_string(),
                message: want.message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Find a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of that type exists with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut conds = Vec::new();
        let want = |s: &'static str, r: &'static str| Desired {
            type_: "Ready",
            status: s,
            reason: r,
            message: "m".into(),
        };
        assert!(set(&mut conds, want(TRUE, "A"), Some(1), ts(10)));
        assert!(!set(&mut conds, want(TRUE, "A"), Some(1), ts(20)));
        assert_eq!(conds[0].last_transition_time.0, ts(10));
        assert!(set(&mut conds, want(TRUE, "B"), Some(1), ts(30)));
        assert_eq!(conds[0].last_transition_time.0, ts(10));
        assert!(set(&mut conds, want(FALSE, "B"), Some(2), ts(40)));
        assert_eq!(conds[0].last_transition_time.0, ts(40));
        assert_eq!(conds.len(), 1);
        assert!(!is_true(&conds, "Ready"));
        assert!(get(&conds, "Other").is_none());
    }
}
