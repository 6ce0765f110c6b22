//! vCenter's change feed: a PropertyFilter over a ContainerView of every VM, long-polled with
//! `WaitForUpdatesEx`. The changed properties are applied to the adapter's copy of each VM (a VM
//! it does not know yet is read) and reported as a host change (or a removal), so the cache
//! follows vCenter without waiting for the next lookup and without reading VMs again. The stream ends
//! when vCenter cannot be reached, so the engine's session reconnects with backoff.
use super::adapter::{returnval_moref, Inner};
use super::model;
use super::soap::SoapError;
use crate::adapter::BackendEvent;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;

/// How long one `WaitForUpdatesEx` waits for a change (below the HTTP timeout).
const MAX_WAIT_SECONDS: u32 = 20;

struct Feed {
    inner: Arc<Inner>,
    version: String,
    pending: VecDeque<BackendEvent>,
}

/// Register the filter (before the first discovery, so nothing between is missed) and return
/// the stream of changes.
pub(super) async fn follow(
    inner: Arc<Inner>,
) -> Result<BoxStream<'static, BackendEvent>, SoapError> {
    let sc = inner.soap.service_content().await?;
    let view = inner.view().await?;
    let text = inner
        .soap
        .call(&model::create_filter(&sc.property_collector, &view))
        .await?;
    returnval_moref(&text)?;
    let feed = Feed {
        inner,
        version: String::new(),
        pending: VecDeque::new(),
    };
    Ok(futures::stream::unfold(feed, next).boxed())
}

async fn next(mut feed: Feed) -> Option<(BackendEvent, Feed)> {
    loop {
        if let Some(e) = feed.pending.pop_front() {
            return Some((e, feed));
        }
        let inner = feed.inner.clone();
        let sc = inner.soap.service_content().await.ok()?;
        let body = format!(
            "<WaitForUpdatesEx xmlns=\"urn:vim25\">{}<version>{}</version>\
             <options><maxWaitSeconds>{MAX_WAIT_SECONDS}</maxWaitSeconds></options>\
             </WaitForUpdatesEx>",
            sc.property_collector.xml("_this"),
            super::soap::esc(&feed.version)
        );
        let text = match inner.soap.call(&body).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(url = %inner.soap.url(), error = %e, "vCenter change feed ended; reconnecting");
                return None;
            }
        };
        let updates = {
            let mut known = inner.known.lock().unwrap_or_else(|p| p.into_inner());
            model::apply_updates(&text, &mut known).ok()?
        };
        if let Some(v) = updates.version {
            // The first answer reports every VM (the initial state): discovery has that.
            let initial = feed.version.is_empty();
            feed.version = v;
            if initial {
                continue;
            }
        }
        for gone in updates.left {
            let id = inner
                .vms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(_, m)| **m == gone)
                .map(|(id, _)| id.clone());
            if let Some(id) = id {
                feed.pending.push_back(BackendEvent::HostRemoved { id });
            }
        }
        for moref in updates.applied {
            let vm = inner
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&moref)
                .cloned();
            if let Some(vm) = vm.filter(|v| inner.selected(v)) {
                feed.pending
                    .push_back(BackendEvent::HostChanged(inner.host(&vm)));
            }
        }
        for moref in updates.unknown {
            match inner.vm(&moref).await {
                Ok(Some(vm)) if inner.selected(&vm) => {
                    feed.pending
                        .push_back(BackendEvent::HostChanged(inner.host(&vm)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(error = %e, "reading a changed VM failed; reconnecting");
                    return None;
                }
            }
        }
    }
}
