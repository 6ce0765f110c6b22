//! The whole decision of one request reconcile, as data: the status to write and the effects
//! around that write, in the order the controller carries them out.
//!
//! [`plan`](super::plan::plan) picks the one next [`Action`]; [`decide`] turns it into a
//! [`Decision`]. The controller's performer (`controller/perform.rs`) then runs every decision the
//! same way: claim (when asked), write the status, run the effects, requeue. The two outcomes
//! only the performer learns — a refused claim and the backend's answer to the reprovision call —
//! come back here as [`claim_refused`] and [`after_call`], so every decision stays a pure function
//! of data, unit tested below without I/O.
//!
//! Safety lives in the shape: the only effect that calls the backend, [`Effect::Reprovision`], is
//! produced together with the status that records its token, and the performer runs effects only
//! after that status was written.
use super::plan::Action;
use super::status::next_status;
use crate::api::conditions::reason;
use crate::api::{OSProvisioningRequestStatus, Phase};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// How soon to look again after the backend took a reprovision and already answered it (it did
/// not report the operation as running): record the outcome almost at once, without a poll
/// interval's delay.
pub const SETTLE: Duration = Duration::from_millis(10);

/// When the next reconcile should happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Only when something changes (the status is final, or the request is gone).
    AwaitChange,
    /// After this long.
    After(Duration),
}

/// Which reservation to take before the status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new attempt: the host and a slot within the dispatcher's and the global limits; a
    /// refusal becomes [`claim_refused`].
    Start { dispatcher: String },
    /// An attempt whose intent is already recorded: the host and a slot, limits aside (the slot
    /// was granted when the intent was recorded); a refusal becomes [`claim_refused`].
    Resume { dispatcher: String },
    /// Keep holding the host of a running operation (after a restart the book is rebuilt this
    /// way); a refusal changes nothing.
    Hold { dispatcher: String },
}

impl Claim {
    pub fn dispatcher(&self) -> &str {
        match self {
            Claim::Start { dispatcher }
            | Claim::Resume { dispatcher }
            | Claim::Hold { dispatcher } => dispatcher,
        }
    }

    /// Whether the dispatcher's and global limits apply.
    pub fn limited(&self) -> bool {
        match self {
            Claim::Start { .. } => true,
            Claim::Resume { .. } | Claim::Hold { .. } => false,
        }
    }

    /// Whether a refusal must stop the decision.
    pub fn required(&self) -> bool {
        match self {
            Claim::Start { .. } | Claim::Resume { .. } => true,
            Claim::Hold { .. } => false,
        }
    }
}

/// What claiming gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This call took the reservation; a failed status write must give it back.
    Taken,
    /// The request already held it; a failed status write must not free it.
    AlreadyHeld,
    Refused,
}

/// Something the performer does after the status write succeeded, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Ask every dispatcher of the request's namespace for a discovery now.
    DiscoverAll,
    /// Ask one dispatcher for a discovery now.
    Discover { dispatcher: String },
    /// Publish an Event for the phase the written status carries.
    Announce,
    /// Give back the slot (a failed attempt waits for its retry without the host) and wake the
    /// requests waiting for the host.
    Release,
    /// The request is finished: forget it, free its slot, wake the next in line.
    Close,
    /// Call the backend with the token the written status records; the answer goes to
    /// [`after_call`], whose decision replaces the rest of this one (so it is always last).
    Reprovision { dispatcher: String, token: String },
    /// Cancel the operation `token` in the management software (best effort: the next look
    /// sees it cancelled, or still running and asks again).
    Cancel { dispatcher: String, token: String },
}

/// The whole decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub claim: Option<Claim>,
    /// The one status write; `None` when the status stays as it is.
    pub status: Option<OSProvisioningRequestStatus>,
    pub effects: Vec<Effect>,
    /// Overridden by the follow-up decision when an effect has one.
    pub requeue: Requeue,
}

impl Decision {
    /// Write `status` (when some), then run `effects`; nothing to claim.
    fn write(
        status: Option<OSProvisioningRequestStatus>,
        effects: Vec<Effect>,
        requeue: Requeue,
    ) -> Decision {
        Decision {
            claim: None,
            status,
            effects,
            requeue,
        }
    }

    fn nothing(requeue: Requeue) -> Decision {
        Decision::write(None, Vec::new(), requeue)
    }
}

/// The request facts a decision needs beyond the action.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub status: &'a OSProvisioningRequestStatus,
    pub os: &'a str,
    pub generation: i64,
    pub now: Timestamp,
    /// The backend's own id of the recorded operation, when it told us.
    pub op_id: Option<&'a str>,
    /// The inventory knows the host's backend id (a call needs it).
    pub host_known: bool,
    pub poll_every: Duration,
}

impl Facts<'_> {
    fn status_after(&self, action: &Action) -> Option<OSProvisioningRequestStatus> {
        next_status(self.status, action, self.os, self.generation, self.now)
    }

    fn status_with_op_id(&self, action: &Action) -> Option<OSProvisioningRequestStatus> {
        let mut st = self.status_after(action)?;
        if let (Some(op), Some(id)) = (st.operation.as_mut(), self.op_id) {
            if op.id.is_none() {
                op.id = Some(id.to_string());
            }
        }
        Some(st)
    }

    /// `Announce` when `status` moves the request to another phase.
    fn announce(&self, status: Option<&OSProvisioningRequestStatus>) -> Vec<Effect> {
        match status {
            Some(st) if st.phase != self.status.phase => vec![Effect::Announce],
            Some(_) | None => Vec::new(),
        }
    }
}

/// Turn the planner's action into the whole decision.
pub fn decide(action: &Action, f: &Facts<'_>) -> Decision {
    match action {
        Action::Done => Decision {
            effects: vec![Effect::Close],
            ..Decision::nothing(Requeue::AwaitChange)
        },
        Action::Wait {
            retry_in, discover, ..
        } => {
            let status = f.status_with_op_id(action);
            let mut effects = Vec::new();
            if *discover {
                effects.push(Effect::DiscoverAll);
            }
            effects.extend(f.announce(status.as_ref()));
            Decision::write(status, effects, Requeue::After(*retry_in))
        }
        Action::Reject { .. } | Action::Succeed { .. } | Action::Fail { .. } => {
            let status = f.status_with_op_id(action);
            let mut effects = f.announce(status.as_ref());
            effects.push(Effect::Close);
            Decision::write(status, effects, Requeue::AwaitChange)
        }
        Action::RetryLater { at, .. } => {
            let status = f.status_with_op_id(action);
            let mut effects = f.announce(status.as_ref());
            effects.push(Effect::Release);
            let wait = Duration::try_from(at.duration_since(f.now)).unwrap_or(Duration::ZERO);
            Decision::write(status, effects, Requeue::After(wait.max(SETTLE)))
        }
        Action::Cancel { token, .. } => {
            let status = f.status_after(action);
            let mut effects = f.announce(status.as_ref());
            if let Some(op) = f.status.operation.as_ref() {
                effects.push(Effect::Cancel {
                    dispatcher: op.dispatcher.clone(),
                    token: token.clone(),
                });
            }
            Decision::write(status, effects, Requeue::After(SETTLE.max(f.poll_every)))
        }
        Action::Poll { retry_in, .. } => {
            let status = f.status_with_op_id(action);
            let effects = f.announce(status.as_ref());
            Decision {
                claim: f.status.operation.as_ref().map(|op| Claim::Hold {
                    dispatcher: op.dispatcher.clone(),
                }),
                status,
                effects,
                requeue: Requeue::After(*retry_in),
            }
        }
        Action::Start {
            dispatcher, token, ..
        } => start(
            action,
            f,
            Claim::Start {
                dispatcher: dispatcher.clone(),
            },
            token,
        ),
        Action::Resume { token } => match f.status.operation.as_ref() {
            Some(op) => start(
                action,
                f,
                Claim::Resume {
                    dispatcher: op.dispatcher.clone(),
                },
                token,
            ),
            // The planner resumes only a recorded operation; without one there is nothing to
            // resume, and the next look plans afresh.
            None => Decision::nothing(Requeue::After(f.poll_every)),
        },
    }
}

/// Claim, record the intent, then call the backend: the one path to a reprovision.
fn start(action: &Action, f: &Facts<'_>, claim: Claim, token: &str) -> Decision {
    if !f.host_known {
        // The inventory lost the host between planning and now: nothing is claimed or written,
        // and the next look (after a discovery) decides again.
        return Decision::nothing(Requeue::After(f.poll_every));
    }
    let status = f.status_after(action);
    let mut effects = f.announce(status.as_ref());
    effects.push(Effect::Reprovision {
        dispatcher: claim.dispatcher().to_string(),
        token: token.to_string(),
    });
    Decision {
        claim: Some(claim),
        status,
        effects,
        requeue: Requeue::After(f.poll_every),
    }
}

/// The claim of a start was refused (another request holds the host, or the slots are full):
/// wait in the queue.
pub fn claim_refused(f: &Facts<'_>) -> Decision {
    let wait = Action::Wait {
        phase: Phase::Queued,
        reason: reason::WAITING_FOR_CAPACITY,
        message: "waiting for a free reprovisioning slot".into(),
        retry_in: f.poll_every,
        discover: false,
    };
    let status = f.status_after(&wait);
    let effects = f.announce(status.as_ref());
    Decision::write(status, effects, Requeue::After(f.poll_every))
}

/// What the backend answered to the reprovision call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// It took the operation and reports it running.
    Running,
    /// It took the operation and already has another answer (done, failed): look again at once.
    Answered,
    /// It could not take it now (unreachable, busy, no session): the same token is retried.
    NotYet,
    /// It refused outright (unknown OS or host).
    Refused(String),
    /// The operation's record is gone or not the controller's: the attempt ends, never repeated.
    RecordLost(String),
}

/// The decision after the reprovision call. `f.status` is the status as written with the
/// intent.
pub fn after_call(outcome: &CallOutcome, dispatcher: &str, f: &Facts<'_>) -> Decision {
    match outcome {
        CallOutcome::Running | CallOutcome::NotYet => {
            Decision::nothing(Requeue::After(f.poll_every))
        }
        CallOutcome::Answered => Decision::nothing(Requeue::After(SETTLE)),
        CallOutcome::RecordLost(message) => {
            let fail = Action::Fail {
                reason: reason::OPERATION_RECORD_LOST,
                message: format!("the attempt ends without a second reprovision: {message}"),
            };
            let status = f.status_after(&fail);
            let mut effects = f.announce(status.as_ref());
            effects.push(Effect::Close);
            Decision::write(status, effects, Requeue::AwaitChange)
        }
        CallOutcome::Refused(message) => {
            // A failed attempt, and a fresh discovery so the next request sees the backend's
            // current catalogue.
            let fail = Action::Fail {
                reason: reason::BACKEND_REJECTED,
                message: message.clone(),
            };
            let status = f.status_after(&fail);
            let mut effects = vec![Effect::Discover {
                dispatcher: dispatcher.to_string(),
            }];
            effects.extend(f.announce(status.as_ref()));
            effects.push(Effect::Close);
            Decision::write(status, effects, Requeue::AwaitChange)
        }
    }
}

#[cfg(test)]
mod tests;
