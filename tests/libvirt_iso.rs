//! End-to-end: the libvirt adapter's `iso` strategy through the real controller, on libvirt's
//! test driver, on both API backends. What the domain's definition holds (CD-ROM, boot order,
//! the SMBIOS string with the callback URL) is read back through libvirt; the installer is played
//! by the test, which POSTs to the callback URL it finds in the domain.
#![cfg(feature = "libvirt")]
mod cluster;
mod harness;
mod libvirt_support;
mod records_support;
mod support;

use cluster::TestCluster;
use harness::*;
use kube::api::Api;
use libvirt_support::*;
use osprov::adapter::libvirt::installer;
use osprov::adapter::libvirt::xml::Progress;
use osprov::api::{
    DispatcherState, LibvirtImage, LibvirtSpec, LibvirtStrategy, ManagedHost, OSDispatcher,
    OSProvisioningRequest, Phase,
};
use osprov::controller::settings::MetricsAddr;
use records_support::*;
use std::net::SocketAddr;
use std::sync::Arc;

on_both_backends!(
    an_iso_install_power_cycles_once_and_restores_the_domain_after_the_callback,
    a_failed_or_silent_installer_fails_the_request_and_restores_the_domain,
    a_domain_the_strategy_cannot_change_is_refused_untouched,
    a_lost_or_replaced_record_never_power_cycles_the_domain_twice,
);

const ISO: &str = "/disks/debian-12-netinst.iso";

/// A node with `domains` domains whose pool also holds an installer ISO.
fn iso_node(domains: usize) -> Node {
    let xml = node_xml(domains, None).replace(
        "</pool>",
        "<volume><name>debian-12-netinst.iso</name><capacity unit='MiB'>600</capacity>\
         <target><format type='raw'/></target></volume>\n</pool>",
    );
    Node::from_xml(&xml)
}

fn iso_spec(uri: &str, timeout: Option<&str>) -> LibvirtSpec {
    LibvirtSpec {
        strategy: LibvirtStrategy::Iso,
        images: vec![LibvirtImage {
            name: "debian-12".into(),
            volume: "debian-12-netinst.iso".into(),
        }],
        callback_timeout: timeout.map(str::to_string),
        ..libvirt_spec(uri)
    }
}

/// The controller with its callback endpoint on a free port.
fn controller(c: &TestCluster) -> (RunningController, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let settings = osprov::controller::settings::Settings {
        callback_addr: MetricsAddr(Some(addr)),
        ..fast_settings_in(&c.ns)
    };
    let ctl = RunningController::start(
        c.client.clone(),
        settings,
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    );
    (ctl, addr)
}

/// A domain's definition, whether it runs and its id (blocking).
fn definition(node_uri: &str, name: &str) -> (String, bool, Option<u32>) {
    let conn = osprov::adapter::libvirt::shared_connection(node_uri, None).expect("conn");
    let d = conn.lookup_domain_by_name(name).expect("domain");
    let xml = d
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .expect("domain xml");
    let active = d.is_active().expect("state");
    (xml, active, d.id())
}

async fn read(node_uri: &str, name: &str) -> (String, bool, Option<u32>) {
    let (uri, name) = (node_uri.to_string(), name.to_string());
    tokio::task::spawn_blocking(move || definition(&uri, &name))
        .await
        .expect("read back")
}

/// The definition without osprov's metadata (which records the operation) and without the IDE
/// controller libvirt adds for the CD-ROM osprov attached (libvirt keeps an implicit controller
/// once it is in the definition; the README says so).
fn without_metadata(xml: &str) -> String {
    match (xml.find("<metadata>"), xml.find("</metadata>")) {
        (Some(a), Some(b)) => format!("{}{}", &xml[..a], &xml[b + "</metadata>".len()..]),
        _ => xml.to_string(),
    }
    .replace("<controller type='ide' index='0'/>", "")
    .split_whitespace()
    .collect()
}

/// Wait until the domain runs the installer (a run other than `before`); its callback URL and
/// domain id.
async fn installer_running(uri: &str, name: &str, before: Option<u32>) -> (String, u32) {
    eventually(30, "installer attached and started", || async {
        let (xml, active, id) = read(uri, name).await;
        let url = installer::callback_url(&xml)?;
        (active && id != before && installer::attached(&xml, "hdc", ISO).ok()?).then_some(())?;
        Some((url, id?))
    })
    .await
}

async fn an_iso_install_power_cycles_once_and_restores_the_domain_after_the_callback(
    c: TestCluster,
) {
    let node = iso_node(2);
    let (before, _, id_before) = read(&node.uri, "vm-1").await;
    let (ctl, addr) = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", iso_spec(&node.uri, None), "1s"),
    )
    .await;
    eventually(30, "vm-1 mirrored", || async {
        hosts.get("vm-1").await.ok()
    })
    .await;
    create(&requests, &once("r1", "vm-1", "debian-12")).await;
    let (url, id) = installer_running(&node.uri, "vm-1", id_before).await;
    assert!(
        url.starts_with(&format!("http://{addr}/callback/")),
        "{url}"
    );
    assert_ne!(Some(id), id_before, "power-cycled: a new run");
    let (xml, _, _) = read(&node.uri, "vm-1").await;
    let os = &xml[xml.find("<os>").expect("os")..xml.find("</os>").expect("/os")];
    let cdrom_first = os.find("<boot dev='cdrom'/>").expect("cdrom boots");
    assert!(
        cdrom_first < os.find("<boot dev='hd'/>").expect("then hd"),
        "{os}"
    );
    wait_phase(&requests, "r1", Phase::Provisioning, 10).await;

    // A restarted controller resumes without a second power cycle. It has looked at the
    // operation and acted on what it saw (a whole reconcile) before the check; the end of the
    // test checks that the domain ran on from this run.
    ctl.stop().await;
    let (ctl, addr2) = controller(&c);
    ctl.more_backend_calls(OPERATION_OK, 2, 30).await;
    let (_, active, id_after) = read(&node.uri, "vm-1").await;
    assert_eq!((active, id_after), (true, Some(id)), "not started again");
    let r = requests.get("r1").await.expect("r1");
    assert_eq!(r.status.and_then(|s| s.phase), Some(Phase::Provisioning));

    // The installer calls back (on the new controller's endpoint; the path is the same).
    let path = url.split_once("/callback/").expect("path").1;
    let (key, _) = path.split_once('.').expect("key.secret");
    let wrong = format!("http://{addr2}/callback/{key}.{}", "0".repeat(48));
    assert_eq!(post(&wrong, r#"{"status":"succeeded"}"#).await, 401);
    let url = format!("http://{addr2}/callback/{path}");
    assert_eq!(report(&url, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&requests, "r1", Phase::Succeeded, 30).await;
    let (after, active, id_end) = read(&node.uri, "vm-1").await;
    assert_eq!(
        without_metadata(&after),
        without_metadata(&before),
        "definition restored"
    );
    // libvirt's test driver cannot eject a CD-ROM from a running domain, so osprov powers it
    // off and starts it from the restored definition (a QEMU guest keeps running: libvirt_qemu).
    assert!(
        active && id_end.is_some() && id_end != Some(id),
        "restarted without the medium: {id} before, {id_end:?} after"
    );
    let uri = node.uri.clone();
    let seen = tokio::task::spawn_blocking(move || seen(&node.conn(None), "vm-1"))
        .await
        .expect("seen");
    let record = seen.record.expect("record");
    assert_eq!(
        (record.os.as_deref(), record.progress),
        (Some("debian-12"), Some(Progress::Done))
    );
    // Nobody asked for vm-0.
    let (xml0, _, _) = read(&uri, "vm-0").await;
    assert!(installer::callback_url(&xml0).is_none() && !without_metadata(&xml0).contains("cdrom"));
    eventually(30, "current OS mirrored", || async {
        let mh = hosts.get("vm-1").await.ok()?;
        (mh.status?.current_os.as_deref() == Some("debian-12")).then_some(())
    })
    .await;
    drop(ctl);
}

async fn a_failed_or_silent_installer_fails_the_request_and_restores_the_domain(c: TestCluster) {
    let node = iso_node(2);
    let (before, _, id0) = read(&node.uri, "vm-0").await;
    let (_ctl, _) = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", iso_spec(&node.uri, Some("4s")), "1s"),
    )
    .await;
    eventually(30, "dispatcher Ready", || async {
        let d = dispatchers.get("kvm").await.ok()?;
        (d.status?.state == Some(DispatcherState::Ready)).then_some(())
    })
    .await;
    // vm-0: the installer reports a failure.
    create(&requests, &once("r0", "vm-0", "debian-12")).await;
    let (url, _) = installer_running(&node.uri, "vm-0", id0).await;
    let body = r#"{"status":"failed","message":"no disk large enough"}"#;
    assert_eq!(report(&url, body).await, 200);
    let r = wait_phase(&requests, "r0", Phase::Failed, 30).await;
    let text = serde_json::to_string(&r.status).expect("json");
    assert!(text.contains("no disk large enough"), "{text}");
    let (after, _, _) = read(&node.uri, "vm-0").await;
    assert_eq!(without_metadata(&after), without_metadata(&before));
    // vm-1: the installer never calls back.
    create(&requests, &once("r1", "vm-1", "debian-12")).await;
    let r = wait_phase(&requests, "r1", Phase::Failed, 60).await;
    let text = serde_json::to_string(&r.status).expect("json");
    assert!(text.contains("callbackTimeout"), "{text}");
    let (after, _, _) = read(&node.uri, "vm-1").await;
    assert!(installer::callback_url(&after).is_none(), "{after}");
    assert!(!without_metadata(&after).contains("cdrom"), "{after}");
}

async fn a_domain_the_strategy_cannot_change_is_refused_untouched(c: TestCluster) {
    // vm-0 boots by per-device order: the strategy refuses it before changing anything.
    let xml = node_xml(1, None)
        .replace(
            "<target dev='vda' bus='virtio'/>",
            "<target dev='vda' bus='virtio'/><boot order='1'/>",
        )
        .replace(
            "</pool>",
            "<volume><name>debian-12-netinst.iso</name><capacity unit='MiB'>600</capacity>\
             </volume>\n</pool>",
        );
    let node = Node::from_xml(&xml);
    let (before, _, id_before) = read(&node.uri, "vm-0").await;
    let (_ctl, _) = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", iso_spec(&node.uri, None), "1s"),
    )
    .await;
    create(&requests, &once("r0", "vm-0", "debian-12")).await;
    let r = wait_phase(&requests, "r0", Phase::Failed, 30).await;
    let text = serde_json::to_string(&r.status).expect("json");
    assert!(text.contains("per-device"), "{text}");
    let (after, _, id_after) = read(&node.uri, "vm-0").await;
    assert_eq!((after, id_after), (before, id_before), "untouched");
}

async fn a_lost_or_replaced_record_never_power_cycles_the_domain_twice(c: TestCluster) {
    let node = iso_node(2);
    let (_, _, id0) = read(&node.uri, "vm-0").await;
    let (_, _, id1) = read(&node.uri, "vm-1").await;
    let (ctl, _) = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    create(
        &dispatchers,
        &libvirt_dispatcher("kvm", iso_spec(&node.uri, None), "1s"),
    )
    .await;
    // vm-0: the record is really gone while the installer runs.
    create(&requests, &request("r0", "vm-0", "debian-12")).await;
    let (url0, run0) = installer_running(&node.uri, "vm-0", id0).await;
    let name = record_name(&requests, "r0").await;
    lose_record(&secrets, &name).await;
    let message = wait_record_lost(&requests, "r0").await;
    assert!(message.contains("deleted"), "{message}");
    // vm-1: replaced by a planted Secret of the same name while the controller is down.
    create(&requests, &request("r1", "vm-1", "debian-12")).await;
    let (_, run1) = installer_running(&node.uri, "vm-1", id1).await;
    let name = record_name(&requests, "r1").await;
    ctl.stop().await;
    replace_record(&secrets, &name).await;
    let (ctl, addr) = controller(&c);
    let message = wait_record_lost(&requests, "r1").await;
    assert!(message.contains("replaced"), "{message}");
    // Discovery starts a worker for a domain still marked for an operation whose record it
    // cannot list (vm-0): one began since (the second of two more discoveries) before the check.
    ctl.more_backend_calls(&[("call", "discover"), ("outcome", "ok")], 2, 30)
        .await;
    // The installers' reports find nothing to trust; each domain ran its installer once.
    let path = url0.split_once("/callback/").expect("path").1;
    let url0 = format!("http://{addr}/callback/{path}");
    assert_eq!(report(&url0, r#"{"status":"succeeded"}"#).await, 404);
    for (vm, run) in [("vm-0", run0), ("vm-1", run1)] {
        let (_, active, id) = read(&node.uri, vm).await;
        assert_eq!((active, id), (true, Some(run)), "{vm}: power-cycled once");
    }
    drop(ctl);
}
