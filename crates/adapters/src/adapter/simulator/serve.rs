//! `osprov simulate`: the simulator's fleets served over HTTP, out of the controller's process.
//!
//! A served fleet outlives every controller that uses it (a controller SIGKILLed mid-way finds
//! its hosts and operations where it left them), and keeps a ledger of every provisioning started
//! and ended with its token, which fault-injection tests check from outside the controller.
//! A simulator dispatcher with `spec.simulator.endpoint` uses it through
//! [`super::remote::RemoteSimulator`].
//!
//! The protocol is small JSON over HTTP, one fleet per dispatcher (`/v1/fleets/{ns}/{name}`):
//! `PUT` (the dispatcher's spec), `GET …/inventory`, `POST …/reprovision`, `GET …/operation`,
//! `POST …/cancel`, `GET …/events` (newline-delimited JSON, held open), `GET …/ledger` and
//! `POST …/outage` (a simulated outage, for tests). Errors are a [`WireError`] with the
//! adapter error's reason. axum serves it; nothing here is hand-rolled HTTP.
use super::{LedgerEntry, SimFleet, SimRegistry, SimStats, SimulatorAdapter};
use crate::adapter::{Adapter, AdapterError, BackendEvent};
use crate::api::SimulatorSpec;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// An adapter error on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// [`AdapterError::reason`], or `UnknownFleet`.
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl WireError {
    fn of(e: &AdapterError) -> (StatusCode, WireError) {
        let mut w = WireError {
            reason: e.reason().to_string(),
            message: e.to_string(),
            host: None,
            os: None,
            token: None,
        };
        let status = match e {
            AdapterError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdapterError::UnknownHost(h) => {
                w.host = Some(h.clone());
                StatusCode::NOT_FOUND
            }
            AdapterError::UnknownOs { host, os } => {
                (w.host, w.os) = (Some(host.clone()), Some(os.clone()));
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AdapterError::HostBusy { host, token } => {
                (w.host, w.token) = (Some(host.clone()), Some(token.clone()));
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, w)
    }

    /// The adapter error this stands for.
    pub fn into_adapter(self) -> AdapterError {
        let text = |o: Option<String>| o.unwrap_or_default();
        match self.reason.as_str() {
            "Unreachable" => AdapterError::Unreachable(self.message),
            "HostNotManaged" => AdapterError::UnknownHost(text(self.host)),
            "OSNotAvailable" => AdapterError::UnknownOs {
                host: text(self.host),
                os: text(self.os),
            },
            "HostBusy" => AdapterError::HostBusy {
                host: text(self.host),
                token: text(self.token),
            },
            "InvalidConfiguration" => AdapterError::Config(self.message),
            _ => AdapterError::Backend {
                message: self.message,
                source: None,
            },
        }
    }
}

/// What `POST …/reprovision` takes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReprovisionBody {
    pub host: String,
    pub os: String,
    pub token: String,
}

/// What `GET …/operation` and `POST …/cancel` take (as query or body).
#[derive(Debug, Serialize, Deserialize)]
pub struct OpRef {
    pub host: String,
    pub token: String,
}

/// What `GET …/ledger` answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LedgerView {
    pub entries: Vec<LedgerEntry>,
    pub max_in_flight: usize,
    pub in_flight: usize,
    pub discoveries: u64,
}

impl LedgerView {
    fn of(fleet: &SimFleet) -> LedgerView {
        let SimStats {
            max_in_flight,
            in_flight,
            discoveries,
            ..
        } = fleet.stats();
        LedgerView {
            entries: fleet.ledger(),
            max_in_flight,
            in_flight,
            discoveries,
        }
    }
}

/// What `POST …/outage` takes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outage {
    pub unreachable: bool,
}

type Fleets = Arc<SimRegistry>;

fn err(e: &AdapterError) -> Response {
    let (status, w) = WireError::of(e);
    (status, Json(w)).into_response()
}

fn fleet(fleets: &SimRegistry, ns: &str, name: &str) -> Option<Arc<SimFleet>> {
    fleets.get(&format!("{ns}/{name}"))
}

fn unknown(ns: &str, name: &str) -> Response {
    let w = WireError {
        reason: "UnknownFleet".into(),
        message: format!("no fleet {ns}/{name}: PUT its spec first"),
        host: None,
        os: None,
        token: None,
    };
    (StatusCode::NOT_FOUND, Json(w)).into_response()
}

async fn configure(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
    Json(spec): Json<SimulatorSpec>,
) -> StatusCode {
    fleets.fleet(&format!("{ns}/{name}"), &spec);
    StatusCode::NO_CONTENT
}

async fn inventory(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(fleet) = fleet(&fleets, &ns, &name) else {
        return unknown(&ns, &name);
    };
    match SimulatorAdapter::new(fleet).discover().await {
        Ok(inv) => Json(inv).into_response(),
        Err(e) => err(&e),
    }
}

async fn reprovision(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
    Json(b): Json<ReprovisionBody>,
) -> Response {
    let Some(fleet) = fleet(&fleets, &ns, &name) else {
        return unknown(&ns, &name);
    };
    match SimulatorAdapter::new(fleet)
        .reprovision(
            &b.host,
            &b.os,
            &b.token,
            &crate::adapter::HostConfig::default(),
        )
        .await
    {
        Ok(s) => Json(s).into_response(),
        Err(e) => err(&e),
    }
}

async fn operation(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<OpRef>,
) -> Response {
    let Some(fleet) = fleet(&fleets, &ns, &name) else {
        return unknown(&ns, &name);
    };
    match SimulatorAdapter::new(fleet)
        .operation(&q.host, &q.token)
        .await
    {
        Ok(s) => Json(s).into_response(),
        Err(e) => err(&e),
    }
}

async fn cancel(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
    Json(b): Json<OpRef>,
) -> Response {
    let Some(fleet) = fleet(&fleets, &ns, &name) else {
        return unknown(&ns, &name);
    };
    match SimulatorAdapter::new(fleet).cancel(&b.host, &b.token).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => err(&e),
    }
}

async fn events(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(fleet) = fleet(&fleets, &ns, &name) else {
        return unknown(&ns, &name);
    };
    let stream = match SimulatorAdapter::new(fleet).subscribe().await {
        Ok(s) => s,
        Err(e) => return err(&e),
    };
    let lines = stream.map(|e: BackendEvent| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn ledger(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match fleet(&fleets, &ns, &name) {
        Some(f) => Json(LedgerView::of(&f)).into_response(),
        None => unknown(&ns, &name),
    }
}

async fn outage(
    State(fleets): State<Fleets>,
    Path((ns, name)): Path<(String, String)>,
    Json(o): Json<Outage>,
) -> Response {
    match fleet(&fleets, &ns, &name) {
        Some(f) => {
            f.set_unreachable(o.unreachable);
            StatusCode::NO_CONTENT.into_response()
        }
        None => unknown(&ns, &name),
    }
}

/// The router of `osprov simulate` over `fleets`.
pub fn router(fleets: Arc<SimRegistry>) -> Router {
    Router::new()
        .route("/v1/fleets/{ns}/{name}", put(configure))
        .route("/v1/fleets/{ns}/{name}/inventory", get(inventory))
        .route("/v1/fleets/{ns}/{name}/reprovision", post(reprovision))
        .route("/v1/fleets/{ns}/{name}/operation", get(operation))
        .route("/v1/fleets/{ns}/{name}/cancel", post(cancel))
        .route("/v1/fleets/{ns}/{name}/events", get(events))
        .route("/v1/fleets/{ns}/{name}/ledger", get(ledger))
        .route("/v1/fleets/{ns}/{name}/outage", post(outage))
        .with_state(fleets)
}

/// Serve fleets (with ledgers) on `addr` until the process ends; `bound` gets the address.
pub async fn serve(addr: SocketAddr, bound: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    bound(listener.local_addr()?);
    axum::serve(listener, router(Arc::new(SimRegistry::with_ledger()))).await
}
