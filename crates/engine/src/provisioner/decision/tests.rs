//! Decision unit tests: each planner action becomes the right claim, status and effects; the
//! reprovision call only ever follows the status that records its token.
use super::*;
use crate::adapter::OperationState;
use crate::provisioner::fixtures::{facts, now, provisioning, spec, view, world};
use crate::provisioner::plan::{plan, HostLookup, OpObservation};

fn facts_for<'a>(status: &'a OSProvisioningRequestStatus, os: &'a str) -> Facts<'a> {
    Facts {
        status,
        os,
        generation: 1,
        now: now(),
        op_id: None,
        host_known: true,
        poll_every: Duration::from_secs(1),
    }
}

#[test]
fn a_new_request_claims_records_its_intent_then_calls_the_backend() {
    let s = spec("h1", "ubuntu-24.04");
    let st = OSProvisioningRequestStatus::default();
    let action = plan(&view(&s, &st, 1), &world(HostLookup::Found(facts())));
    let d = decide(&action, &facts_for(&st, "ubuntu-24.04"));
    assert_eq!(
        d.claim,
        Some(Claim::Start {
            dispatcher: "d1".into()
        })
    );
    let written = d.status.as_ref().expect("the intent is written");
    let recorded = written.operation.as_ref().map(|o| o.token.as_str());
    assert_eq!(recorded, Some("u1/1/1"));
    assert_eq!(
        d.effects,
        vec![
            Effect::Announce,
            Effect::Reprovision {
                dispatcher: "d1".into(),
                token: "u1/1/1".into()
            }
        ]
    );
}

#[test]
fn every_reprovision_effect_comes_with_the_status_recording_its_token() {
    // Across the planner's whole space of scenarios, no decision calls the backend with a token
    // its own status write does not record.
    let s = spec("h1", "ubuntu-24.04");
    let statuses = [
        OSProvisioningRequestStatus::default(),
        provisioning(1, 1),
        provisioning(1, 2),
    ];
    let observations = [
        OpObservation::NoneRecorded,
        OpObservation::UnknownToBackend,
        OpObservation::Unreachable("down".into()),
        OpObservation::State(OperationState::Succeeded),
        OpObservation::State(OperationState::Running { progress: None }),
        OpObservation::State(OperationState::Failed {
            message: "boom".into(),
        }),
    ];
    let mut calls = 0;
    for st in &statuses {
        for obs in &observations {
            let w = world(HostLookup::Found(facts())).observing(obs.clone());
            let action = plan(&view(&s, st, 1), &w);
            let d = decide(&action, &facts_for(st, "ubuntu-24.04"));
            for e in &d.effects {
                if let Effect::Reprovision { token, .. } = e {
                    calls += 1;
                    let after = d.status.as_ref().unwrap_or(st);
                    let recorded = after.operation.as_ref().map(|o| o.token.as_str());
                    assert_eq!(recorded, Some(token.as_str()), "{action:?}");
                    assert_eq!(after.phase, Some(Phase::Provisioning));
                    assert!(d.claim.as_ref().is_some_and(Claim::required));
                }
            }
        }
    }
    assert!(calls >= 2, "the scenarios include a start and a resume");
}

#[test]
fn a_resume_reuses_the_recorded_token_outside_the_limits() {
    let s = spec("h1", "ubuntu-24.04");
    let st = provisioning(1, 1);
    let w = world(HostLookup::Found(facts())).observing(OpObservation::UnknownToBackend);
    let d = decide(
        &plan(&view(&s, &st, 1), &w),
        &facts_for(&st, "ubuntu-24.04"),
    );
    let claim = d.claim.expect("claims");
    assert!(!claim.limited() && claim.required());
    assert!(d.effects.contains(&Effect::Reprovision {
        dispatcher: "d1".into(),
        token: "u1/1/1".into()
    }));
}

#[test]
fn no_call_when_the_inventory_lost_the_host() {
    let s = spec("h1", "ubuntu-24.04");
    let st = OSProvisioningRequestStatus::default();
    let action = plan(&view(&s, &st, 1), &world(HostLookup::Found(facts())));
    let mut f = facts_for(&st, "ubuntu-24.04");
    f.host_known = false;
    let d = decide(&action, &f);
    assert_eq!(d, Decision::nothing(Requeue::After(Duration::from_secs(1))));
}

#[test]
fn a_running_operation_holds_its_host_and_records_the_backend_id() {
    let s = spec("h1", "ubuntu-24.04");
    let st = provisioning(1, 1);
    let w =
        world(HostLookup::Found(facts())).backend_says(OperationState::Running { progress: None });
    let action = plan(&view(&s, &st, 1), &w);
    let mut f = facts_for(&st, "ubuntu-24.04");
    f.op_id = Some("task-7");
    let d = decide(&action, &f);
    assert_eq!(
        d.claim,
        Some(Claim::Hold {
            dispatcher: "d1".into()
        })
    );
    assert!(!d.claim.as_ref().is_some_and(Claim::required));
    let written = d.status.expect("the id is new");
    assert_eq!(written, {
        let mut want = next_status(&st, &action, "ubuntu-24.04", 1, now()).unwrap_or_default();
        want = crate::provisioner::fixtures::with_backend_id(want, "task-7");
        want
    });
    assert!(d.effects.is_empty(), "same phase: no event, no call");
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(1)));
}

#[test]
fn a_failed_attempt_releases_its_slot_and_waits_for_the_retry() {
    let s = spec("h1", "ubuntu-24.04");
    let st = provisioning(1, 1);
    let w = world(HostLookup::Found(facts())).backend_says(OperationState::Failed {
        message: "disk".into(),
    });
    let d = decide(
        &plan(&view(&s, &st, 1), &w),
        &facts_for(&st, "ubuntu-24.04"),
    );
    assert_eq!(d.claim, None);
    assert_eq!(d.effects, vec![Effect::Announce, Effect::Release]);
    assert_eq!(d.requeue, Requeue::After(Duration::from_secs(2)));
    let written = d.status.expect("queued for a retry");
    assert_eq!(written.phase, Some(Phase::Queued));
    assert!(written.operation.is_none());
}

#[test]
fn a_retry_due_now_still_waits_a_moment() {
    let st = provisioning(1, 1);
    let f = facts_for(&st, "ubuntu-24.04");
    let d = decide(
        &Action::RetryLater {
            message: "again".into(),
            at: now(),
        },
        &f,
    );
    assert_eq!(d.requeue, Requeue::After(SETTLE));
}

#[test]
fn final_outcomes_close_the_request() {
    let st = provisioning(1, 1);
    let f = facts_for(&st, "ubuntu-24.04");
    for action in [
        Action::Succeed {
            reason: reason::PROVISIONED,
            message: "ok".into(),
        },
        Action::Fail {
            reason: reason::ATTEMPTS_EXHAUSTED,
            message: "no".into(),
        },
        Action::Reject {
            reason: reason::OS_NOT_AVAILABLE,
            message: "no".into(),
        },
    ] {
        let d = decide(&action, &f);
        assert_eq!(
            d.effects,
            vec![Effect::Announce, Effect::Close],
            "{action:?}"
        );
        assert_eq!(d.requeue, Requeue::AwaitChange);
        assert!(d
            .status
            .is_some_and(|s| s.phase.is_some_and(Phase::is_terminal)));
    }
    let done = decide(&Action::Done, &f);
    assert_eq!((done.status, done.effects), (None, vec![Effect::Close]));
}

#[test]
fn an_unknown_host_asks_for_a_discovery_and_an_unchanged_wait_writes_nothing() {
    let s = spec("ghost", "debian-12");
    let st = OSProvisioningRequestStatus::default();
    let w = world(HostLookup::NotFound { fresh: false });
    let action = plan(&view(&s, &st, 1), &w);
    let d = decide(&action, &facts_for(&st, "debian-12"));
    assert_eq!(d.effects, vec![Effect::DiscoverAll, Effect::Announce]);
    let pending = d.status.expect("pending");
    let again = decide(&action, &facts_for(&pending, "debian-12"));
    assert_eq!(again.status, None);
    assert_eq!(again.effects, vec![Effect::DiscoverAll]);
}

#[test]
fn a_refused_claim_queues_the_request() {
    let st = OSProvisioningRequestStatus::default();
    let d = claim_refused(&facts_for(&st, "ubuntu-24.04"));
    let written = d.status.expect("queued");
    assert_eq!(written.phase, Some(Phase::Queued));
    assert_eq!(
        written.reason.as_deref(),
        Some(reason::WAITING_FOR_CAPACITY)
    );
    assert!(written.operation.is_none(), "no intent without a slot");
    assert_eq!(d.claim, None);
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Reprovision { .. })));
}

#[test]
fn the_backend_answer_decides_the_next_look() {
    let st = provisioning(1, 1);
    let f = facts_for(&st, "ubuntu-24.04");
    let poll = Requeue::After(Duration::from_secs(1));
    assert_eq!(after_call(&CallOutcome::Running, "d1", &f).requeue, poll);
    assert_eq!(after_call(&CallOutcome::NotYet, "d1", &f).requeue, poll);
    assert_eq!(
        after_call(&CallOutcome::Answered, "d1", &f).requeue,
        Requeue::After(SETTLE)
    );
    let lost = after_call(&CallOutcome::RecordLost("deleted".into()), "d1", &f);
    let written = lost.status.expect("failed");
    assert_eq!(
        (written.phase, written.reason.as_deref()),
        (Some(Phase::Failed), Some(reason::OPERATION_RECORD_LOST))
    );
    assert_eq!(lost.effects, vec![Effect::Announce, Effect::Close]);
    let refused = after_call(&CallOutcome::Refused("no such image".into()), "d1", &f);
    let written = refused.status.expect("failed");
    assert_eq!(
        (written.phase, written.reason.as_deref()),
        (Some(Phase::Failed), Some(reason::BACKEND_REJECTED))
    );
    assert_eq!(
        refused.effects,
        vec![
            Effect::Discover {
                dispatcher: "d1".into()
            },
            Effect::Announce,
            Effect::Close
        ]
    );
}
