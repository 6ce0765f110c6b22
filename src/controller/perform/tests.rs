//! The performer's order, with a recording fake for every port: no backend call without a
//! written intent, a failed intent write gives back only the reservation it took, and a refused
//! claim or a refused reprovision turns into its follow-up decision.
use super::*;
use crate::provisioner::decision::decide;
use crate::provisioner::fixtures::{facts, now, provisioning, spec, view, world};
use crate::provisioner::plan::{plan, HostLookup, OpObservation};
use std::sync::Mutex;
use std::time::Duration;

/// Records every port call in order; answers as configured.
struct Fake {
    log: Mutex<Vec<String>>,
    claim: ClaimOutcome,
    write_fails: bool,
    call: CallOutcome,
}

impl Fake {
    fn new(claim: ClaimOutcome, write_fails: bool, call: CallOutcome) -> Fake {
        Fake {
            log: Mutex::new(Vec::new()),
            claim,
            write_fails,
            call,
        }
    }

    fn note(&self, step: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(step);
    }

    fn steps(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Ports for Fake {
    fn claim(&self, claim: &Claim) -> ClaimOutcome {
        self.note(format!("claim {}", claim.dispatcher()));
        self.claim
    }
    fn release(&self) {
        self.note("release".into());
    }
    fn close(&self) {
        self.note("close".into());
    }
    fn discover(&self, dispatcher: Option<&str>) {
        self.note(format!("discover {}", dispatcher.unwrap_or("*")));
    }
    async fn write_status(&self, status: &OSProvisioningRequestStatus) -> Result<(), Error> {
        let token = status.operation.as_ref().map(|o| o.token.as_str());
        let phase = status.phase.map(|p| p.as_str()).unwrap_or("-");
        self.note(format!("write {phase} {}", token.unwrap_or("-")));
        if self.write_fails {
            return Err(Error::MissingField("test: the write conflicts"));
        }
        Ok(())
    }
    async fn announce(&self, status: &OSProvisioningRequestStatus) {
        let phase = status.phase.map(|p| p.as_str()).unwrap_or("-");
        self.note(format!("announce {phase}"));
    }
    async fn reprovision(&self, dispatcher: &str, token: &str) -> CallOutcome {
        self.note(format!("reprovision {dispatcher} {token}"));
        self.call.clone()
    }
    async fn cancel(&self, dispatcher: &str, token: &str) {
        self.note(format!("cancel {dispatcher} {token}"));
    }
}

/// Plan and perform a first look at a new request for h1 → ubuntu-24.04.
async fn start_with(fake: &Fake) -> Result<Requeue, Error> {
    let s = spec("h1", "ubuntu-24.04");
    let st = OSProvisioningRequestStatus::default();
    let action = plan(&view(&s, &st, 1), &world(HostLookup::Found(facts())));
    let f = facts_for(&st);
    perform(fake, decide(&action, &f), &f).await
}

fn facts_for(st: &OSProvisioningRequestStatus) -> Facts<'_> {
    Facts {
        status: st,
        os: "ubuntu-24.04",
        generation: 1,
        now: now(),
        op_id: None,
        host_known: true,
        poll_every: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn claim_then_intent_then_call() {
    let fake = Fake::new(ClaimOutcome::Taken, false, CallOutcome::Running);
    let requeue = start_with(&fake).await.expect("performed");
    assert_eq!(
        fake.steps(),
        [
            "claim d1",
            "write Provisioning u1/1/1",
            "announce Provisioning",
            "reprovision d1 u1/1/1"
        ]
    );
    assert_eq!(requeue, Requeue::After(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_failed_intent_write_never_calls_and_gives_back_the_claim_it_took() {
    let fake = Fake::new(ClaimOutcome::Taken, true, CallOutcome::Running);
    assert!(start_with(&fake).await.is_err());
    assert_eq!(
        fake.steps(),
        ["claim d1", "write Provisioning u1/1/1", "release"]
    );
}

#[tokio::test]
async fn a_failed_intent_write_keeps_a_reservation_held_before() {
    let fake = Fake::new(ClaimOutcome::AlreadyHeld, true, CallOutcome::Running);
    assert!(start_with(&fake).await.is_err());
    assert_eq!(fake.steps(), ["claim d1", "write Provisioning u1/1/1"]);
}

#[tokio::test]
async fn a_refused_claim_queues_without_an_intent_or_a_call() {
    let fake = Fake::new(ClaimOutcome::Refused, false, CallOutcome::Running);
    let requeue = start_with(&fake).await.expect("performed");
    assert_eq!(
        fake.steps(),
        ["claim d1", "write Queued -", "announce Queued"]
    );
    assert_eq!(requeue, Requeue::After(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_refused_reprovision_fails_the_attempt_after_the_intent() {
    let fake = Fake::new(
        ClaimOutcome::Taken,
        false,
        CallOutcome::Refused("no such image".into()),
    );
    let requeue = start_with(&fake).await.expect("performed");
    assert_eq!(
        fake.steps(),
        [
            "claim d1",
            "write Provisioning u1/1/1",
            "announce Provisioning",
            "reprovision d1 u1/1/1",
            "write Failed u1/1/1",
            "discover d1",
            "announce Failed",
            "close"
        ]
    );
    assert_eq!(requeue, Requeue::AwaitChange);
}

#[tokio::test]
async fn an_answered_call_is_looked_at_again_at_once() {
    let fake = Fake::new(ClaimOutcome::Taken, false, CallOutcome::Answered);
    let requeue = start_with(&fake).await.expect("performed");
    assert_eq!(requeue, Requeue::After(decision::SETTLE));
}

#[tokio::test]
async fn a_running_operation_only_holds_its_host_even_when_refused() {
    let s = spec("h1", "ubuntu-24.04");
    let st = provisioning(1, 1);
    let w = world(HostLookup::Found(facts())).observing(OpObservation::State(
        crate::adapter::OperationState::Running { progress: None },
    ));
    let f = facts_for(&st);
    let d = decide(&plan(&view(&s, &st, 1), &w), &f);
    let fake = Fake::new(ClaimOutcome::Refused, false, CallOutcome::Running);
    perform(&fake, d, &f).await.expect("performed");
    // A refused hold does not stop the poll: the status is refreshed, nothing is called.
    assert_eq!(fake.steps(), ["claim d1", "write Provisioning u1/1/1"]);
}

#[tokio::test]
async fn a_timed_out_attempt_says_so_then_cancels_its_operation() {
    let d = decide(
        &crate::provisioner::plan::Action::Cancel {
            token: "u1/1/1".into(),
            message: "the attempt ran longer than spec.timeout (5m) and was cancelled".into(),
        },
        &facts_for(&provisioning(1, 1)),
    );
    let st = provisioning(1, 1);
    let f = facts_for(&st);
    let fake = Fake::new(ClaimOutcome::Taken, false, CallOutcome::Running);
    perform(&fake, d, &f).await.expect("performed");
    // The status says why first; nothing is claimed or reprovisioned.
    assert_eq!(
        fake.steps(),
        ["write Provisioning u1/1/1", "cancel d1 u1/1/1"]
    );
}
