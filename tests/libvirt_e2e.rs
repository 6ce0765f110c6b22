//! End-to-end: the real controller with libvirt dispatchers on libvirt's own test driver
//! (`test:///<node.xml>`, written by each test), on both API backends. What libvirt holds
//! (disk sources, volumes, osprov's metadata record) is read back through libvirt itself.
//! Needs the `libvirt` feature (libvirt-dev to build, libvirt0 to run).
#![cfg(feature = "libvirt")]
mod cluster;
mod harness;
mod libvirt_support;
mod support;

use cluster::TestCluster;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use libvirt_support::*;
use osprov::adapter::libvirt::xml::Progress;
use osprov::adapter::libvirt::{Credentials, LibvirtAdapter, LibvirtConfig};
use osprov::adapter::{Adapter, OperationState};
use osprov::api::{
    CredentialsSecretRef, DispatcherState, LibvirtImage, ManagedHost, OSDispatcher,
    OSProvisioningRequest, Phase, PowerState,
};
use std::sync::Arc;

on_both_backends!(
    discovers_domains_and_reprovisions_by_replacing_the_root_disk,
    power_changes_made_in_libvirt_reach_the_managed_host_through_events,
    configuration_errors_and_unreachable_uris_are_clear_and_recover,
    credentials_come_from_the_secret,
    a_domain_left_marked_for_a_gone_request_takes_the_next_one,
    a_uri_that_would_run_a_command_is_refused_before_libvirt_sees_it,
);

fn start_controller(c: &TestCluster) -> RunningController {
    RunningController::start(
        c.client.clone(),
        fast_settings_in(&c.ns),
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    )
}

async fn dispatcher_state(
    api: &Api<OSDispatcher>,
    name: &str,
    want: DispatcherState,
) -> OSDispatcher {
    eventually(30, &format!("dispatcher {name} {want:?}"), || async {
        let d = api.get(name).await.ok()?;
        (d.status.as_ref()?.state == Some(want)).then_some(d)
    })
    .await
}

fn ready_message(d: &OSDispatcher) -> (String, String) {
    let c = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("Ready condition");
    (c.reason, c.message)
}

async fn discovers_domains_and_reprovisions_by_replacing_the_root_disk(c: TestCluster) {
    let node = Node::new(3, None);
    let _ctl = start_controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", libvirt_spec(&node.uri), "1s"),
    )
    .await;
    dispatcher_state(&dispatchers, "kvm", DispatcherState::Ready).await;
    let mh = eventually(30, "vm-1 mirrored", || async {
        // Mirrored means with a status (the real API writes the object, then its status).
        hosts.get("vm-1").await.ok().filter(|h| h.status.is_some())
    })
    .await;
    assert_eq!(mh.spec.backend_id, uuid_of(1));
    let st = mh.status.expect("status");
    assert_eq!(st.available_os, ["debian-12", "ubuntu-24.04"]);
    assert_eq!(st.power, Some(PowerState::On));
    assert_eq!(st.details.get("vcpus").map(String::as_str), Some("1"));

    create(&requests, &request("r1", "vm-1", "ubuntu-24.04")).await;
    let r = wait_phase(&requests, "r1", Phase::Succeeded, 60).await;
    let token = r
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("token recorded");
    let uri = node.uri.clone();
    let (one, other) = tokio::task::spawn_blocking(move || {
        let conn = osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn");
        (seen(&conn, "vm-1"), seen(&conn, "vm-0"))
    })
    .await
    .expect("read back");
    // The root disk is a fresh clone named after the token; the old one is gone; one volume
    // per domain, as before.
    let fresh =
        osprov::adapter::libvirt::steps::target_volume("vm-1", &token, "ubuntu-24.04.qcow2");
    assert_eq!(one.disk, format!("/disks/{fresh}"));
    assert!(one.disks_pool.contains(&fresh), "{one:?}");
    assert!(!one.disks_pool.contains(&"vm-1.qcow2".to_string()));
    assert_eq!(one.disks_pool.len(), 3 + IMAGES.len());
    assert!(one.active);
    let record = one.record.expect("osprov's record");
    assert_eq!(record.os.as_deref(), Some("ubuntu-24.04"));
    assert_eq!(record.token.as_deref(), Some(token.as_str()));
    assert_eq!(record.progress, Some(Progress::Done));
    // Nobody asked for vm-0: untouched.
    assert_eq!(other.disk, "/disks/vm-0.qcow2");
    assert!(other.record.is_none());
    eventually(30, "current OS mirrored", || async {
        let mh = hosts.get("vm-1").await.ok()?;
        (mh.status?.current_os.as_deref() == Some("ubuntu-24.04")).then_some(())
    })
    .await;
}

async fn power_changes_made_in_libvirt_reach_the_managed_host_through_events(c: TestCluster) {
    let node = Node::new(2, None);
    let _ctl = start_controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    // Re-discovery only every hour: what changes the ManagedHost below are libvirt's events.
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", libvirt_spec(&node.uri), "1h"),
    )
    .await;
    let power = |want: PowerState| {
        let hosts = hosts.clone();
        async move {
            eventually(10, &format!("vm-0 {want:?}"), || async {
                let mh = hosts.get("vm-0").await.ok()?;
                (mh.status?.power == Some(want)).then_some(())
            })
            .await
        }
    };
    power(PowerState::On).await;
    let uri = node.uri.clone();
    let act = move |start: bool| {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            let conn = osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn");
            let d = conn.lookup_domain_by_name("vm-0").expect("vm-0");
            if start {
                d.create().expect("start");
            } else {
                d.destroy().expect("destroy");
            }
        })
    };
    let t = std::time::Instant::now();
    act(false).await.expect("destroyed");
    power(PowerState::Off).await;
    act(true).await.expect("started");
    power(PowerState::On).await;
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}

async fn configuration_errors_and_unreachable_uris_are_clear_and_recover(c: TestCluster) {
    let node = Node::new(1, None);
    let _ctl = start_controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    // An image pool that does not exist.
    let mut spec = libvirt_spec(&node.uri);
    spec.image_pool = "nope".into();
    create(&dispatchers, &libvirt_dispatcher("nopool", spec, "1s")).await;
    let d = dispatcher_state(&dispatchers, "nopool", DispatcherState::Degraded).await;
    let (reason, message) = ready_message(&d);
    assert_eq!(reason, "InvalidConfiguration");
    assert!(message.contains("image pool nope"), "{message}");
    // An image listed in the spec whose volume is not in the pool.
    let mut spec = libvirt_spec(&node.uri);
    spec.images = vec![LibvirtImage {
        name: "rocky-9".into(),
        volume: "rocky-9.qcow2".into(),
    }];
    create(&dispatchers, &libvirt_dispatcher("novol", spec, "1s")).await;
    let d = dispatcher_state(&dispatchers, "novol", DispatcherState::Degraded).await;
    let (_, message) = ready_message(&d);
    assert!(
        message.contains("volume rocky-9.qcow2 is not in storage pool disks"),
        "{message}"
    );
    // A node that is not there yet: Unreachable, then Ready once it appears.
    let (uri, path) = node.missing_uri();
    create(
        &dispatchers,
        &libvirt_dispatcher("later", libvirt_spec(&uri), "1s"),
    )
    .await;
    let d = dispatcher_state(&dispatchers, "later", DispatcherState::Unreachable).await;
    let (reason, message) = ready_message(&d);
    assert_eq!(reason, "Unreachable");
    assert!(message.contains("connecting to libvirt"), "{message}");
    std::fs::write(&path, node_xml(2, None)).expect("node appears");
    dispatcher_state(&dispatchers, "later", DispatcherState::Ready).await;
}

async fn a_uri_that_would_run_a_command_is_refused_before_libvirt_sees_it(c: TestCluster) {
    let _ctl = start_controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    // libvirt's `ext` transport runs the URI's `command` as the connection's proxy.
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let script = dir.path().join("proxy.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let uri = format!("qemu+ext:///system?command={}", script.display());
    create(
        &dispatchers,
        &libvirt_dispatcher("ext", libvirt_spec(&uri), "1s"),
    )
    .await;
    let d = dispatcher_state(&dispatchers, "ext", DispatcherState::Degraded).await;
    let (reason, message) = ready_message(&d);
    assert_eq!(reason, "InvalidConfiguration");
    assert!(
        message.contains("transport \"ext\" is refused"),
        "{message}"
    );
    assert!(!marker.exists(), "libvirt ran the URI's command");
}

async fn credentials_come_from_the_secret(c: TestCluster) {
    let node = Node::new(1, Some(("osprov", "s3cret")));
    let _ctl = start_controller(&c);
    let secrets: Api<Secret> = c.api();
    let dispatchers: Api<OSDispatcher> = c.api();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "libvirt"},
        "stringData": {"username": "osprov", "password": "wrong"}
    }))
    .expect("secret");
    create(&secrets, &secret).await;
    let mut spec = libvirt_spec(&node.uri);
    spec.credentials_secret_ref = Some(CredentialsSecretRef {
        name: "libvirt".into(),
        username_key: None,
        password_key: None,
    });
    create(&dispatchers, &libvirt_dispatcher("kvm", spec, "1s")).await;
    let d = dispatcher_state(&dispatchers, "kvm", DispatcherState::Degraded).await;
    let (reason, message) = ready_message(&d);
    assert_eq!(reason, "AuthenticationFailed");
    assert!(
        !message.contains("wrong"),
        "no password in conditions: {message}"
    );
    // Fixing the Secret reconnects without a restart.
    let fix = serde_json::json!({"stringData": {"password": "s3cret"}});
    secrets
        .patch("libvirt", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fix the Secret");
    dispatcher_state(&dispatchers, "kvm", DispatcherState::Ready).await;
}

/// The adapter's configuration for an `image` dispatcher over `uri` with [`IMAGES`].
fn image_config(uri: &str) -> LibvirtConfig {
    LibvirtConfig {
        uri: uri.to_string(),
        credentials: None::<Credentials>,
        names: Vec::new(),
        labelled: false,
        image_pool: "disks".into(),
        images: images().into_iter().map(|i| (i.name, i.volume)).collect(),
        root_disk: None,
        strategy: osprov::api::LibvirtStrategy::Image,
        callback_base: None,
        callback_timeout: std::time::Duration::from_secs(3600),
    }
}

/// The adapter alone, restarted at every step: whatever a controller died in, a new adapter over
/// the same libvirt finishes the operation with one clone and never repeats one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_adapter_never_clones_twice_for_one_token() {
    let node = Node::new(2, None);
    let cfg = image_config(&node.uri);
    let uuid = uuid_of(0);
    let first = LibvirtAdapter::new(cfg.clone());
    let op = first
        .reprovision(
            &uuid,
            "debian-12",
            "u9/1/1",
            &osprov::adapter::HostConfig::default(),
        )
        .await
        .expect("taken");
    assert!(matches!(
        op.state,
        OperationState::Running { .. } | OperationState::Succeeded
    ));
    // A second adapter, as after a restart, asked again with the same token and polled. The
    // first one's worker runs on a blocking thread, which no drop can stop (a killed process
    // would): let it end first, so two adapters never act at once, as leader election ensures.
    // The mid-way deaths are planted below.
    eventually(20, "the first adapter's worker ended", || async {
        let st = first.operation(&uuid, "u9/1/1").await.ok()??;
        (st.state == OperationState::Succeeded).then_some(())
    })
    .await;
    drop(first);
    let second = LibvirtAdapter::new(cfg.clone());
    let done = eventually(20, "operation done", || async {
        let st = second.operation(&uuid, "u9/1/1").await.ok()??;
        (st.state == OperationState::Succeeded).then_some(st)
    })
    .await;
    assert!(done.id.ends_with("u9/1/1"));
    let again = second
        .reprovision(
            &uuid,
            "debian-12",
            "u9/1/1",
            &osprov::adapter::HostConfig::default(),
        )
        .await
        .expect("idempotent");
    assert_eq!(again.state, OperationState::Succeeded);
    let uri = node.uri.clone();
    let s = tokio::task::spawn_blocking(move || {
        seen(
            &osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn"),
            "vm-0",
        )
    })
    .await
    .expect("read back");
    let fresh = osprov::adapter::libvirt::steps::target_volume("vm-0", "u9/1/1", "debian-12.qcow2");
    let mut want: Vec<String> = IMAGES.iter().map(|s| s.to_string()).collect();
    want.extend([fresh.clone(), "vm-1.qcow2".to_string()]);
    want.sort();
    assert_eq!(s.disks_pool, want);
    assert_eq!(s.disk, format!("/disks/{fresh}"));
    // A controller that died right after the clone: the record says Recorded, the fresh volume
    // exists, the domain still runs its old disk. A new adapter resumes from there.
    let fresh1 =
        osprov::adapter::libvirt::steps::target_volume("vm-1", "u9/5/1", "ubuntu-24.04.qcow2");
    let (uri, f) = (node.uri.clone(), fresh1.clone());
    tokio::task::spawn_blocking(move || {
        let conn = osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn");
        let d = conn.lookup_domain_by_name("vm-1").expect("vm-1");
        let record = osprov::adapter::libvirt::xml::Record {
            os: Some("ubuntu-24.04".into()),
            token: Some("u9/5/1".into()),
            progress: Some(Progress::Recorded),
            previous: Some("vm-1.qcow2".into()),
            message: None,
            installer: None,
            seed: None,
        };
        d.set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&record.to_xml()),
            Some("osprov"),
            Some(osprov::adapter::libvirt::xml::NAMESPACE),
            virt::sys::VIR_DOMAIN_AFFECT_CONFIG | virt::sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .expect("record");
        let disks = conn.lookup_storage_pool_by_name("disks").expect("disks");
        let src = disks
            .lookup_storage_vol_by_name("ubuntu-24.04.qcow2")
            .expect("image");
        let xml = osprov::adapter::libvirt::xml::volume_xml(&f, 1 << 30, Some("qcow2"));
        virt::storage_vol::StorageVol::create_xml_from(&disks, &xml, &src, 0).expect("clone");
    })
    .await
    .expect("mid-way state");
    let third = LibvirtAdapter::new(cfg.clone());
    let uuid1 = uuid_of(1);
    eventually(20, "resumed operation done", || async {
        let st = third.operation(&uuid1, "u9/5/1").await.ok()??;
        (st.state == OperationState::Succeeded).then_some(())
    })
    .await;
    let uri = node.uri.clone();
    let s1 = tokio::task::spawn_blocking(move || {
        seen(
            &osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn"),
            "vm-1",
        )
    })
    .await
    .expect("read back");
    let mut want: Vec<String> = IMAGES.iter().map(|s| s.to_string()).collect();
    want.extend([fresh.clone(), fresh1.clone()]);
    want.sort();
    assert_eq!(
        s1.disks_pool, want,
        "the clone made before the restart is the one used"
    );
    assert_eq!((s1.disk, s1.active), (format!("/disks/{fresh1}"), true));
    // An unknown token is unknown; an unknown OS and an unknown domain are refused.
    assert!(second
        .operation(&uuid, "u9/1/2")
        .await
        .expect("asked")
        .is_none());
    assert!(matches!(
        second
            .reprovision(
                &uuid,
                "windows-11",
                "u9/2/1",
                &osprov::adapter::HostConfig::default()
            )
            .await,
        Err(osprov::adapter::AdapterError::UnknownOs { .. })
    ));
    assert!(matches!(
        second
            .reprovision(
                &uuid_of(7),
                "debian-12",
                "u9/3/1",
                &osprov::adapter::HostConfig::default()
            )
            .await,
        Err(osprov::adapter::AdapterError::UnknownHost(_))
    ));
}

/// A domain marked `recorded` for a request that no longer exists (its controller died after the
/// request was released, before the worker finished) is carried on at the next discovery, so the
/// next request for it goes through instead of waiting as `HostBusy` for ever.
async fn a_domain_left_marked_for_a_gone_request_takes_the_next_one(c: TestCluster) {
    let mark = format!(
        "<uuid>{}</uuid><metadata><osprov:host xmlns:osprov='{}' os='debian-12' \
         token='0f0f0f0f-gone/1/1' progress='recorded'/></metadata>",
        uuid_of(0),
        osprov::adapter::libvirt::xml::NAMESPACE
    );
    let xml = node_xml(2, None).replacen(&format!("<uuid>{}</uuid>", uuid_of(0)), &mark, 1);
    let node = Node::from_xml(&xml);
    let _ctl = start_controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", libvirt_spec(&node.uri), "1s"),
    )
    .await;
    dispatcher_state(&dispatchers, "kvm", DispatcherState::Ready).await;
    create(&requests, &once("r0", "vm-0", "ubuntu-24.04")).await;
    let r = wait_phase(&requests, "r0", Phase::Succeeded, 60).await;
    let token = r
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .unwrap_or_default();
    assert!(!token.is_empty());
}

/// Where a controller may die in an `image` reprovision, with the domain's metadata record then
/// lost (a hand edit, a restore of the definition from backup).
#[derive(Clone, Copy, Debug, PartialEq)]
enum LostAfter {
    Clone,
    SwitchDisk,
    Start,
}

/// The `image` strategy keeps its progress in libvirt itself (the fresh volume is named after the
/// token): with the metadata record lost after any step, the same token resumes from what the
/// domain and the pool show, with no second clone (a clone onto the existing name would fail the
/// operation) and no second power cycle (the domain id of a started domain does not change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_domain_record_resumes_without_a_second_clone_or_power_cycle() {
    for lost in [LostAfter::Clone, LostAfter::SwitchDisk, LostAfter::Start] {
        let node = Node::new(1, None);
        let cfg = image_config(&node.uri);
        let token = "u7/1/1";
        let fresh =
            osprov::adapter::libvirt::steps::target_volume("vm-0", token, "debian-12.qcow2");
        let (uri, f) = (node.uri.clone(), fresh.clone());
        // The state a first controller left, without its record.
        let id_before = tokio::task::spawn_blocking(move || {
            use osprov::adapter::libvirt::xml;
            let conn = osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn");
            let d = conn.lookup_domain_by_name("vm-0").expect("vm-0");
            let disks = conn.lookup_storage_pool_by_name("disks").expect("disks");
            let src = disks
                .lookup_storage_vol_by_name("debian-12.qcow2")
                .expect("image");
            let spec = xml::volume_xml(&f, 1 << 30, Some("qcow2"));
            virt::storage_vol::StorageVol::create_xml_from(&disks, &spec, &src, 0).expect("clone");
            if lost != LostAfter::Clone {
                d.destroy().expect("power off");
                let inactive = d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).expect("xml");
                let disk = xml::root_disk(&inactive, None).expect("root disk");
                let path = format!("/disks/{f}");
                let redefined =
                    xml::with_disk_source(&inactive, &disk, &xml::DiskSource::File(path));
                conn.define_domain_xml(&redefined).expect("switch");
            }
            if lost == LostAfter::Start {
                d.create().expect("start");
            }
            d.id()
        })
        .await
        .expect("planted");
        let adapter = LibvirtAdapter::new(cfg);
        let uuid = uuid_of(0);
        adapter
            .reprovision(
                &uuid,
                "debian-12",
                token,
                &osprov::adapter::HostConfig::default(),
            )
            .await
            .expect("resumed");
        eventually(20, &format!("resumed after {lost:?}"), || async {
            let st = adapter.operation(&uuid, token).await.ok()??;
            match st.state {
                OperationState::Succeeded => Some(()),
                OperationState::Failed { message } => panic!("after {lost:?}: {message}"),
                _ => None,
            }
        })
        .await;
        let uri = node.uri.clone();
        let (s, id_after) = tokio::task::spawn_blocking(move || {
            let conn = osprov::adapter::libvirt::shared_connection(&uri, None).expect("conn");
            let id = conn.lookup_domain_by_name("vm-0").expect("vm-0").id();
            (seen(&conn, "vm-0"), id)
        })
        .await
        .expect("read back");
        assert_eq!(
            (s.disk.as_str(), s.active),
            (format!("/disks/{fresh}").as_str(), true),
            "after {lost:?}"
        );
        assert_eq!(
            s.disks_pool.iter().filter(|v| **v == fresh).count(),
            1,
            "one fresh volume after {lost:?}"
        );
        if lost == LostAfter::Start {
            assert_eq!(id_after, id_before, "no second power cycle after {lost:?}");
        }
    }
}
