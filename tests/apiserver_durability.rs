//! Durability of the embedded API on disk (issue 13): the real `osprov standalone --data-dir`
//! binary is SIGKILLed in the middle of a burst of creates from 8 concurrent kube clients. Started
//! again on the same data dir, every create it acknowledged is there with the data it was sent,
//! and nothing that was never sent is. (A create in flight at the kill may or may not be there:
//! its client never learned the outcome, as with kube-apiserver.) `standalone` is the embedded
//! API, so this runs on it only; etcd's durability is etcd's business.
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
/// Kill once this many creates were acknowledged.
const KILL_AFTER: usize = 300;

fn start(dir: &Path) -> Child {
    let kubeconfig = dir.join("kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    let child = Command::new(env!("CARGO_BIN_EXE_osprov"))
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("osprov standalone starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "standalone wrote no kubeconfig");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

async fn secrets(dir: &Path) -> Api<Secret> {
    let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("client config");
    Api::namespaced(kube::Client::try_from(config).expect("client"), "default")
}

fn secret(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(BTreeMap::from([(
        "v".to_string(),
        ByteString(name.as_bytes().to_vec()),
    )]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_and_nothing_else_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path());
    let api = secrets(dir.path()).await;
    let sent = Arc::new(Mutex::new(BTreeSet::new()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (api, sent, acked) = (api.clone(), sent.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("burst-{w}-{i}");
                sent.lock().unwrap().insert(name.clone());
                match api.create(&PostParams::default(), &secret(&name)).await {
                    Ok(_) => acked.lock().unwrap().insert(name),
                    // The server is gone: this write's outcome is unknown.
                    Err(_) => return,
                };
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for w in writers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("writers stop once the server is gone")
            .expect("writer");
    }
    let (sent, acked) = (sent.lock().unwrap().clone(), acked.lock().unwrap().clone());

    let mut child = start(dir.path());
    let api = secrets(dir.path()).await;
    let list = api.list(&ListParams::default()).await.expect("list");
    let mut present = BTreeSet::new();
    for s in list.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        if !name.starts_with("burst-") {
            continue;
        }
        let data = s.data.unwrap_or_default();
        assert_eq!(
            data.get("v").map(|v| v.0.as_slice()),
            Some(name.as_bytes()),
            "{name} holds what was sent"
        );
        present.insert(name);
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "sent {}, acknowledged {}, present after the restart {}",
        sent.len(),
        acked.len(),
        present.len()
    );
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    let invented: Vec<_> = present.difference(&sent).collect();
    assert!(invented.is_empty(), "objects nobody sent: {invented:?}");
    assert!(
        present.len() <= acked.len() + WRITERS,
        "at most one unacknowledged create per writer can have landed"
    );
}
