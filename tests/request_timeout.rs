//! `spec.timeout` end to end, through the real controller on both API backends, with the
//! simulator as the backend: an attempt that runs past the request's timeout is cancelled in the
//! management software (the simulator counts the cancel) and fails with the timeout as its
//! reason, and no second attempt starts when `maxAttempts` is 1. (An attempt within its time, and
//! the retry while attempts remain, are the planner's unit tests.)
mod cluster;
mod harness;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{conditions::reason, OSDispatcher, OSProvisioningRequest, Phase};
use std::sync::Arc;

on_both_backends!(an_attempt_past_spec_timeout_is_cancelled_and_fails);

async fn an_attempt_past_spec_timeout_is_cancelled_and_fails(c: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let _ctl = RunningController::start(c.client.clone(), fast_settings_in(&c.ns), sims.clone());
    let dispatchers: Api<OSDispatcher> = c.api();
    // Every install takes 10 minutes: far beyond the timeout below.
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 600_000))).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut slow = request("slow", "sim-000", "debian-12");
    slow.spec.timeout = Some("3s".into());
    slow.spec.max_attempts = Some(1);
    create(&requests, &slow).await;
    wait_phase(&requests, "slow", Phase::Provisioning, 30).await;
    let done = wait_phase(&requests, "slow", Phase::Failed, 60).await;
    let st = done.status.expect("status");
    assert_eq!(st.reason.as_deref(), Some(reason::ATTEMPTS_EXHAUSTED));
    let message = st.message.unwrap_or_default();
    assert!(message.contains("spec.timeout (3s)"), "{message}");
    assert_eq!(st.attempts, Some(1));
    let fleet = sims.get(&c.key("sim")).expect("fleet");
    let stats = fleet.stats();
    assert_eq!(
        stats.cancelled, 1,
        "the backend's operation was cancelled: {stats:?}"
    );
    assert_eq!(
        stats.started_per_host.values().sum::<u32>(),
        1,
        "one attempt only: {stats:?}"
    );
}
