//! [`Metered`]: an [`Adapter`] decorator counting every call in `osprov_backend_calls_total`
//! (dispatcher, adapter, call, outcome), so all adapters export the same counters without each
//! carrying metrics code. The factory wraps every adapter it builds.
use super::metrics::{BackendCallLabel, Metrics};
use crate::adapter::{
    Adapter, AdapterError, BackendEvent, CancelOutcome, Inventory, OperationStatus,
};
use futures::stream::BoxStream;
use std::sync::Arc;

/// The calls of the adapter contract, as labelled.
pub const CALLS: [&str; 5] = [
    "subscribe",
    "discover",
    "reprovision",
    "operation",
    "cancel",
];

pub struct Metered {
    inner: Arc<dyn Adapter>,
    metrics: Arc<Metrics>,
    dispatcher: String,
    adapter: &'static str,
}

impl Metered {
    pub fn wrap(
        inner: Arc<dyn Adapter>,
        metrics: Arc<Metrics>,
        dispatcher: String,
        adapter: &'static str,
    ) -> Arc<dyn Adapter> {
        Arc::new(Metered {
            inner,
            metrics,
            dispatcher,
            adapter,
        })
    }

    fn count<T>(&self, call: &str, result: &Result<T, AdapterError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        self.metrics
            .backend_calls
            .get_or_create(&BackendCallLabel {
                dispatcher: self.dispatcher.clone(),
                adapter: self.adapter.into(),
                call: call.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

#[async_trait::async_trait]
impl Adapter for Metered {
    async fn subscribe(&self) -> Result<BoxStream<'static, BackendEvent>, AdapterError> {
        let r = self.inner.subscribe().await;
        self.count("subscribe", &r);
        r
    }

    async fn discover(&self) -> Result<Inventory, AdapterError> {
        let r = self.inner.discover().await;
        self.count("discover", &r);
        r
    }

    async fn reprovision(
        &self,
        host_id: &str,
        os: &str,
        token: &str,
        config: &crate::adapter::HostConfig,
    ) -> Result<OperationStatus, AdapterError> {
        let r = self.inner.reprovision(host_id, os, token, config).await;
        self.count("reprovision", &r);
        r
    }

    async fn operation(
        &self,
        host_id: &str,
        token: &str,
    ) -> Result<Option<OperationStatus>, AdapterError> {
        let r = self.inner.operation(host_id, token).await;
        self.count("operation", &r);
        r
    }

    async fn cancel(&self, host_id: &str, token: &str) -> Result<CancelOutcome, AdapterError> {
        let r = self.inner.cancel(host_id, token).await;
        self.count("cancel", &r);
        r
    }

    fn delivers_config(&self, format: crate::adapter::DriveFormat) -> bool {
        self.inner.delivers_config(format)
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
