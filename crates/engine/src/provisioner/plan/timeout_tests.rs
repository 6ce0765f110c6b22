//! Planner unit tests for `spec.timeout`: an attempt past its time is cancelled, then fails.
use super::*;
use crate::provisioner::fixtures::{facts, now, provisioning, spec, world};

/// A request with `spec.timeout` `limit` (read as `parsed`) whose attempt 1 started `ago` ago.
fn timed(
    limit: &str,
    parsed: Result<Duration, String>,
    ago: i64,
) -> (
    OSProvisioningRequestSpec,
    OSProvisioningRequestStatus,
    Option<Result<Duration, String>>,
) {
    let mut s = spec("h1", "ubuntu-24.04");
    s.timeout = Some(limit.into());
    s.max_attempts = Some(1);
    let mut st = provisioning(1, 1);
    if let Some(op) = st.operation.as_mut() {
        op.started = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now() - SignedDuration::from_secs(ago),
        ));
    }
    (s, st, Some(parsed))
}

#[test]
fn an_attempt_past_its_timeout_is_cancelled_then_fails() {
    let (s, st, timeout) = timed("5m", Ok(Duration::from_secs(300)), 301);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Running { progress: None });
    let req = at_generation(1, &s, &st, timeout.clone());
    match plan(&req, &w) {
        Action::Cancel { token, message } => {
            assert_eq!(token, "u1/1/1");
            assert!(message.contains("spec.timeout (5m)"), "{message}");
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    // Once the backend says cancelled, the attempt failed, with the timeout as the reason.
    w.operation = OpObservation::State(OperationState::Cancelled);
    match plan(&req, &w) {
        Action::Fail { reason: r, message } => {
            assert_eq!(r, reason::ATTEMPTS_EXHAUSTED);
            assert!(message.contains("spec.timeout (5m)"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn an_attempt_within_its_timeout_or_of_an_older_generation_is_polled() {
    let (s, st, timeout) = timed("5m", Ok(Duration::from_secs(300)), 299);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::State(OperationState::Running { progress: None });
    let req = at_generation(1, &s, &st, timeout);
    assert!(matches!(plan(&req, &w), Action::Poll { .. }));
    // Generation 2's timeout does not cancel generation 1's operation.
    let (s, st, timeout) = timed("5m", Ok(Duration::from_secs(300)), 3600);
    let req = at_generation(2, &s, &st, timeout);
    assert!(matches!(plan(&req, &w), Action::Poll { .. }));
}

#[test]
fn an_unreadable_timeout_is_rejected_before_anything_starts() {
    let mut s = spec("h1", "ubuntu-24.04");
    s.timeout = Some("soon".into());
    let st = OSProvisioningRequestStatus::default();
    let req = at_generation(1, &s, &st, Some(Err("invalid duration \"soon\"".into())));
    match plan(&req, &world(HostLookup::Found(facts()))) {
        Action::Reject { reason: r, message } => {
            assert_eq!(r, reason::INVALID_TIMEOUT);
            assert!(message.contains("spec.timeout"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn at_generation<'a>(
    generation: i64,
    spec: &'a OSProvisioningRequestSpec,
    status: &'a OSProvisioningRequestStatus,
    timeout: Option<Result<Duration, String>>,
) -> RequestView<'a> {
    RequestView {
        uid: "u1",
        generation,
        spec,
        status,
        timeout,
    }
}

#[test]
fn an_attempt_the_backend_never_took_ends_at_its_timeout_instead_of_starting_late() {
    let (s, st, timeout) = timed("5m", Ok(Duration::from_secs(300)), 600);
    let mut w = world(HostLookup::Found(facts()));
    w.operation = OpObservation::UnknownToBackend;
    match plan(&at_generation(1, &s, &st, timeout), &w) {
        Action::Fail { message, .. } => {
            assert!(message.contains("did not take the attempt"), "{message}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // Within its time, the same attempt resumes with its token.
    let (s, st, timeout) = timed("5m", Ok(Duration::from_secs(300)), 60);
    assert!(matches!(
        plan(&at_generation(1, &s, &st, timeout), &w),
        Action::Resume { .. }
    ));
}
