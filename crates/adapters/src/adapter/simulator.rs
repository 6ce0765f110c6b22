//! The built-in simulator: a fleet of simulated hosts behind a simulated management software.
//!
//! A [`SimFleet`] is the "backend": it outlives any controller (tests stop and restart the
//! controller against the same fleet) and lives in a [`SimRegistry`] keyed by dispatcher
//! (`namespace/name`). It provisions with a configurable duration, injects failures (the Nth
//! provisioning, a seeded fraction, an outage), announces every change as an event, and counts what
//! it was asked to do so tests can check the controller's behaviour (calls per token, discoveries,
//! the most reprovisions ever running at once). A registry made [`SimRegistry::with_ledger`] also
//! keeps, per fleet, a ledger of every provisioning started and ended with its token, which
//! `osprov simulate` (the fleet served out of process, see `serve`) hands to fault-injection
//! tests. The served form and its client adapter are in `simulator/serve.rs` and
//! `simulator/remote.rs`.
pub mod remote;
pub mod serve;

use super::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, HostConfig, HostInfo, Inventory,
    OperationState, OperationStatus,
};
use crate::api::{HostProvisioningState, PowerState, SimulatorSpec};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// All simulated fleets of one process, keyed by dispatcher (`namespace/name`).
///
/// The fleets' clocks (a provisioning finishing after its duration) run on the tokio runtime the
/// registry was made on, not on the caller's: management software does not stop when a
/// controller dies, and tests run each controller on a runtime of its own that they shut down to
/// kill it.
pub struct SimRegistry {
    fleets: Mutex<HashMap<String, Arc<SimFleet>>>,
    /// Fleets keep a ledger.
    ledger: bool,
    clock: Option<tokio::runtime::Handle>,
}

impl Default for SimRegistry {
    fn default() -> Self {
        SimRegistry {
            fleets: Mutex::default(),
            ledger: false,
            clock: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl SimRegistry {
    /// A registry whose fleets keep a ledger of every provisioning.
    pub fn with_ledger() -> Self {
        SimRegistry {
            ledger: true,
            ..Default::default()
        }
    }

    /// The fleet for a dispatcher, created on first use and reconfigured from `spec` afterwards.
    pub fn fleet(&self, key: &str, spec: &SimulatorSpec) -> Arc<SimFleet> {
        let mut fleets = self.fleets.lock().unwrap_or_else(|p| p.into_inner());
        let fleet = fleets
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(SimFleet::new(spec, self.ledger, self.clock.clone())))
            .clone();
        drop(fleets);
        fleet.configure(spec);
        fleet
    }

    /// The fleet for a dispatcher, if one was made.
    pub fn get(&self, key: &str) -> Option<Arc<SimFleet>> {
        self.fleets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

/// Counters tests and benchmarks read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Discoveries answered.
    pub discoveries: u64,
    /// `reprovision` calls per token (repeats of a known token included).
    pub reprovision_calls: BTreeMap<String, u32>,
    /// Provisionings actually started, per host id.
    pub started_per_host: BTreeMap<String, u32>,
    /// Provisionings running now.
    pub in_flight: usize,
    /// The most provisionings ever running at once.
    pub max_in_flight: usize,
    /// Cancels that stopped a running provisioning.
    pub cancelled: u64,
}

impl SimStats {
    /// Provisionings started in all.
    pub fn started(&self) -> u64 {
        self.started_per_host.values().map(|n| u64::from(*n)).sum()
    }
}

/// One line of a fleet's ledger.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// Milliseconds since the fleet was made.
    pub at_ms: u64,
    pub host: String,
    pub token: String,
    /// `started`, `succeeded`, `failed` or `cancelled`.
    pub event: String,
}

struct SimOp {
    id: String,
    host: String,
    os: String,
    state: OperationState,
    /// The host name the configuration asked for (the host takes it when the operation ends).
    hostname: Option<String>,
}

/// One simulated host: only what changes. Its name, catalogue and details follow from the fleet's
/// spec and the host's index, and are put together when a [`HostInfo`] is asked for, so a fleet
/// of thousands of hosts holds a few bytes per host.
struct SimHost {
    index: usize,
    current_os: Option<String>,
    power: PowerState,
    provisioning: HostProvisioningState,
    /// The name the host's OS took from its last configuration.
    hostname: Option<String>,
}

impl SimHost {
    fn info(&self, id: &str, spec: &SimulatorSpec) -> HostInfo {
        let mut details = BTreeMap::from([
            ("manufacturer".to_string(), "osprov simulator".to_string()),
            ("serial".to_string(), format!("SIM{:06}", self.index)),
        ]);
        if let Some(name) = &self.hostname {
            details.insert("hostname".to_string(), name.clone());
        }
        HostInfo {
            id: id.to_string(),
            name: id.to_string(),
            current_os: self.current_os.clone(),
            available_os: spec.os_images.clone(),
            power: self.power,
            provisioning: self.provisioning,
            details,
        }
    }
}

struct FleetState {
    spec: SimulatorSpec,
    /// host id → host
    hosts: BTreeMap<String, SimHost>,
    /// token → operation
    ops: HashMap<String, SimOp>,
    /// host → token of the running operation
    busy: HashMap<String, String>,
    started_total: u64,
    stats: SimStats,
    ledger: Option<Vec<LedgerEntry>>,
    born: Instant,
    /// token → the host configuration it was given (custom ones only: the scale bench's
    /// thousands of plain requests keep nothing).
    configs: HashMap<String, HostConfig>,
}

impl FleetState {
    fn note(&mut self, host: &str, token: &str, event: &str) {
        let at_ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(l) = self.ledger.as_mut() {
            l.push(LedgerEntry {
                at_ms,
                host: host.to_string(),
                token: token.to_string(),
                event: event.to_string(),
            });
        }
    }
}

/// One simulated management software and its hosts.
pub struct SimFleet {
    state: Mutex<FleetState>,
    events: broadcast::Sender<BackendEvent>,
    /// Where provisionings' timers run (see [`SimRegistry`]); the caller's runtime when `None`.
    clock: Option<tokio::runtime::Handle>,
}

fn host_name(prefix: &str, index: usize, count: usize) -> String {
    let width = count.saturating_sub(1).to_string().len().max(3);
    format!("{prefix}{index:0width$}")
}

impl SimFleet {
    fn new(spec: &SimulatorSpec, ledger: bool, clock: Option<tokio::runtime::Handle>) -> Self {
        // A small ring: a subscriber that lags loses events and the next discovery catches it up,
        // while a large ring would keep thousands of old events alive per fleet.
        let (events, _) = broadcast::channel(256);
        SimFleet {
            state: Mutex::new(FleetState {
                spec: spec.clone(),
                hosts: BTreeMap::new(),
                ops: HashMap::new(),
                busy: HashMap::new(),
                started_total: 0,
                stats: SimStats::default(),
                ledger: ledger.then(Vec::new),
                born: Instant::now(),
                configs: HashMap::new(),
            }),
            events,
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply a (possibly changed) spec: grow or shrink the fleet, update catalogues and failures.
    pub fn configure(&self, spec: &SimulatorSpec) {
        let mut st = self.lock();
        st.spec = spec.clone();
        let count = usize::try_from(spec.hosts).unwrap_or(0);
        let wanted: BTreeMap<String, usize> = (0..count)
            .map(|i| (host_name(&spec.host_prefix, i, count), i))
            .collect();
        st.hosts.retain(|id, _| wanted.contains_key(id));
        let initial = spec
            .initial_os
            .clone()
            .or_else(|| spec.os_images.first().cloned());
        for (id, index) in wanted {
            st.hosts.entry(id).or_insert_with(|| SimHost {
                index,
                current_os: initial.clone(),
                power: PowerState::On,
                provisioning: HostProvisioningState::Idle,
                hostname: None,
            });
        }
    }

    /// A host's facts as the backend reports them.
    fn host_info(st: &FleetState, id: &str) -> Option<HostInfo> {
        st.hosts.get(id).map(|h| h.info(id, &st.spec))
    }

    /// Counters so far.
    /// The custom configuration the operation with `token` was given, as its config drive
    /// would carry it.
    pub fn config(&self, token: &str) -> Option<HostConfig> {
        self.lock().configs.get(token).cloned()
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// The ledger so far (empty unless the registry keeps one).
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.lock().ledger.clone().unwrap_or_default()
    }

    /// A host's current facts.
    pub fn host(&self, id: &str) -> Option<HostInfo> {
        Self::host_info(&self.lock(), id)
    }

    /// Make the backend reachable or not without touching the dispatcher spec.
    pub fn set_unreachable(&self, unreachable: bool) {
        let mut st = self.lock();
        let failures = st.spec.failures.get_or_insert_with(Default::default);
        failures.unreachable = unreachable;
    }

    fn check_reachable(st: &FleetState) -> Result<(), AdapterError> {
        if st.spec.failures.as_ref().is_some_and(|f| f.unreachable) {
            return Err(AdapterError::Unreachable("simulated outage".into()));
        }
        Ok(())
    }

    fn emit(&self, st: &FleetState, event: BackendEvent) {
        if Self::check_reachable(st).is_ok() {
            // No subscriber is fine: discovery catches up.
            let _ = self.events.send(event);
        }
    }

    /// Decide up front whether the Nth provisioning fails.
    fn should_fail(spec: &SimulatorSpec, nth: u64) -> bool {
        let Some(f) = spec.failures.as_ref() else {
            return false;
        };
        if f.fail_nth
            .iter()
            .any(|n| u64::try_from(*n).ok() == Some(nth))
        {
            return true;
        }
        match f.fail_fraction {
            Some(fraction) if fraction > 0.0 => {
                // SplitMix64 of (seed, n): a deterministic, well-spread draw per provisioning.
                let mut z = (f.seed as u64) ^ nth.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) as f64 / (1u64 << 53) as f64) < fraction
            }
            _ => false,
        }
    }

    fn finish(self: &Arc<Self>, token: &str, fail: bool) {
        let mut st = self.lock();
        let Some(op) = st.ops.get_mut(token) else {
            return;
        };
        if op.state.is_terminal() {
            return;
        }
        op.state = if fail {
            OperationState::Failed {
                message: "simulated provisioning failure".into(),
            }
        } else {
            OperationState::Succeeded
        };
        let (host_id, os, state) = (op.host.clone(), op.os.clone(), op.state.clone());
        let hostname = op.hostname.clone();
        st.note(&host_id, token, if fail { "failed" } else { "succeeded" });
        st.busy.remove(&host_id);
        st.stats.in_flight = st.stats.in_flight.saturating_sub(1);
        if let Some(host) = st.hosts.get_mut(&host_id) {
            host.provisioning = if fail {
                HostProvisioningState::Failed
            } else {
                HostProvisioningState::Idle
            };
            host.current_os = if fail { None } else { Some(os) };
            if !fail {
                host.hostname = hostname;
            }
            host.power = PowerState::On;
        }
        let host = SimFleet::host_info(&st, &host_id);
        self.emit(
            &st,
            BackendEvent::OperationChanged {
                host_id,
                token: token.to_string(),
                state,
            },
        );
        if let Some(host) = host {
            self.emit(&st, BackendEvent::HostChanged(host));
        }
    }
}

/// The [`Adapter`] over one simulated fleet.
#[derive(Clone)]
pub struct SimulatorAdapter {
    fleet: Arc<SimFleet>,
}

impl SimulatorAdapter {
    pub fn new(fleet: Arc<SimFleet>) -> Self {
        SimulatorAdapter { fleet }
    }
}

#[async_trait::async_trait]
impl Adapter for SimulatorAdapter {
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        SimFleet::check_reachable(&self.fleet.lock())?;
        let rx = self.fleet.events.subscribe();
        // A lagging subscriber loses events; the next discovery catches it up.
        Ok(tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(|e| async move { e.ok() })
            .boxed())
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let mut st = self.fleet.lock();
        SimFleet::check_reachable(&st)?;
        st.stats.discoveries += 1;
        Ok(Inventory {
            hosts: st
                .hosts
                .iter()
                .map(|(id, h)| h.info(id, &st.spec))
                .collect(),
        })
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        let fleet = self.fleet.clone();
        let mut st = fleet.lock();
        SimFleet::check_reachable(&st)?;
        *st.stats
            .reprovision_calls
            .entry(token.to_string())
            .or_default() += 1;
        if let Some(op) = st.ops.get(token) {
            return Ok(OperationStatus {
                id: op.id.clone(),
                state: op.state.clone(),
            });
        }
        if !st.hosts.contains_key(host_id) {
            return Err(AdapterError::UnknownHost(host_id.to_string()));
        }
        if !st.spec.os_images.iter().any(|o| o == os) {
            return Err(AdapterError::UnknownOs {
                host: host_id.to_string(),
                os: os.to_string(),
            });
        }
        if let Some(other) = st.busy.get(host_id) {
            return Err(AdapterError::HostBusy {
                host: host_id.to_string(),
                token: other.clone(),
            });
        }
        st.started_total += 1;
        let nth = st.started_total;
        let fail = SimFleet::should_fail(&st.spec, nth);
        let id = format!("simop-{nth}");
        st.ops.insert(
            token.to_string(),
            SimOp {
                id: id.clone(),
                host: host_id.to_string(),
                os: os.to_string(),
                state: OperationState::Running { progress: None },
                hostname: config.is_custom().then(|| config.hostname.clone()),
            },
        );
        if config.is_custom() {
            st.configs.insert(token.to_string(), config.clone());
        }
        st.busy.insert(host_id.to_string(), token.to_string());
        st.note(host_id, token, "started");
        *st.stats
            .started_per_host
            .entry(host_id.to_string())
            .or_default() += 1;
        st.stats.in_flight += 1;
        st.stats.max_in_flight = st.stats.max_in_flight.max(st.stats.in_flight);
        if let Some(host) = st.hosts.get_mut(host_id) {
            host.provisioning = HostProvisioningState::Provisioning;
        }
        let host = SimFleet::host_info(&st, host_id);
        if let Some(host) = host {
            fleet.emit(&st, BackendEvent::HostChanged(host));
        }
        let millis = u64::try_from(st.spec.provision_millis).unwrap_or(0);
        drop(st);
        let token_owned = token.to_string();
        let task_fleet = fleet.clone();
        let finish = async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            task_fleet.finish(&token_owned, fail);
        };
        match &fleet.clock {
            Some(clock) => drop(clock.spawn(finish)),
            None => drop(tokio::spawn(finish)),
        }
        Ok(OperationStatus {
            id,
            state: OperationState::Running { progress: None },
        })
    }

    async fn operation(
        &self,
        _host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let st = self.fleet.lock();
        SimFleet::check_reachable(&st)?;
        Ok(st.ops.get(token).map(|op| OperationStatus {
            id: op.id.clone(),
            state: op.state.clone(),
        }))
    }

    fn delivers_config(&self, _format: crate::adapter::DriveFormat) -> bool {
        true
    }

    async fn cancel(&self, _host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        let fleet = self.fleet.clone();
        let mut st = fleet.lock();
        SimFleet::check_reachable(&st)?;
        let Some(op) = st.ops.get_mut(token) else {
            return Ok(CancelOutcome::NotRunning);
        };
        if op.state.is_terminal() {
            return Ok(CancelOutcome::NotRunning);
        }
        op.state = OperationState::Cancelled;
        let host_id = op.host.clone();
        st.note(&host_id, token, "cancelled");
        st.busy.remove(&host_id);
        st.stats.in_flight = st.stats.in_flight.saturating_sub(1);
        st.stats.cancelled += 1;
        if let Some(host) = st.hosts.get_mut(&host_id) {
            // An interrupted install leaves no known OS behind.
            host.provisioning = HostProvisioningState::Idle;
            host.current_os = None;
        }
        let host = SimFleet::host_info(&st, &host_id);
        fleet.emit(
            &st,
            BackendEvent::OperationChanged {
                host_id,
                token: token.to_string(),
                state: OperationState::Cancelled,
            },
        );
        if let Some(host) = host {
            fleet.emit(&st, BackendEvent::HostChanged(host));
        }
        Ok(CancelOutcome::Cancelled)
    }
}

#[cfg(test)]
mod tests;
