//! Carrying out a request [`Decision`]: the one place where a decision meets I/O, always in the
//! same order.
//!
//! 1. Claim, when the decision asks: the host (and for a start a slot) is taken before anything
//!    else. A required claim that is refused is replaced by [`decision::claim_refused`].
//! 2. The one status write. When it fails, a reservation this call took is given back (a stale
//!    view of a request that already held the host must not free it) and nothing else happens.
//! 3. The effects, in order. The reprovision call's answer becomes [`decision::after_call`],
//!    performed the same way (its status write carries the written intent forward).
//! 4. The requeue of the last decision.
//!
//! What the steps touch is behind [`Ports`], so the order is unit tested below with a recording
//! fake and no Kubernetes or backend at all; `requests.rs` implements it over the API, the
//! occupancy book, the engine and the event publisher.
use super::Error;
use crate::api::OSProvisioningRequestStatus;
use crate::provisioner::decision::{
    self, CallOutcome, Claim, ClaimOutcome, Decision, Effect, Facts, Requeue,
};

/// What performing a decision touches.
#[async_trait::async_trait]
pub trait Ports: Send + Sync {
    fn claim(&self, claim: &Claim) -> ClaimOutcome;
    /// Give back the request's slot and wake the requests waiting for its host.
    fn release(&self);
    /// The request is finished: forget it, free its slot, wake the next in line.
    fn close(&self);
    /// Ask `dispatcher` (every dispatcher of the namespace when `None`) for a discovery now.
    fn discover(&self, dispatcher: Option<&str>);
    /// Write the status; later writes build on the object this one returned.
    async fn write_status(&self, status: &OSProvisioningRequestStatus) -> Result<(), Error>;
    /// Publish an Event for the phase `status` carries.
    async fn announce(&self, status: &OSProvisioningRequestStatus);
    async fn reprovision(&self, dispatcher: &str, token: &str) -> CallOutcome;
    /// Cancel an operation; failures are logged and the next look asks again.
    async fn cancel(&self, dispatcher: &str, token: &str);
}

/// Perform `decision`, made from `facts`; returns when to look again.
pub async fn perform<P: Ports>(
    ports: &P,
    decision: Decision,
    facts: &Facts<'_>,
) -> Result<Requeue, Error> {
    let mut taken = false;
    if let Some(claim) = &decision.claim {
        match ports.claim(claim) {
            ClaimOutcome::Taken => taken = true,
            ClaimOutcome::AlreadyHeld => {}
            ClaimOutcome::Refused if claim.required() => {
                let queued = decision::claim_refused(facts);
                return carry_out(ports, queued, facts).await;
            }
            ClaimOutcome::Refused => {}
        }
    }
    match carry_out(ports, decision, facts).await {
        Err(e) if taken => {
            ports.release();
            Err(e)
        }
        other => other,
    }
}

/// Steps 2 to 4 of a decision whose claim (if any) is settled.
async fn carry_out<P: Ports>(
    ports: &P,
    decision: Decision,
    facts: &Facts<'_>,
) -> Result<Requeue, Error> {
    let Decision {
        status,
        effects,
        requeue,
        ..
    } = decision;
    let written = status.as_ref().unwrap_or(facts.status);
    if let Some(st) = &status {
        ports.write_status(st).await?;
    }
    for effect in effects {
        match effect {
            Effect::DiscoverAll => ports.discover(None),
            Effect::Discover { dispatcher } => ports.discover(Some(&dispatcher)),
            Effect::Announce => ports.announce(written).await,
            Effect::Release => ports.release(),
            Effect::Close => ports.close(),
            Effect::Cancel { dispatcher, token } => ports.cancel(&dispatcher, &token).await,
            Effect::Reprovision { dispatcher, token } => {
                let outcome = ports.reprovision(&dispatcher, &token).await;
                let after = Facts {
                    status: written,
                    ..facts.clone()
                };
                let next = decision::after_call(&outcome, &dispatcher, &after);
                return Box::pin(carry_out(ports, next, &after)).await;
            }
        }
    }
    Ok(requeue)
}

#[cfg(test)]
mod tests;
