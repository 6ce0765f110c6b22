//! The pure planner: (request, observed world) → the one next [`Action`].
//!
//! No I/O lives here. The controller gathers what it knows — the request, the inventory cache's
//! view of the host and its dispatcher, what the adapter says about a recorded operation, who holds
//! the host and how many slots are in use — and this module decides. [`next_status`] then turns an
//! action into the status the request should carry. Every branch is matched exhaustively and unit
//! tested in `plan/tests.rs`.
use crate::adapter::OperationState;
use crate::api::conditions::reason;
use crate::api::{DispatcherState, OSProvisioningRequestSpec, OSProvisioningRequestStatus, Phase};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// The request as the planner sees it.
#[derive(Clone, Debug)]
pub struct RequestView<'a> {
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a OSProvisioningRequestSpec,
    pub status: &'a OSProvisioningRequestStatus,
    /// `spec.timeout` as read by the controller: `None` when unset, `Err` when unreadable.
    pub timeout: Option<Result<Duration, String>>,
}

/// What the inventory says about the requested host.
#[derive(Clone, Debug, PartialEq)]
pub enum HostLookup {
    /// Some dispatcher that could know the host has not finished a discovery yet.
    DispatchersNotReady,
    /// No dispatcher reports the host. `fresh`: every dispatcher discovered after the request was
    /// first seen, so the answer is final.
    NotFound { fresh: bool },
    /// The host and its dispatcher.
    Found(HostFacts),
}

/// Facts about a found host and its dispatcher.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFacts {
    pub dispatcher: String,
    pub dispatcher_state: DispatcherState,
    /// The dispatcher discovered after the request was first seen.
    pub fresh: bool,
    pub current_os: Option<String>,
    pub available_os: Vec<String>,
    /// The backend reports a provisioning in progress on the host.
    pub backend_busy: bool,
    /// The dispatcher's adapter delivers a host's own configuration (a config drive).
    pub delivers_config: bool,
}

/// The request's own configuration (its user-data, network-config and meta-data Secrets), as
/// the controller found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigLookup {
    /// The request names no configuration Secret.
    NotRequested,
    /// Every Secret and key it names is there and usable.
    Ready,
    /// Not usable yet: `reason` is `ConfigurationMissing` or `ConfigurationInvalid`.
    Unusable {
        reason: &'static str,
        message: String,
    },
}

/// What the adapter said about the operation recorded in the request's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpObservation {
    /// No operation is recorded in status.
    NoneRecorded,
    /// The backend never saw the recorded token (the controller stopped between recording the
    /// intent and calling the backend).
    UnknownToBackend,
    /// The backend's answer.
    State(OperationState),
    /// The backend could not be asked.
    Unreachable(String),
    /// The operation's record is gone or not the controller's, after the backend may have been
    /// touched: the attempt cannot be resumed safely.
    RecordLost(String),
}

/// Who else wants the host and how busy the dispatcher is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Another request (name) holds the host.
    pub held_by_other: Option<String>,
    /// An older open request (name) for the same host goes first.
    pub older_waiting: Option<String>,
    pub dispatcher_active: u32,
    pub dispatcher_limit: Option<u32>,
    pub global_active: u32,
    pub global_limit: Option<u32>,
}

/// Retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_secs(5),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1`, given `attempt` failures so far, scaled by `jitter`
    /// (a factor in 0.8..1.2 drawn by the caller, so this stays deterministic).
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.cap);
        raw.mul_f64(jitter.clamp(0.5, 1.5))
    }
}

/// Everything the planner is given besides the request.
#[derive(Clone, Debug)]
pub struct World {
    pub host: HostLookup,
    /// Looked at only before an attempt starts.
    pub config: ConfigLookup,
    pub operation: OpObservation,
    pub occupancy: Occupancy,
    pub now: Timestamp,
    pub policy: RetryPolicy,
    /// Jitter factor for backoff (0.8..1.2).
    pub jitter: f64,
    /// How often a running operation is polled.
    pub poll_every: Duration,
}

/// The one next step for a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The status is final for this generation; nothing to do.
    Done,
    /// Wait in `phase` (Pending or Queued) and look again after `retry_in`.
    Wait {
        phase: Phase,
        reason: &'static str,
        message: String,
        retry_in: Duration,
        discover: bool,
    },
    /// The request cannot be carried out.
    Reject {
        reason: &'static str,
        message: String,
    },
    /// The host runs the requested OS.
    Succeed {
        reason: &'static str,
        message: String,
    },
    /// Record the intent (token) in status, then ask the backend to reprovision.
    Start {
        dispatcher: String,
        token: String,
        attempt: u32,
    },
    /// The intent is recorded but the backend never saw it: call the backend with the same token.
    Resume { token: String },
    /// The attempt ran past `spec.timeout`: cancel its operation in the management software;
    /// the cancelled operation then ends the attempt as failed.
    Cancel { token: String, message: String },
    /// The operation is running; look again after `retry_in`. `note` explains a degraded poll.
    Poll {
        retry_in: Duration,
        note: Option<String>,
    },
    /// The attempt failed; try again at `at`.
    RetryLater { message: String, at: Timestamp },
    /// Every attempt failed.
    Fail {
        reason: &'static str,
        message: String,
    },
}

/// Token for one attempt of one generation of one request.
pub fn token(uid: &str, generation: i64, attempt: u32) -> String {
    format!("{uid}/{generation}/{attempt}")
}

fn is_terminal(phase: Option<Phase>) -> bool {
    phase.is_some_and(Phase::is_terminal)
}

/// Attempts already made for the current generation.
pub fn attempts_so_far(req: &RequestView<'_>) -> u32 {
    let st = req.status;
    let stale_op = st
        .operation
        .as_ref()
        .is_some_and(|op| op.generation != req.generation);
    if stale_op || st.observed_generation != Some(req.generation) {
        return 0;
    }
    st.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(0)
}

fn max_attempts(req: &RequestView<'_>, policy: &RetryPolicy) -> u32 {
    req.spec
        .max_attempts
        .and_then(|m| u32::try_from(m).ok())
        .filter(|m| *m > 0)
        .unwrap_or(policy.max_attempts)
}

/// Decide the next step for a request that is not being deleted.
pub fn plan(req: &RequestView<'_>, world: &World) -> Action {
    let st = req.status;
    if st.observed_generation == Some(req.generation) && is_terminal(st.phase) {
        return Action::Done;
    }
    if let Some(op) = st.operation.as_ref() {
        let current = op.generation == req.generation;
        match (&world.operation, current) {
            (OpObservation::State(OperationState::Running { progress }), _) => {
                if let Some(limit) = over_time(req, op, world.now).filter(|_| current) {
                    return Action::Cancel {
                        token: op.token.clone(),
                        message: cancelled_for(limit),
                    };
                }
                return Action::Poll {
                    retry_in: world.poll_every,
                    note: progress.clone(),
                };
            }
            (OpObservation::Unreachable(why), _) => {
                return Action::Poll {
                    retry_in: world.poll_every,
                    note: Some(format!("{}: {why}", reason::DISPATCHER_UNAVAILABLE)),
                };
            }
            (OpObservation::State(OperationState::Succeeded), true) => {
                return Action::Succeed {
                    reason: reason::PROVISIONED,
                    message: format!("host {} runs {}", req.spec.host, op.os),
                };
            }
            (OpObservation::State(OperationState::Failed { message }), true) => {
                return failed_attempt(req, world, message.clone());
            }
            (OpObservation::State(OperationState::Cancelled), true) => {
                let message = over_time(req, op, world.now)
                    .map(cancelled_for)
                    .unwrap_or_else(|| {
                        "the operation was cancelled in the management software".into()
                    });
                return failed_attempt(req, world, message);
            }
            (OpObservation::RecordLost(why), true) => {
                return Action::Fail {
                    reason: reason::OPERATION_RECORD_LOST,
                    message: format!(
                        "attempt {} ended without a second reprovision: {why}; create a new \
                         request (or change spec.os) to reprovision {} again",
                        attempts_so_far(req),
                        req.spec.host
                    ),
                };
            }
            (OpObservation::UnknownToBackend, true) if st.phase == Some(Phase::Provisioning) => {
                // An attempt the backend never took, already past its time: it ends without
                // touching the host rather than starting late.
                if let Some(limit) = over_time(req, op, world.now) {
                    return failed_attempt(
                        req,
                        world,
                        format!(
                            "the backend did not take the attempt within spec.timeout ({limit})"
                        ),
                    );
                }
                return Action::Resume {
                    token: op.token.clone(),
                };
            }
            // An operation of an older generation has ended, was never sent, or the recorded one was
            // cleared: plan afresh for the current generation.
            (
                OpObservation::State(_)
                | OpObservation::UnknownToBackend
                | OpObservation::RecordLost(_)
                | OpObservation::NoneRecorded,
                _,
            ) => {}
        }
    }
    if st.phase == Some(Phase::Queued) && st.reason.as_deref() == Some(reason::RETRY_SCHEDULED) {
        if let Some(at) = st.next_retry_at.as_ref().map(|t| t.0) {
            if at > world.now && attempts_so_far(req) > 0 {
                let left = at.duration_since(world.now);
                return Action::Wait {
                    phase: Phase::Queued,
                    reason: reason::RETRY_SCHEDULED,
                    message: st.message.clone().unwrap_or_default(),
                    retry_in: Duration::try_from(left).unwrap_or(Duration::ZERO),
                    discover: false,
                };
            }
        }
    }
    if let Some(Err(why)) = &req.timeout {
        return Action::Reject {
            reason: reason::INVALID_TIMEOUT,
            message: format!("spec.timeout: {why}"),
        };
    }
    let facts = match &world.host {
        HostLookup::DispatchersNotReady => {
            return Action::Wait {
                phase: Phase::Pending,
                reason: reason::DISPATCHER_UNAVAILABLE,
                message: "waiting for the OSDispatchers to finish their first discovery".into(),
                retry_in: world.poll_every,
                discover: false,
            };
        }
        HostLookup::NotFound { fresh: false } => {
            return Action::Wait {
                phase: Phase::Pending,
                reason: reason::WAITING_FOR_DISCOVERY,
                message: format!(
                    "host {} not found yet; re-discovering before deciding",
                    req.spec.host
                ),
                retry_in: world.poll_every,
                discover: true,
            };
        }
        HostLookup::NotFound { fresh: true } => {
            return Action::Reject {
                reason: reason::HOST_NOT_MANAGED,
                message: format!(
                    "host {} is not known to any OSDispatcher; add it in the management software, \
                     osprov only manages hosts its dispatchers discover",
                    req.spec.host
                ),
            };
        }
        HostLookup::Found(facts) => facts,
    };
    if let Some(wanted) = req.spec.dispatcher.as_deref() {
        if wanted != facts.dispatcher {
            return Action::Reject {
                reason: reason::DISPATCHER_MISMATCH,
                message: format!(
                    "host {} belongs to OSDispatcher {}, not {wanted}",
                    req.spec.host, facts.dispatcher
                ),
            };
        }
    }
    match facts.dispatcher_state {
        DispatcherState::Ready => {}
        DispatcherState::Connecting | DispatcherState::Degraded | DispatcherState::Unreachable => {
            return Action::Wait {
                phase: Phase::Pending,
                reason: reason::DISPATCHER_UNAVAILABLE,
                message: format!(
                    "OSDispatcher {} is {}",
                    facts.dispatcher,
                    facts.dispatcher_state.as_str()
                ),
                retry_in: world.poll_every,
                discover: false,
            };
        }
    }
    if !facts.available_os.contains(&req.spec.os) {
        if !facts.fresh {
            return Action::Wait {
                phase: Phase::Pending,
                reason: reason::WAITING_FOR_DISCOVERY,
                message: format!(
                    "OS {} not in host {}'s catalogue yet; re-discovering",
                    req.spec.os, req.spec.host
                ),
                retry_in: world.poll_every,
                discover: true,
            };
        }
        return Action::Reject {
            reason: reason::OS_NOT_AVAILABLE,
            message: format!(
                "OS image {} is not available on host {} (available: {})",
                req.spec.os,
                req.spec.host,
                facts.available_os.join(", ")
            ),
        };
    }
    match &world.config {
        ConfigLookup::NotRequested => {}
        ConfigLookup::Ready if facts.delivers_config => {}
        ConfigLookup::Ready => {
            return Action::Reject {
                reason: reason::CONFIGURATION_UNSUPPORTED,
                message: format!(
                    "OSDispatcher {} cannot deliver user-data, network-config or meta-data to \
                     host {} (config drive {}); remove them from the request or use a \
                     dispatcher whose adapter delivers that config drive",
                    facts.dispatcher,
                    req.spec.host,
                    req.spec.config_drive.unwrap_or_default().as_str()
                ),
            };
        }
        ConfigLookup::Unusable { reason, message } => {
            return Action::Wait {
                phase: Phase::Pending,
                reason,
                message: message.clone(),
                retry_in: world.poll_every,
                discover: false,
            };
        }
    }
    let occ = &world.occupancy;
    if let Some(other) = occ.held_by_other.as_ref().or(occ.older_waiting.as_ref()) {
        return Action::Wait {
            phase: Phase::Queued,
            reason: reason::HOST_BUSY,
            message: format!(
                "host {} is reserved for request {other}, which goes first",
                req.spec.host
            ),
            retry_in: world.poll_every,
            discover: false,
        };
    }
    let attempts = attempts_so_far(req);
    if attempts == 0
        && !facts.backend_busy
        && facts.current_os.as_deref() == Some(req.spec.os.as_str())
    {
        return Action::Succeed {
            reason: reason::ALREADY_PROVISIONED,
            message: format!(
                "host {} already runs {}; nothing to do",
                req.spec.host, req.spec.os
            ),
        };
    }
    if facts.backend_busy {
        return Action::Wait {
            phase: Phase::Queued,
            reason: reason::HOST_BUSY,
            message: format!(
                "the management software reports an operation in progress on host {}",
                req.spec.host
            ),
            retry_in: world.poll_every,
            discover: false,
        };
    }
    let full = |active: u32, limit: Option<u32>| limit.is_some_and(|l| active >= l);
    if full(occ.dispatcher_active, occ.dispatcher_limit)
        || full(occ.global_active, occ.global_limit)
    {
        return Action::Wait {
            phase: Phase::Queued,
            reason: reason::WAITING_FOR_CAPACITY,
            message: "waiting for a free reprovisioning slot".into(),
            retry_in: world.poll_every,
            discover: false,
        };
    }
    let attempt = attempts + 1;
    Action::Start {
        dispatcher: facts.dispatcher.clone(),
        token: token(req.uid, req.generation, attempt),
        attempt,
    }
}

/// `spec.timeout` as written, when it is set and has passed since the recorded attempt started.
fn over_time<'r>(
    req: &'r RequestView<'_>,
    op: &crate::api::Operation,
    now: Timestamp,
) -> Option<&'r str> {
    let limit = match req.timeout.as_ref()? {
        Ok(limit) => *limit,
        Err(_) => return None,
    };
    let started = op.started.as_ref()?.0;
    let ran = Duration::try_from(now.duration_since(started)).unwrap_or(Duration::ZERO);
    (ran >= limit).then(|| req.spec.timeout.as_deref().unwrap_or_default())
}

fn cancelled_for(limit: &str) -> String {
    format!("the attempt ran longer than spec.timeout ({limit}) and was cancelled")
}

fn failed_attempt(req: &RequestView<'_>, world: &World, message: String) -> Action {
    let attempts = attempts_so_far(req);
    let max = max_attempts(req, &world.policy);
    if attempts >= max {
        return Action::Fail {
            reason: reason::ATTEMPTS_EXHAUSTED,
            message: format!("{attempts} of {max} attempts failed; last: {message}"),
        };
    }
    let delay = world.policy.backoff(attempts, world.jitter);
    let at = world
        .now
        .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(world.now);
    Action::RetryLater {
        message: format!("attempt {attempts} of {max} failed: {message}"),
        at,
    }
}

/// What deleting a request requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Nothing runs; release the host and drop the finalizer.
    Release,
    /// Cancel the running operation first.
    Cancel { token: String },
    /// The backend cannot be asked now; try again later (the host stays reserved).
    RetryLater,
}

/// Decide what deleting a request requires, given what the backend says of its operation.
pub fn plan_cleanup(status: &OSProvisioningRequestStatus, observation: &OpObservation) -> Cleanup {
    let Some(op) = status.operation.as_ref() else {
        return Cleanup::Release;
    };
    match observation {
        OpObservation::State(OperationState::Running { .. }) => Cleanup::Cancel {
            token: op.token.clone(),
        },
        OpObservation::Unreachable(_) if status.phase == Some(Phase::Provisioning) => {
            Cleanup::RetryLater
        }
        OpObservation::Unreachable(_)
        | OpObservation::State(
            OperationState::Succeeded | OperationState::Failed { .. } | OperationState::Cancelled,
        )
        | OpObservation::UnknownToBackend
        | OpObservation::RecordLost(_)
        | OpObservation::NoneRecorded => Cleanup::Release,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;
