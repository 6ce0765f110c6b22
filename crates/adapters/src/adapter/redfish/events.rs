//! The Redfish EventService: a BMC that offers a server-sent event stream tells osprov when a
//! system changes, so the ManagedHost follows at once instead of at the next `lookupInterval`.
//!
//! [`follow`] runs for as long as the adapter's event subscription lives: it reads the
//! `EventService` linked from the service root, opens its `ServerSentEventUri` with the session's
//! credential, and for each event re-reads the systems its records name (`OriginOfCondition`, the
//! system itself or anything below it) and reports them as [`BackendEvent::HostChanged`]. A broken
//! stream is reopened with backoff; a service without an EventService, or without an SSE stream,
//! is simply polled at `lookupInterval` (push subscriptions, which need an address the BMC can
//! reach, are not used). The stream is parsed by `eventsource-stream`.
use super::model::{Event, EventService};
use super::{Inner, RedfishError};
use crate::adapter::BackendEvent;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// First and longest wait before the stream is opened again.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the service's event stream is, if it offers one.
async fn stream_uri(inner: &Inner) -> Result<Option<String>, RedfishError> {
    let root = inner.client.root().await?;
    let Some(link) = root.event_service else {
        return Ok(None);
    };
    let service: EventService = inner.client.get(&link.id).await?;
    if service.service_enabled == Some(false) {
        return Ok(None);
    }
    Ok(service.server_sent_event_uri.filter(|u| !u.is_empty()))
}

/// The resources an event names, without repeats (empty for anything that is not an `Event`).
pub fn origins(data: &str) -> Vec<String> {
    let Ok(event) = serde_json::from_str::<Event>(data) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for id in event
        .events
        .into_iter()
        .filter_map(|r| r.origin_of_condition.map(|l| l.id))
    {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Follow the service's event stream until `tx` is closed, reporting changed hosts on it.
pub(super) async fn follow(inner: Arc<Inner>, tx: mpsc::Sender<BackendEvent>) {
    let mut backoff = RETRY_MIN;
    loop {
        match stream_uri(&inner).await {
            Ok(None) => {
                info!("the Redfish service offers no event stream; hosts are polled at lookupInterval");
                return;
            }
            Ok(Some(uri)) => match inner.client.open_stream(&uri).await {
                Ok(resp) => {
                    info!(%uri, "following the Redfish event stream");
                    backoff = RETRY_MIN;
                    let mut events = resp.bytes_stream().eventsource();
                    loop {
                        let next = tokio::select! {
                            next = events.next() => next,
                            _ = tx.closed() => return,
                        };
                        let data = match next {
                            Some(Ok(event)) => event.data,
                            Some(Err(e)) => {
                                debug!(error = %e, "the Redfish event stream broke");
                                break;
                            }
                            None => break,
                        };
                        for origin in origins(&data) {
                            let Some(host) = inner.refresh_host(&origin).await else {
                                continue;
                            };
                            if tx.send(BackendEvent::HostChanged(host)).await.is_err() {
                                return;
                            }
                        }
                    }
                    debug!("the Redfish event stream ended; opening it again");
                }
                Err(e) => warn!(error = %e, "opening the Redfish event stream failed"),
            },
            Err(e) => warn!(error = %e, "reading the Redfish EventService failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::origins;

    #[test]
    fn origins_of_an_event() {
        let data = r##"{"@odata.type":"#Event.v1_7_0.Event","Id":"1","Events":[
            {"EventType":"ResourceChanged","OriginOfCondition":{"@odata.id":"/redfish/v1/Systems/1"}},
            {"MessageId":"ResourceEvent.1.0.ResourceChanged","OriginOfCondition":{"@odata.id":"/redfish/v1/Systems/1"}},
            {"EventType":"Alert"},
            {"OriginOfCondition":{"@odata.id":"/redfish/v1/Chassis/1"}}]}"##;
        assert_eq!(
            origins(data),
            ["/redfish/v1/Systems/1", "/redfish/v1/Chassis/1"]
        );
        assert!(origins("keep-alive").is_empty());
        assert!(origins(r#"{"Events":"nope"}"#).is_empty());
        assert!(origins("").is_empty());
    }
}
