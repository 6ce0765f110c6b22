//! Test fixtures: builders for the requests, statuses and worlds the pure decision tests start
//! from, so that each test reads as a scenario ("a request provisioning its second attempt, the
//! backend says it failed") instead of a wall of struct literals. Test-only.
use super::keys::HostKey;
use super::plan::{
    token, ConfigLookup, HostFacts, HostLookup, Occupancy, OpObservation, RequestView, RetryPolicy,
    World,
};
use crate::adapter::OperationState;
use crate::api::{DispatcherState, OSProvisioningRequestSpec, OSProvisioningRequestStatus};
use crate::api::{Operation, Phase};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// The fixed "now" of every scenario.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The uid every fixture request has.
pub const UID: &str = "u1";

/// A request's spec: `host` → `os`.
pub fn spec(host: &str, os: &str) -> OSProvisioningRequestSpec {
    OSProvisioningRequestSpec {
        host: host.into(),
        os: os.into(),
        dispatcher: None,
        max_attempts: None,
        ..Default::default()
    }
}

/// The request [`UID`] at `generation`, as the planner sees it.
pub fn view<'a>(
    spec: &'a OSProvisioningRequestSpec,
    status: &'a OSProvisioningRequestStatus,
    generation: i64,
) -> RequestView<'a> {
    RequestView {
        uid: UID,
        generation,
        spec,
        status,
        timeout: None,
    }
}

/// Host `h1` of namespace `ns`.
pub fn host_key() -> HostKey {
    HostKey {
        namespace: "ns".into(),
        host: "h1".into(),
    }
}

/// A Ready dispatcher `d1` that discovered after the request was first seen; the host runs
/// debian-12 and can take ubuntu-24.04 too.
pub fn facts() -> HostFacts {
    HostFacts {
        dispatcher: "d1".into(),
        dispatcher_state: DispatcherState::Ready,
        fresh: true,
        current_os: Some("debian-12".into()),
        available_os: vec!["debian-12".into(), "ubuntu-24.04".into()],
        backend_busy: false,
        delivers_config: true,
    }
}

impl HostFacts {
    pub fn in_state(mut self, state: DispatcherState) -> Self {
        self.dispatcher_state = state;
        self
    }

    /// The dispatcher's last discovery predates the request.
    pub fn stale(mut self) -> Self {
        self.fresh = false;
        self
    }

    /// The backend reports an operation in progress on the host.
    pub fn busy(mut self) -> Self {
        self.backend_busy = true;
        self
    }

    pub fn running(mut self, os: &str) -> Self {
        self.current_os = Some(os.into());
        self
    }
}

/// A world where the inventory says `host`; nothing recorded, nobody else around, 1 s polls,
/// 3 attempts with 2 s base backoff.
pub fn world(host: HostLookup) -> World {
    World {
        host,
        config: ConfigLookup::NotRequested,
        operation: OpObservation::NoneRecorded,
        occupancy: Occupancy::default(),
        now: now(),
        policy: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        },
        jitter: 1.0,
        poll_every: Duration::from_secs(1),
    }
}

impl World {
    /// The backend's word on the recorded operation.
    pub fn backend_says(mut self, state: OperationState) -> Self {
        self.operation = OpObservation::State(state);
        self
    }

    pub fn observing(mut self, observation: OpObservation) -> Self {
        self.operation = observation;
        self
    }

    pub fn with_config(mut self, config: ConfigLookup) -> Self {
        self.config = config;
        self
    }

    pub fn with_occupancy(mut self, occupancy: Occupancy) -> Self {
        self.occupancy = occupancy;
        self
    }
}

/// The status of a request on attempt `attempts` of `generation`, its operation on `d1`
/// recorded (token of attempt 1) and running ubuntu-24.04.
pub fn provisioning(generation: i64, attempts: i32) -> OSProvisioningRequestStatus {
    OSProvisioningRequestStatus {
        phase: Some(Phase::Provisioning),
        operation: Some(Operation {
            dispatcher: "d1".into(),
            token: token(UID, generation, 1),
            os: "ubuntu-24.04".into(),
            generation,
            id: None,
            started: None,
            record: None,
        }),
        attempts: Some(attempts),
        observed_generation: Some(generation),
        ..Default::default()
    }
}

/// `status` with the backend's operation id recorded.
pub fn with_backend_id(
    mut status: OSProvisioningRequestStatus,
    id: &str,
) -> OSProvisioningRequestStatus {
    if let Some(op) = status.operation.as_mut() {
        op.id = Some(id.into());
    }
    status
}
