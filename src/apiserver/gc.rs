//! A small background garbage collector (C5, optional in the spec): an object all of whose
//! ownerReferences point at uids that no longer exist is deleted, with background propagation.
//! Objects with finalizers get a deletionTimestamp instead, as a DELETE would do. In Kubernetes
//! this is the garbage-collector controller's job; osprov needs it so deleting an OSDispatcher
//! removes its ManagedHosts.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::http::State;
use super::objects::{finalizers, is_terminating, meta, meta_mut, now};
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
        while collect_once(&state) > 0 {}
    }
}

/// One pass; returns how many objects it deleted or marked.
pub fn collect_once(state: &State) -> usize {
    let (_, objects) = state.store.snapshot();
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
