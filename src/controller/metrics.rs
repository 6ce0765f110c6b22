//! Prometheus metrics of the controller (prometheus-client) and the HTTP endpoint serving them
//! together with `/healthz` and `/readyz` on one port.
//!
//! The endpoint runs for the whole life of the process, standby replicas included: `/healthz`
//! answers while the process serves; `/readyz` is 200 for a leader (or a controller without
//! leader election) whose caches have synced, and for a standby whose last look at the lease
//! succeeded (a healthy standby), 503 otherwise.
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DispatcherLabel {
    pub dispatcher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DispatcherStateLabel {
    pub dispatcher: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendCallLabel {
    pub dispatcher: String,
    pub adapter: String,
    /// `subscribe`, `discover`, `reprovision`, `operation` or `cancel`.
    pub call: String,
    /// `ok`, or the error's reason (`Unreachable`, `AuthenticationFailed`, …).
    pub outcome: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub durations: Family<ControllerLabel, Histogram>,
    pub requests: Family<PhaseLabel, Gauge>,
    pub hosts: Family<DispatcherLabel, Gauge>,
    pub dispatcher_state: Family<DispatcherStateLabel, Gauge>,
    pub in_flight: Gauge,
    pub reprovisions_started: Counter,
    /// Adapter calls per dispatcher, adapter, call and outcome.
    pub backend_calls: Family<BackendCallLabel, Counter>,
    /// 1 while this replica is the leader (or runs without leader election).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osprov");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let requests = Family::<PhaseLabel, Gauge>::default();
        let hosts = Family::<DispatcherLabel, Gauge>::default();
        let dispatcher_state = Family::<DispatcherStateLabel, Gauge>::default();
        let in_flight = Gauge::default();
        let reprovisions_started = Counter::default();
        let backend_calls = Family::<BackendCallLabel, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the leader and reconciles",
            leader.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            durations.clone(),
        );
        registry.register(
            "requests",
            "OSProvisioningRequests by phase",
            requests.clone(),
        );
        registry.register(
            "dispatcher_hosts",
            "Hosts discovered per dispatcher",
            hosts.clone(),
        );
        registry.register(
            "dispatcher_state",
            "1 for the current state of each dispatcher",
            dispatcher_state.clone(),
        );
        registry.register(
            "reprovisions_in_flight",
            "Reprovisions running now",
            in_flight.clone(),
        );
        registry.register(
            "reprovisions_started",
            "Reprovisions handed to a backend",
            reprovisions_started.clone(),
        );
        registry.register(
            "backend_calls",
            "Calls to the management software through an adapter, by outcome",
            backend_calls.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            requests,
            hosts,
            dispatcher_state,
            in_flight,
            reprovisions_started,
            backend_calls,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Health as the probes see it.
#[derive(Default)]
pub struct Health {
    /// The caches synced and the controllers run.
    pub ready: AtomicBool,
    /// This replica reconciles (leader, or leader election is off).
    pub leading: AtomicBool,
    /// A standby's last look at the lease got an answer from the API.
    pub standby_ok: AtomicBool,
}

impl Health {
    /// `(ready, why)` as `/readyz` reports it.
    pub fn readiness(&self) -> (bool, &'static str) {
        if self.leading.load(Ordering::Relaxed) {
            if self.ready.load(Ordering::Relaxed) {
                (true, "leader: caches synced")
            } else {
                (false, "leader: caches not synced")
            }
        } else if self.standby_ok.load(Ordering::Relaxed) {
            (true, "standby: lease observed")
        } else {
            (false, "standby: the lease could not be read")
        }
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, metrics, health).await
}

/// Like [`serve`], on a listener already bound (tests bind port 0 and read the address).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, health });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, app).await
}

async fn render_metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    match s.health.readiness() {
        (true, why) => (StatusCode::OK, why),
        (false, why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_of_leader_and_standby() {
        let h = Health::default();
        assert_eq!(
            h.readiness(),
            (false, "standby: the lease could not be read")
        );
        h.standby_ok.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(), (true, "standby: lease observed"));
        h.leading.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(), (false, "leader: caches not synced"));
        h.ready.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(), (true, "leader: caches synced"));
    }

    #[test]
    fn leader_gauge_is_exported() {
        let m = Metrics::default();
        m.leader.set(1);
        assert!(m.render().contains("osprov_leader 1"));
    }
}
