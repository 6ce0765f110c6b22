//! [`RemoteSimulator`]: the [`Adapter`] of a simulator dispatcher whose fleet is served out of
//! process by `osprov simulate` (`spec.simulator.endpoint`), speaking the small protocol of
//! [`super::serve`]. The fleet is (re)configured with the dispatcher's spec on first use and
//! whenever the server says it does not know it; a server that cannot be reached is
//! `Unreachable`, like any management software.
use super::serve::{OpRef, ReprovisionBody, WireError};
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, Inventory, OperationStatus,
};
use crate::api::SimulatorSpec;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A simulator fleet served by `osprov simulate`.
pub struct RemoteSimulator {
    http: reqwest::Client,
    /// `<endpoint>/v1/fleets/<ns>/<name>`.
    base: String,
    spec: SimulatorSpec,
    configured: AtomicBool,
}

fn unreachable(e: reqwest::Error) -> AdapterError {
    AdapterError::Unreachable(format!("the served simulator: {e}"))
}

impl RemoteSimulator {
    /// The fleet of dispatcher `namespace/name` at `endpoint`.
    pub fn new(
        endpoint: &str,
        namespace: &str,
        name: &str,
        spec: SimulatorSpec,
    ) -> Result<Self, AdapterError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| AdapterError::Config(format!("HTTP client: {e}")))?;
        Ok(RemoteSimulator {
            http,
            base: format!(
                "{}/v1/fleets/{namespace}/{name}",
                endpoint.trim_end_matches('/')
            ),
            spec,
            configured: AtomicBool::new(false),
        })
    }

    async fn configure(&self) -> Result<(), AdapterError> {
        let r = self
            .http
            .put(&self.base)
            .json(&self.spec)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(AdapterError::Backend {
                message: format!("the served simulator refused the spec: {}", r.status()),
                source: None,
            });
        }
        self.configured.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Send `make()`'s request; configure the fleet first (again, when the server lost it).
    async fn call<T: DeserializeOwned>(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, AdapterError> {
        for _ in 0..2 {
            if !self.configured.load(Ordering::SeqCst) {
                self.configure().await?;
            }
            let r = make()
                .timeout(CALL_TIMEOUT)
                .send()
                .await
                .map_err(unreachable)?;
            if r.status().is_success() {
                return r.json().await.map_err(|e| AdapterError::Backend {
                    message: format!("the served simulator's answer: {e}"),
                    source: Some(Box::new(e)),
                });
            }
            let status = r.status();
            let w: WireError = r.json().await.map_err(|e| AdapterError::Backend {
                message: format!("the served simulator answered {status}: {e}"),
                source: None,
            })?;
            if w.reason == "UnknownFleet" {
                self.configured.store(false, Ordering::SeqCst);
                continue;
            }
            return Err(w.into_adapter());
        }
        Err(AdapterError::Backend {
            message: "the served simulator keeps forgetting the fleet".into(),
            source: None,
        })
    }
}

#[async_trait::async_trait]
impl Adapter for RemoteSimulator {
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        if !self.configured.load(Ordering::SeqCst) {
            self.configure().await?;
        }
        let r = self
            .http
            .get(format!("{}/events", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            let status = r.status();
            let w: Option<WireError> = r.json().await.ok();
            if w.as_ref().is_some_and(|w| w.reason == "UnknownFleet") {
                self.configured.store(false, Ordering::SeqCst);
            }
            return Err(w.map(WireError::into_adapter).unwrap_or_else(|| {
                AdapterError::Unreachable(format!("the served simulator answered {status}"))
            }));
        }
        // Newline-delimited JSON; the stream ends when the connection does (the engine then
        // subscribes again).
        let bytes = r.bytes_stream();
        let events = futures::stream::unfold(
            (bytes, Vec::<u8>::new()),
            |(mut bytes, mut buf)| async move {
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        match serde_json::from_slice::<BackendEvent>(&line) {
                            Ok(e) => return Some((e, (bytes, buf))),
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable simulator event skipped");
                                continue;
                            }
                        }
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(_)) | None => return None,
                    }
                }
            },
        );
        Ok(events.boxed())
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        self.call(|| self.http.get(format!("{}/inventory", self.base)))
            .await
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        _config: &crate::adapter::HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        let body = ReprovisionBody {
            host: host_id.into(),
            os: os.into(),
            token: token.into(),
        };
        self.call(|| {
            self.http
                .post(format!("{}/reprovision", self.base))
                .json(&body)
        })
        .await
    }

    async fn operation(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let q = OpRef {
            host: host_id.into(),
            token: token.into(),
        };
        self.call(|| self.http.get(format!("{}/operation", self.base)).query(&q))
            .await
    }

    async fn cancel(&self, host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        let b = OpRef {
            host: host_id.into(),
            token: token.into(),
        };
        self.call(|| self.http.post(format!("{}/cancel", self.base)).json(&b))
            .await
    }
}

#[cfg(test)]
mod tests;
