//! Planner unit tests: one or more per branch, phase and reason, without I/O.
use super::*;
use crate::api::conditions::kind;
use crate::provisioner::fixtures::{facts, now, provisioning, spec, world};
use crate::provisioner::status::{cancelled_status, next_status};

fn run(
    spec: &OSProvisioningRequestSpec,
    status: &OSProvisioningRequestStatus,
    world: &World,
) -> Action {
    plan(&crate::provisioner::fixtures::view(spec, status, 1), world)
}

#[test]
fn starts_a_valid_request_with_a_token() {
    let a = run(
        &spec("h1", "ubuntu-24.04"),
        &Default::default(),
        &world(HostLookup::Found(facts())),
    );
    assert_eq!(
        a,
        Action::Start {
            dispatcher: "d1".into(),
            token: "u1/1/1".into(),
            attempt: 1
        }
    );
    let st =
        next_status(&Default::default(), &a, "ubuntu-24.04", 1, now()).expect("status changes");
    assert_eq!(st.phase, Some(Phase::Provisioning));
    assert_eq!(
        st.operation.as_ref().map(|o| o.token.as_str()),
        Some("u1/1/1")
    );
    assert_eq!(st.attempts, Some(1));
    assert!(crate::api::conditions::is_true(
        &st.conditions,
        kind::ACCEPTED
    ));
    assert!(!crate::api::conditions::is_true(
        &st.conditions,
        kind::PROVISIONED
    ));
}

#[test]
fn waits_for_dispatchers_then_rediscovers_then_rejects_unknown_host() {
    let s = spec("ghost", "debian-12");
    match run(
        &s,
        &Default::default(),
        &world(HostLookup::DispatchersNotReady),
    ) {
        Action::Wait {
            phase: Phase::Pending,
            reason: r,
            discover: false,
            ..
        } => assert_eq!(r, reason::DISPATCHER_UNAVAILABLE),
        other => panic!("{other:?}"),
    }
    match run(
        &s,
        &Default::default(),
        &world(HostLookup::NotFound { fresh: false }),
    ) {
        Action::Wait {
            reason: r,
            discover: true,
            ..
        } => assert_eq!(r, reason::WAITING_FOR_DISCOVERY),
        other => panic!("{other:?}"),
    }
    let a = run(
        &s,
        &Default::default(),
        &world(HostLookup::NotFound { fresh: true }),
    );
    let Action::Reject { reason: r, message } = &a else {
        panic!("{a:?}")
    };
    assert_eq!(*r, reason::HOST_NOT_MANAGED);
    assert!(message.contains("add it in the management software"));
    let st = next_status(&Default::default(), &a, "debian-12", 1, now()).expect("changes");
    assert_eq!(st.phase, Some(Phase::Rejected));
    let accepted = crate::api::conditions::get(&st.conditions, kind::ACCEPTED).expect("accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", reason::HOST_NOT_MANAGED)
    );
    assert!(st.completed_at.is_some());
}

#[test]
fn unknown_os_rediscovers_then_rejects() {
    let s = spec("h1", "windows-11");
    let mut f = facts();
    f.fresh = false;
    assert!(matches!(
        run(&s, &Default::default(), &world(HostLookup::Found(f))),
        Action::Wait { discover: true, .. }
    ));
    let a = run(&s, &Default::default(), &world(HostLookup::Found(facts())));
    assert!(
        matches!(
            a,
            Action::Reject {
                reason: reason::OS_NOT_AVAILABLE,
                ..
            }
        ),
        "{a:?}"
    );
}

#[test]
fn dispatcher_mismatch_is_rejected() {
    let mut s = spec("h1", "ubuntu-24.04");
    s.dispatcher = Some("other".into());
    assert!(matches!(
        run(&s, &Default::default(), &world(HostLookup::Found(facts()))),
        Action::Reject {
            reason: reason::DISPATCHER_MISMATCH,
            ..
        }
    ));
}

#[test]
fn unavailable_dispatcher_keeps_request_pending() {
    for state in [
        DispatcherState::Connecting,
        DispatcherState::Degraded,
        DispatcherState::Unreachable,
    ] {
        let mut f = facts();
        f.dispatcher_state = state;
        assert!(matches!(
            run(
                &spec("h1", "ubuntu-24.04"),
                &Default::default(),
                &world(HostLookup::Found(f))
            ),
            Action::Wait {
                phase: Phase::Pending,
                reason: reason::DISPATCHER_UNAVAILABLE,
                ..
            }
        ));
    }
}

#[test]
fn already_running_the_os_succeeds_without_reprovision() {
    let a = run(
        &spec("h1", "debian-12"),
        &Default::default(),
        &world(HostLookup::Found(facts())),
    );
    assert!(
        matches!(
            a,
            Action::Succeed {
                reason: reason::ALREADY_PROVISIONED,
                ..
            }
        ),
        "{a:?}"
    );
}

#[test]
fn busy_host_and_full_slots_queue() {
    let mut w = world(HostLookup::Found(facts()));
    w.occupancy.held_by_other = Some("older".into());
    assert!(matches!(
        run(&spec("h1", "ubuntu-24.04"), &Default::default(), &w),
        Action::Wait {
            phase: Phase::Queued,
            reason: reason::HOST_BUSY,
            ..
        }
    ));
    let mut w = world(HostLookup::Found(facts()));
    w.occupancy.older_waiting = Some("older".into());
    // Even the already-provisioned shortcut waits for the older request.
    assert!(matches!(
        run(&spec("h1", "debian-12"), &Default::default(), &w),
        Action::Wait {
            reason: reason::HOST_BUSY,
            ..
        }
    ));
    let mut f = facts();
    f.backend_busy = true;
    assert!(matches!(
        run(
            &spec("h1", "ubuntu-24.04"),
            &Default::default(),
            &world(HostLookup::Found(f))
        ),
        Action::Wait {
            reason: reason::HOST_BUSY,
            ..
        }
    ));
    for (da, dl, ga, gl) in [(2, Some(2), 0, None), (0, None, 5, Some(5))] {
        let mut w = world(HostLookup::Found(facts()));
        w.occupancy = Occupancy {
            dispatcher_active: da,
            dispatcher_limit: dl,
            global_active: ga,
            global_limit: gl,
            ..Default::default()
        };
        assert!(matches!(
            run(&spec("h1", "ubuntu-24.04"), &Default::default(), &w),
            Action::Wait {
                reason: reason::WAITING_FOR_CAPACITY,
                ..
            }
        ));
    }
}

#[test]
fn running_operation_is_polled_and_outage_noted() {
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Running { progress: None });
    assert_eq!(
        run(&spec("h1", "ubuntu-24.04"), &st, &w),
        Action::Poll {
            retry_in: Duration::from_secs(1),
            note: None
        }
    );
    w.operation = OpObservation::Unreachable("down".into());
    let a = run(&spec("h1", "ubuntu-24.04"), &st, &w);
    let next = next_status(&st, &a, "ubuntu-24.04", 1, now()).expect("changes");
    assert_eq!(next.reason.as_deref(), Some(reason::DISPATCHER_UNAVAILABLE));
    assert_eq!(next.phase, Some(Phase::Provisioning));
}

#[test]
fn success_of_current_operation_completes() {
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Succeeded);
    let a = run(&spec("h1", "ubuntu-24.04"), &st, &w);
    assert!(matches!(
        a,
        Action::Succeed {
            reason: reason::PROVISIONED,
            ..
        }
    ));
    let done = next_status(&st, &a, "ubuntu-24.04", 1, now()).expect("changes");
    assert!(crate::api::conditions::is_true(
        &done.conditions,
        kind::PROVISIONED
    ));
    assert_eq!(
        done.conditions
            .iter()
            .map(|c| c.observed_generation)
            .collect::<Vec<_>>(),
        vec![Some(1); 3]
    );
    // Terminal for this generation: nothing more, and re-applying changes nothing.
    assert_eq!(run(&spec("h1", "ubuntu-24.04"), &done, &w), Action::Done);
    assert_eq!(next_status(&done, &a, "ubuntu-24.04", 1, now()), None);
}

#[test]
fn failure_retries_with_backoff_then_fails() {
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Failed {
        message: "disk".into(),
    });
    let a = run(&spec("h1", "ubuntu-24.04"), &st, &w);
    let Action::RetryLater { at, .. } = a.clone() else {
        panic!("{a:?}")
    };
    assert_eq!(at.duration_since(now()).as_secs(), 2);
    let queued = next_status(&st, &a, "ubuntu-24.04", 1, now()).expect("changes");
    assert_eq!(
        (
            queued.phase,
            queued.reason.as_deref(),
            queued.operation.is_none()
        ),
        (Some(Phase::Queued), Some(reason::RETRY_SCHEDULED), true)
    );
    // Before the retry time: wait; after it: the second attempt, with a new token.
    let mut w2 = world(HostLookup::Found(facts()));
    assert!(matches!(
        run(&spec("h1", "ubuntu-24.04"), &queued, &w2),
        Action::Wait {
            reason: reason::RETRY_SCHEDULED,
            ..
        }
    ));
    w2.now = at;
    assert_eq!(
        run(&spec("h1", "ubuntu-24.04"), &queued, &w2),
        Action::Start {
            dispatcher: "d1".into(),
            token: "u1/1/2".into(),
            attempt: 2
        }
    );
    // The third failure of three ends the request.
    let st3 = provisioning(1, 3);
    let a = run(&spec("h1", "ubuntu-24.04"), &st3, &w);
    assert!(
        matches!(
            a,
            Action::Fail {
                reason: reason::ATTEMPTS_EXHAUSTED,
                ..
            }
        ),
        "{a:?}"
    );
    let failed = next_status(&st3, &a, "ubuntu-24.04", 1, now()).expect("changes");
    assert_eq!(failed.phase, Some(Phase::Failed));
    // spec.maxAttempts overrides the policy.
    let mut s = spec("h1", "ubuntu-24.04");
    s.max_attempts = Some(5);
    assert!(matches!(run(&s, &st3, &w), Action::RetryLater { .. }));
    // A cancel in the backend counts as a failed attempt.
    w.operation = OpObservation::State(OperationState::Cancelled);
    assert!(matches!(
        run(&spec("h1", "ubuntu-24.04"), &st, &w),
        Action::RetryLater { .. }
    ));
}

#[test]
fn backoff_grows_and_caps() {
    let p = RetryPolicy {
        max_attempts: 10,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(10),
    };
    let d: Vec<_> = (1..=6).map(|n| p.backoff(n, 1.0).as_secs()).collect();
    assert_eq!(d, [1, 2, 4, 8, 10, 10]);
    assert_eq!(p.backoff(2, 1.2), Duration::from_millis(2400));
}

#[test]
fn intent_recorded_but_never_sent_is_resumed_with_the_same_token() {
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::UnknownToBackend;
    assert_eq!(
        run(&spec("h1", "ubuntu-24.04"), &st, &w),
        Action::Resume {
            token: "u1/1/1".into()
        }
    );
}

#[test]
fn a_lost_record_fails_the_attempt_without_a_retry() {
    // Attempt 1 of 3: attempts are left, yet nothing is started again.
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::RecordLost("the record Secret was deleted".into());
    let a = run(&spec("h1", "ubuntu-24.04"), &st, &w);
    let Action::Fail { reason: r, message } = &a else {
        panic!("expected Fail, got {a:?}");
    };
    assert_eq!(*r, reason::OPERATION_RECORD_LOST);
    assert!(message.contains("was deleted"), "{message}");
    let next = next_status(&st, &a, "ubuntu-24.04", 1, now()).expect("status");
    assert_eq!(next.phase, Some(Phase::Failed));
    assert!(next.phase.is_some_and(Phase::is_terminal));
    // Deleting such a request only releases the host.
    assert_eq!(plan_cleanup(&st, &w.operation), Cleanup::Release);
    // An older generation's lost record does not block the current generation.
    let mut old = provisioning(1, 1);
    old.observed_generation = Some(1);
    let a2 = plan(
        &crate::provisioner::fixtures::view(&spec("h1", "ubuntu-24.04"), &old, 2),
        &w,
    );
    assert!(matches!(a2, Action::Start { .. }), "{a2:?}");
}

#[test]
fn spec_change_replans_after_the_old_operation() {
    // Generation 2 asks for debian-12 while generation 1's operation ran.
    let st = provisioning(1, 1);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Running { progress: None });
    let req = RequestView {
        uid: "u1",
        generation: 2,
        spec: &spec("h1", "rocky-9"),
        status: &st,
        timeout: None,
    };
    let a = plan(&req, &w);
    assert!(matches!(a, Action::Poll { .. }));
    let polled = next_status(&st, &a, "rocky-9", 2, now()).expect("changes");
    assert_eq!(
        polled.observed_generation,
        Some(1),
        "old generation keeps being described"
    );
    let mut f = facts();
    f.available_os.push("rocky-9".into());
    let mut w = world(HostLookup::Found(f));
    w.operation = OpObservation::State(OperationState::Succeeded);
    let req = RequestView {
        uid: "u1",
        generation: 2,
        spec: &spec("h1", "rocky-9"),
        status: &st,
        timeout: None,
    };
    assert_eq!(
        plan(&req, &w),
        Action::Start {
            dispatcher: "d1".into(),
            token: "u1/2/1".into(),
            attempt: 1
        }
    );
    // A terminal status of an older generation is not final either.
    let mut done = st.clone();
    done.phase = Some(Phase::Succeeded);
    done.operation = None;
    let req = RequestView {
        uid: "u1",
        generation: 2,
        spec: &spec("h1", "ubuntu-24.04"),
        status: &done,
        timeout: None,
    };
    assert_eq!(
        plan(&req, &world(HostLookup::Found(facts()))),
        Action::Start {
            dispatcher: "d1".into(),
            token: "u1/2/1".into(),
            attempt: 1
        }
    );
}

#[test]
fn cleanup_cancels_running_and_releases_otherwise() {
    let st = provisioning(1, 1);
    let running = OpObservation::State(OperationState::Running { progress: None });
    assert_eq!(
        plan_cleanup(&st, &running),
        Cleanup::Cancel {
            token: "u1/1/1".into()
        }
    );
    assert_eq!(
        plan_cleanup(&st, &OpObservation::Unreachable("x".into())),
        Cleanup::RetryLater
    );
    assert_eq!(
        plan_cleanup(&st, &OpObservation::State(OperationState::Succeeded)),
        Cleanup::Release
    );
    assert_eq!(
        plan_cleanup(&Default::default(), &running),
        Cleanup::Release
    );
    let c = cancelled_status(&st, 1, now());
    assert_eq!(c.phase, Some(Phase::Cancelled));
}

#[test]
fn waiting_status_is_written_once() {
    let a = Action::Wait {
        phase: Phase::Queued,
        reason: reason::HOST_BUSY,
        message: "m".into(),
        retry_in: Duration::ZERO,
        discover: false,
    };
    let st = next_status(&Default::default(), &a, "x", 1, now()).expect("first write");
    assert_eq!(
        next_status(&st, &a, "x", 1, now()),
        None,
        "identical status is not rewritten"
    );
}

#[test]
fn configuration_that_cannot_be_used_waits_with_its_reason_before_anything_starts() {
    let s = spec("h1", "ubuntu-24.04");
    let unusable = ConfigLookup::Unusable {
        reason: reason::CONFIGURATION_MISSING,
        message: "Secret ud named by spec.userData does not exist".into(),
    };
    let a = run(
        &s,
        &Default::default(),
        &world(HostLookup::Found(facts())).with_config(unusable),
    );
    match &a {
        Action::Wait {
            phase: Phase::Pending,
            reason: r,
            message,
            discover: false,
            ..
        } => {
            assert_eq!(*r, reason::CONFIGURATION_MISSING);
            assert!(message.contains("spec.userData"));
        }
        other => panic!("expected a wait, got {other:?}"),
    }
    // Once the Secret is there, the same request starts.
    let ready = world(HostLookup::Found(facts())).with_config(ConfigLookup::Ready);
    assert!(matches!(
        run(&s, &Default::default(), &ready),
        Action::Start { .. }
    ));
}

#[test]
fn configuration_for_a_dispatcher_that_cannot_deliver_it_is_rejected() {
    let mut f = facts();
    f.delivers_config = false;
    let w = world(HostLookup::Found(f.clone())).with_config(ConfigLookup::Ready);
    match run(&spec("h1", "ubuntu-24.04"), &Default::default(), &w) {
        Action::Reject { reason: r, message } => {
            assert_eq!(r, reason::CONFIGURATION_UNSUPPORTED);
            assert!(message.contains("d1"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Without configuration the same dispatcher is fine.
    let plain = world(HostLookup::Found(f));
    assert!(matches!(
        run(&spec("h1", "ubuntu-24.04"), &Default::default(), &plain),
        Action::Start { .. }
    ));
}

#[test]
fn a_running_operation_is_polled_whatever_the_configuration_says_now() {
    let w = world(HostLookup::Found(facts()))
        .with_config(ConfigLookup::Unusable {
            reason: reason::CONFIGURATION_MISSING,
            message: "gone".into(),
        })
        .backend_says(OperationState::Running { progress: None });
    assert!(matches!(
        run(&spec("h1", "ubuntu-24.04"), &provisioning(1, 1), &w),
        Action::Poll { .. }
    ));
}
