//! A small background garbage collector (C5, optional in the spec): an object all of whose
//! ownerReferences point at uids that no longer exist is deleted, with background propagation.
//! Objects with finalizers get a deletionTimestamp instead, as a DELETE would do. In Kubernetes
//! this is the garbage-collector controller's job; osprov needs it so deleting an OSDispatcher
//! removes its ManagedHosts. Events older than an hour are removed too, as kube-apiserver's
//! event TTL does, so a long-running standalone server does not grow without bound.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::objects::{finalizers, is_terminating, meta, meta_mut, now};
use super::request::State;
use super::store::{object_revision, Expect};

/// Runs until the server closes.
pub async fn run(state: Arc<State>, mut closing: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = state.gc_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = closing.changed() => return,
        }
        // Let a burst of deletions settle before scanning.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let st = state.clone();
        let pass = tokio::task::spawn_blocking(move || while collect_once(&st) > 0 {});
        if let Err(e) = pass.await {
            tracing::error!(error = %e, "garbage collection pass failed");
        }
    }
}

/// Events live this long after their last write (kube-apiserver's `--event-ttl` default). Like
/// kube-apiserver (an etcd lease per write), the clock starts at the write, not at the times the
/// event reports: an event posted today about something seen last year lives its full hour.
const EVENT_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

fn event_expired(obj: &Value, now: chrono::DateTime<chrono::Utc>) -> bool {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    // The last write: creation, or the newest managedFields entry (every write stamps one).
    let written = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("time").and_then(parse))
        .chain(obj.pointer("/metadata/creationTimestamp").and_then(parse))
        .max();
    written.is_some_and(|t| now - t > EVENT_TTL)
}

/// One pass; returns how many objects it deleted or marked.
pub fn collect_once(state: &State) -> usize {
    let (_, objects) = state.store.snapshot();
    let now_t = chrono::Utc::now();
    let mut expired = 0;
    for (key, obj) in objects.iter().filter(|(k, _)| k.0 == "events") {
        if event_expired(obj, now_t)
            && state
                .store
                .commit(key, Expect::Revision(object_revision(obj)), None)
                .is_ok()
        {
            expired += 1;
        }
    }
    if expired > 0 {
        tracing::debug!(expired, "expired events removed");
    }
    let uids: HashSet<&str> = objects
        .values()
        .filter_map(|o| meta(o).and_then(|m| m.get("uid")).and_then(Value::as_str))
        .collect();
    let mut acted = 0;
    for (key, obj) in objects.iter() {
        let Some(refs) = meta(obj)
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let orphaned = !refs.is_empty()
            && refs.iter().all(|r| {
                r.get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(|u| !uids.contains(u))
            });
        if !orphaned || is_terminating(obj) {
            continue;
        }
        let expect = Expect::Revision(object_revision(obj));
        let result = if finalizers(obj).is_empty() {
            state.store.commit(key, expect, None)
        } else {
            let mut new = (**obj).clone();
            let custom = state
                .registry
                .by_store_key(&key.0)
                .is_some_and(|r| r.builtin == super::resources::Builtin::Custom);
            if let Some(m) = meta_mut(&mut new) {
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if custom {
                    let gen = m.get("generation").and_then(Value::as_i64).unwrap_or(1);
                    m.insert("generation".into(), json!(gen + 1));
                }
            }
            state.store.commit(key, expect, Some(new))
        };
        if result.is_ok() {
            tracing::debug!(kind = %key.0, namespace = %key.1, name = %key.2, "garbage-collected");
            acted += 1;
        }
    }
    acted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_expire_an_hour_after_their_last_write() {
        let now = chrono::Utc::now();
        let old = serde_json::json!({"eventTime": now.to_rfc3339(),
            "metadata": {"creationTimestamp": "2020-01-01T00:00:00Z"}});
        let reported_long_ago = serde_json::json!({"eventTime": "2020-01-01T00:00:00.000000Z",
            "metadata": {"creationTimestamp": now.to_rfc3339()}});
        let updated = serde_json::json!({"metadata": {
            "creationTimestamp": "2020-01-01T00:00:00Z",
            "managedFields": [{"manager": "a", "time": "2020-01-01T00:00:00Z"},
                              {"manager": "b", "time": now.to_rfc3339()}]}});
        assert!(event_expired(&old, now));
        assert!(!event_expired(&reported_long_ago, now));
        assert!(!event_expired(&updated, now));
    }
}
