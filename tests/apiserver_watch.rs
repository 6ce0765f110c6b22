//! Embedded API: list/watch, resume, bookmarks, 410 Expired and kube-runtime's watcher relist
//! (k8s-api-fidelity.md §B), through the real kube client over HTTP.
mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;

async fn next_event(
    s: &mut (impl futures::Stream<Item = Result<WatchEvent<kube::api::DynamicObject>, kube::Error>>
              + Unpin),
) -> WatchEvent<kube::api::DynamicObject> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("ok")
}

#[tokio::test]
async fn list_then_watch_and_resume() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let list_rv = list.metadata.resource_version.clone().unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &list_rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &dyn_obj(ospr("b", "h1", "ubuntu")))
        .await
        .unwrap();
    let added = match next_event(&mut w).await {
        WatchEvent::Added(o) => o,
        other => panic!("expected ADDED, got {other:?}"),
    };
    assert_eq!(added.metadata.name.as_deref(), Some("b"));
    let b_rv = added.metadata.resource_version.clone().unwrap();
    api.patch(
        "b",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"os": "debian"}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Modified(_)));
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let deleted = match next_event(&mut w).await {
        WatchEvent::Deleted(o) => o,
        other => panic!("expected DELETED, got {other:?}"),
    };
    // DELETED carries the final state with the deletion's revision.
    let del_rv: u64 = deleted.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(
        del_rv,
        api.list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
    assert_eq!(deleted.data["spec"]["os"], "debian");
    // Resuming from b's creation replays exactly the later events, in order.
    let mut again = api
        .watch(&WatchParams::default(), &b_rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut again).await,
        WatchEvent::Modified(_)
    ));
    assert!(matches!(
        next_event(&mut again).await,
        WatchEvent::Deleted(_)
    ));
    // resourceVersion "0" starts with ADDED for every current object.
    let mut zero = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match next_event(&mut zero).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    // Label-selected watches see objects leaving the selection as DELETED.
    let mut sel = api
        .watch(&WatchParams::default().labels("team=x"), "0")
        .await
        .unwrap()
        .boxed();
    api.patch(
        "a",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut sel).await, WatchEvent::Added(_)));
    api.patch(
        "a",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut sel).await, WatchEvent::Deleted(_)));
    t.server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_and_timeout() {
    let t = TestApi::start_with(|c| c.bookmark_interval = Duration::from_millis(200)).await;
    let api = osprs(&t.client, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "OSProvisioningRequest");
            assert_eq!(b.types.api_version, "osprov.io/v1alpha1");
            assert_eq!(b.metadata.resource_version, rv);
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // timeoutSeconds closes the stream cleanly (after a last bookmark).
    let end = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(ev) = w.next().await {
            ev.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "watch did not end at its timeout");
    t.server.shutdown().await;
}

#[tokio::test]
async fn compacted_revision_gets_expired_error_event() {
    let t = TestApi::start_with(|c| c.watch_history = 3).await;
    let api = osprs(&t.client, "default");
    let first = api
        .create(&PostParams::default(), &dyn_obj(ospr("r0", "h1", "ubuntu")))
        .await
        .unwrap();
    for i in 1..8 {
        api.create(
            &PostParams::default(),
            &dyn_obj(ospr(&format!("r{i}"), "h1", "ubuntu")),
        )
        .await
        .unwrap();
    }
    let old = first.metadata.resource_version.unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .is_none(),
        "stream closes after the error"
    );
    t.server.shutdown().await;
}

/// kube-runtime's watcher resumes from a revision that the (restarted) server no longer keeps,
/// gets the 410 ERROR event, relists, and keeps seeing later changes.
#[tokio::test]
async fn runtime_watcher_relists_after_expiry() {
    let t = TestApi::start_with(|c| {
        c.watch_history = 3;
        c.token = Some("fixed-test-token".into());
        // A restarted server makes a new CA; plain HTTP lets the old client reconnect.
        c.tls = false;
    })
    .await;
    let addr = t.server.addr();
    let client = t.client.clone();
    let api = osprs(&client, "default");
    api.create(&PostParams::default(), &dyn_obj(ospr("a", "h1", "ubuntu")))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut seen_init_done = false;
    while !seen_init_done {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen_init_done = matches!(ev, watcher::Event::InitDone);
    }
    // Restart on the same address and data; write more than the history keeps while the
    // watcher is not polled.
    let dir = t.stop().await;
    let mut config = osprov::apiserver::Config::new(osprov::api::crds());
    config.listen = addr;
    config.data_dir = Some(dir.path().join("data"));
    config.watch_history = 3;
    config.token = Some("fixed-test-token".into());
    config.tls = false;
    let server = osprov::apiserver::serve(config).await.unwrap();
    let fresh = osprs(&server.client().await.unwrap(), "default");
    for i in 0..6 {
        fresh
            .create(
                &PostParams::default(),
                &dyn_obj(ospr(&format!("n{i}"), "h1", "ubuntu")),
            )
            .await
            .unwrap();
    }
    // The watcher's watch ended with the old server; it re-watches from its last revision, gets
    // the ERROR 410 event and relists. Connection errors while it reconnects are fine.
    let mut names = Vec::new();
    let mut relisted = false;
    while !relisted {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap()
            .unwrap();
        match ev {
            Ok(watcher::Event::Init) => names.clear(),
            Ok(watcher::Event::InitApply(o)) => names.push(o.metadata.name.unwrap()),
            Ok(watcher::Event::InitDone) => relisted = true,
            Ok(_) => {}
            Err(e) => tracing::debug!("watcher error while reconnecting: {e}"),
        }
    }
    assert_eq!(names.len(), 7);
    fresh
        .create(
            &PostParams::default(),
            &dyn_obj(ospr("late", "h1", "ubuntu")),
        )
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("late"));
            break;
        }
    }
    server.shutdown().await;
}

/// kube-runtime's metadata_watcher asks for PartialObjectMetadata lists and watch events.
#[tokio::test]
async fn metadata_watcher_gets_partial_objects() {
    let t = TestApi::start().await;
    let api: kube::Api<osprov::api::OSProvisioningRequest> =
        kube::Api::namespaced(t.client.clone(), "default");
    osprs(&t.client, "default")
        .create(&PostParams::default(), &dyn_obj(ospr("m1", "h1", "ubuntu")))
        .await
        .unwrap();
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("m1"));
    let meta: kube::Api<kube::core::PartialObjectMeta<osprov::api::OSProvisioningRequest>> =
        kube::Api::namespaced(t.client.clone(), "default");
    let mut events = watcher(meta, watcher::Config::default()).boxed();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::InitApply(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("m1"));
            break;
        }
    }
    osprs(&t.client, "default")
        .create(&PostParams::default(), &dyn_obj(ospr("m2", "h1", "ubuntu")))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("m2"));
            break;
        }
    }
    t.server.shutdown().await;
}

/// Streaming lists (sendInitialEvents): the initial state ends with the initial-events-end
/// bookmark, which kube-runtime turns into InitDone.
#[tokio::test]
async fn streaming_list_watcher() {
    let t = TestApi::start().await;
    let api = osprs(&t.client, "default");
    for n in ["s1", "s2"] {
        api.create(&PostParams::default(), &dyn_obj(ospr(n, "h1", "ubuntu")))
            .await
            .unwrap();
    }
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(o) => names.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, vec!["s1", "s2"]);
    api.create(&PostParams::default(), &dyn_obj(ospr("s3", "h1", "ubuntu")))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("s3"));
            break;
        }
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn open_watches_are_bounded_and_slow_bodies_time_out() {
    let t = TestApi::start_with(|c| {
        c.max_watches = 2;
        c.body_timeout = Duration::from_secs(1);
    })
    .await;
    let api = osprs(&t.client, "default");
    // Raw HTTP: kube's client would retry a 429 on its own.
    let ca = t.server.ca_pem().expect("TLS");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let requests = format!(
        "{}/apis/osprov.io/v1alpha1/namespaces/default/osprovisioningrequests",
        t.url()
    );
    let watch = || {
        http.get(format!("{requests}?watch=true&resourceVersion=0"))
            .bearer_auth(t.token())
            .send()
    };
    let w1 = watch().await.unwrap();
    let w2 = watch().await.unwrap();
    assert_eq!((w1.status().as_u16(), w2.status().as_u16()), (200, 200));
    let third = watch().await.unwrap();
    assert_eq!(third.status().as_u16(), 429);
    let st: serde_json::Value = third.json().await.unwrap();
    assert_eq!(st["reason"], "TooManyRequests", "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 2"),
        "{st}"
    );

    // A watch that ends gives its place back (the server notices at its next write).
    drop(w1);
    let mut reopened = None;
    for i in 0..50 {
        api.create(
            &PostParams::default(),
            &dyn_obj(ospr(&format!("poke-{i}"), "h1", "ubuntu")),
        )
        .await
        .unwrap();
        let w = watch().await.unwrap();
        if w.status().is_success() {
            reopened = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed watch gave its place back");
    drop(w2);

    // A body that stops arriving is answered 408 after the body timeout.
    let stalled = futures::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"apiVersion\":"))
    })
    .chain(futures::stream::pending());
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        http.post(&requests)
            .bearer_auth(t.token())
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    )
    .await
    .expect("an answer, not a hang")
    .expect("a response");
    assert_eq!(resp.status().as_u16(), 408);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Timeout"))
    );
}
