//! Pure translation of a planner [`Action`] into the status a request should carry.
//!
//! Phases map onto the three conditions `kubectl wait` users look at: `Accepted` (the host and OS
//! are valid), `Progressing` (something is happening or about to) and `Provisioned` (the host runs
//! the requested OS). Every condition carries the generation it describes.
use super::plan::Action;
use crate::api::conditions::{self, kind, reason, Desired, FALSE, TRUE, UNKNOWN};
use crate::api::{OSProvisioningRequestStatus, Operation, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

/// Status fields a phase implies.
struct Shape<'a> {
    phase: Phase,
    reason: &'a str,
    message: String,
}

fn set_conditions(
    st: &mut OSProvisioningRequestStatus,
    shape: &Shape<'_>,
    generation: i64,
    now: Timestamp,
) {
    let (accepted, progressing, provisioned) = match shape.phase {
        Phase::Pending => (UNKNOWN, TRUE, FALSE),
        Phase::Queued | Phase::Provisioning => (TRUE, TRUE, FALSE),
        Phase::Succeeded => (TRUE, FALSE, TRUE),
        Phase::Failed | Phase::Cancelled => (TRUE, FALSE, FALSE),
        Phase::Rejected => (FALSE, FALSE, FALSE),
    };
    let accepted_reason = match shape.phase {
        Phase::Rejected | Phase::Pending => shape.reason,
        Phase::Queued
        | Phase::Provisioning
        | Phase::Succeeded
        | Phase::Failed
        | Phase::Cancelled => reason::HOST_AND_OS_VALID,
    };
    let g = Some(generation);
    let msg = shape.message.clone();
    conditions::set(
        &mut st.conditions,
        Desired {
            type_: kind::ACCEPTED,
            status: accepted,
            reason: accepted_reason,
            message: msg.clone(),
        },
        g,
        now,
    );
    conditions::set(
        &mut st.conditions,
        Desired {
            type_: kind::PROGRESSING,
            status: progressing,
            reason: shape.reason,
            message: msg.clone(),
        },
        g,
        now,
    );
    conditions::set(
        &mut st.conditions,
        Desired {
            type_: kind::PROVISIONED,
            status: provisioned,
            reason: shape.reason,
            message: msg,
        },
        g,
        now,
    );
}

fn shape(st: &mut OSProvisioningRequestStatus, s: Shape<'_>, generation: i64, now: Timestamp) {
    set_conditions(st, &s, generation, now);
    let terminal = s.phase.is_terminal();
    if terminal && (st.phase != Some(s.phase) || st.completed_at.is_none()) {
        st.completed_at = Some(Time(now));
    }
    if !terminal {
        st.completed_at = None;
    }
    st.phase = Some(s.phase);
    st.reason = Some(s.reason.to_string());
    st.message = Some(s.message);
    st.observed_generation = Some(generation);
}

/// The status after `action`, or `None` when the action changes nothing in status.
/// `os` and `generation` describe the request's current spec.
pub fn next_status(
    current: &OSProvisioningRequestStatus,
    action: &Action,
    os: &str,
    generation: i64,
    now: Timestamp,
) -> Option<OSProvisioningRequestStatus> {
    let mut st = current.clone();
    let attempts = current.attempts.unwrap_or(0);
    match action {
        Action::Done => return None,
        Action::Wait {
            phase,
            reason,
            message,
            ..
        } => {
            if st.observed_generation != Some(generation) {
                st.attempts = Some(0);
                st.next_retry_at = None;
            }
            shape(
                &mut st,
                Shape {
                    phase: *phase,
                    reason,
                    message: message.clone(),
                },
                generation,
                now,
            );
        }
        Action::Reject { reason, message } => {
            shape(
                &mut st,
                Shape {
                    phase: Phase::Rejected,
                    reason,
                    message: message.clone(),
                },
                generation,
                now,
            );
        }
        Action::Succeed { reason, message } => {
            st.next_retry_at = None;
            if st.observed_generation != Some(generation) {
                st.attempts = Some(0);
            }
            shape(
                &mut st,
                Shape {
                    phase: Phase::Succeeded,
                    reason,
                    message: message.clone(),
                },
                generation,
                now,
            );
        }
        Action::Start {
            dispatcher,
            token,
            attempt,
        } => {
            st.operation = Some(Operation {
                dispatcher: dispatcher.clone(),
                token: token.clone(),
                os: os.to_string(),
                generation,
                id: None,
                started: Some(MicroTime(now)),
                record: None,
            });
            st.attempts = Some(i32::try_from(*attempt).unwrap_or(i32::MAX));
            st.next_retry_at = None;
            let message = format!("attempt {attempt}: reprovisioning with {os}");
            shape(
                &mut st,
                Shape {
                    phase: Phase::Provisioning,
                    reason: reason::PROVISIONING,
                    message,
                },
                generation,
                now,
            );
        }
        Action::Resume { .. } => {
            let message = format!("attempt {attempts}: resuming reprovisioning with {os}");
            shape(
                &mut st,
                Shape {
                    phase: Phase::Provisioning,
                    reason: reason::PROVISIONING,
                    message,
                },
                generation,
                now,
            );
        }
        Action::Cancel { message, .. } => {
            shape(
                &mut st,
                Shape {
                    phase: Phase::Provisioning,
                    reason: reason::PROVISIONING,
                    message: format!("{message}: cancelling"),
                },
                generation,
                now,
            );
        }
        Action::Poll { note, .. } => {
            let (reason, message) = match note {
                Some(n) if n.starts_with(reason::DISPATCHER_UNAVAILABLE) => {
                    (reason::DISPATCHER_UNAVAILABLE, n.clone())
                }
                Some(n) => (reason::PROVISIONING, n.clone()),
                None => (reason::PROVISIONING, format!("reprovisioning with {os}")),
            };
            // Polling an operation of an older generation keeps the old generation's attempts.
            let keep_generation = st.observed_generation.unwrap_or(generation);
            let g = if st
                .operation
                .as_ref()
                .is_some_and(|op| op.generation == generation)
            {
                generation
            } else {
                keep_generation
            };
            shape(
                &mut st,
                Shape {
                    phase: Phase::Provisioning,
                    reason,
                    message,
                },
                g,
                now,
            );
        }
        Action::RetryLater { message, at } => {
            st.operation = None;
            st.next_retry_at = Some(Time(*at));
            shape(
                &mut st,
                Shape {
                    phase: Phase::Queued,
                    reason: reason::RETRY_SCHEDULED,
                    message: message.clone(),
                },
                generation,
                now,
            );
        }
        Action::Fail { reason, message } => {
            shape(
                &mut st,
                Shape {
                    phase: Phase::Failed,
                    reason,
                    message: message.clone(),
                },
                generation,
                now,
            );
        }
    }
    (st != *current).then_some(st)
}

/// The status of a request deleted before it finished.
pub fn cancelled_status(
    current: &OSProvisioningRequestStatus,
    generation: i64,
    now: Timestamp,
) -> OSProvisioningRequestStatus {
    let mut st = current.clone();
    shape(
        &mut st,
        Shape {
            phase: Phase::Cancelled,
            reason: reason::CANCELLED,
            message: "the request was deleted; the host is released".into(),
        },
        generation,
        now,
    );
    st
}
