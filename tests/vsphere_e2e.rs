//! End-to-end: the real controller with a vSphere dispatcher against govmomi's vCenter simulator
//! (vcsim, built from its Go module), on both API backends. What the VMs hold (CD-ROM backing,
//! boot order, extraConfig) is read back through a vim25 session of the test's own; vcsim's
//! SOAP trace counts what osprov sent (reconfigures, resets, logins).
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod records_support;
mod support;
mod vsphere_support;

use cluster::TestCluster;
use harness::*;
use kube::api::Api;
use osprov::adapter::vsphere::model::{keys, BootDev};
use osprov::api::{
    DispatcherState, ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, PowerState,
};
use osprov::controller::settings::{MetricsAddr, Settings};
use records_support::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vsphere_support::*;

on_both_backends!(
    discovers_vms_and_installs_from_the_iso_with_one_reset,
    power_changes_made_in_vcenter_reach_the_managed_host_through_updates,
    wrong_credentials_are_authentication_failed_without_a_retry_storm,
    a_vcenter_restarted_mid_install_gets_no_second_reconfigure_or_reset,
    a_silent_installer_fails_the_request_and_the_vm_is_restored,
    a_lost_or_replaced_record_never_resets_a_vm_twice,
    the_configuration_reaches_the_guest_as_vmware_guestinfo,
);

fn controller(c: &TestCluster, callback: SocketAddr) -> RunningController {
    RunningController::start(
        c.client.clone(),
        Settings {
            callback_addr: MetricsAddr(Some(callback)),
            ..fast_settings_in(&c.ns)
        },
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    )
}

async fn account(c: &TestCluster, password: &str) {
    account_secret(&c.api(), password).await;
}

/// Wait until VM `name` holds the installer; its callback URL.
async fn installer_attached(sim: &Vcsim, name: &str) -> String {
    let soap = sim.client();
    eventually(30, "installer attached", || async {
        let vm = vm(&soap, name).await;
        let cd = vm.cdrom.clone()?;
        (cd.iso.as_deref() == Some(&format!("[LocalDS_0] {ISO}")[..]) && cd.start_connected)
            .then_some(())?;
        vm.extra(keys::CALLBACK).map(str::to_string)
    })
    .await
}

async fn discovers_vms_and_installs_from_the_iso_with_one_reset(c: TestCluster) {
    let sim = Vcsim::start(3);
    account(&c, PASSWORD).await;
    let callback = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ctl = controller(&c, callback);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1s"),
    )
    .await;
    let mh = eventually(30, "VM1 mirrored", || async {
        // Mirrored means with a status (the real API writes the object, then its status).
        hosts
            .get("dc0-c0-rp0-vm1")
            .await
            .ok()
            .filter(|h| h.status.is_some())
    })
    .await;
    let st = mh.status.expect("status");
    assert_eq!(st.available_os, ["debian-12"]);
    assert_eq!(st.power, Some(PowerState::On));
    let soap = sim.client();
    let before = vm(&soap, "DC0_C0_RP0_VM1").await;
    assert_eq!(mh.spec.backend_id, before.id());

    create(&requests, &once("r1", "dc0-c0-rp0-vm1", "debian-12")).await;
    let url = installer_attached(&sim, "DC0_C0_RP0_VM1").await;
    assert!(
        url.starts_with(&format!("http://{callback}/callback/")),
        "{url}"
    );
    let during = vm(&soap, "DC0_C0_RP0_VM1").await;
    assert_eq!(
        during.boot.first(),
        Some(&BootDev::Cdrom),
        "CD-ROM boots first"
    );
    eventually(30, "one reset", || async {
        (sim.count("ResetVM_Task") == 1).then_some(())
    })
    .await;
    wait_phase(&requests, "r1", Phase::Provisioning, 10).await;

    // A restarted controller neither reconfigures nor resets again.
    ctl.stop().await;
    let reconfigs = sim.count("ReconfigVM_Task");
    // The new controller listens on another port (the old one's may linger a moment); the
    // callback's path is what identifies the operation.
    let callback2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ctl = controller(&c, callback2);
    // The new controller has looked at the operation and acted on what it saw (a whole
    // reconcile) before the check.
    ctl.more_backend_calls(OPERATION_OK, 2, 30).await;
    assert_eq!(sim.count("ResetVM_Task"), 1);
    assert_eq!(sim.count("ReconfigVM_Task"), reconfigs);

    let url = url.replace(&callback.to_string(), &callback2.to_string());
    assert_eq!(report(&url, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&requests, "r1", Phase::Succeeded, 30).await;
    let after = vm(&soap, "DC0_C0_RP0_VM1").await;
    let cd = after.cdrom.clone().expect("cdrom");
    assert!(!cd.start_connected && cd.iso.is_none(), "{cd:?}");
    assert!(!after.boot.contains(&BootDev::Cdrom), "{:?}", after.boot);
    assert_eq!(after.extra(keys::PROGRESS), Some("done"));
    assert_eq!(after.extra(keys::CALLBACK), None);
    assert_eq!(
        (sim.count("ResetVM_Task"), sim.count("PowerOnVM_Task")),
        (1, 0)
    );
    // Nobody asked for VM0 or VM2.
    for other in ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM2"] {
        assert_eq!(vm(&soap, other).await.extra(keys::TOKEN), None);
    }
    eventually(30, "current OS mirrored", || async {
        let mh = hosts.get("dc0-c0-rp0-vm1").await.ok()?;
        (mh.status?.current_os.as_deref() == Some("debian-12")).then_some(())
    })
    .await;
}

async fn power_changes_made_in_vcenter_reach_the_managed_host_through_updates(c: TestCluster) {
    let sim = Vcsim::start(2);
    account(&c, PASSWORD).await;
    let _ctl = controller(&c, SocketAddr::from(([127, 0, 0, 1], free_port())));
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    // A one-hour lookup: only the change feed can bring the power change.
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1h"),
    )
    .await;
    eventually(30, "VM0 on", || async {
        let mh = hosts.get("dc0-c0-rp0-vm0").await.ok()?;
        (mh.status?.power == Some(PowerState::On)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let soap = sim.client();
    let vm0 = vm(&soap, "DC0_C0_RP0_VM0").await;
    power(&soap, &vm0, "PowerOffVM_Task").await;
    eventually(5, "VM0 off through WaitForUpdatesEx", || async {
        let mh = hosts.get("dc0-c0-rp0-vm0").await.ok()?;
        (mh.status?.power == Some(PowerState::Off)).then_some(())
    })
    .await;
    assert!(sim.count("WaitForUpdatesEx") >= 1);
}

async fn wrong_credentials_are_authentication_failed_without_a_retry_storm(c: TestCluster) {
    let sim = Vcsim::start(1);
    account(&c, "not-the-password").await;
    let ctl = controller(&c, SocketAddr::from(([127, 0, 0, 1], free_port())));
    let dispatchers: Api<OSDispatcher> = c.api();
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1s"),
    )
    .await;
    let d = eventually(30, "AuthenticationFailed", || async {
        let d = dispatchers.get("vc").await.ok()?;
        let ready = d
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?
            .clone();
        (ready.reason == "AuthenticationFailed").then_some(d)
    })
    .await;
    let text = serde_json::to_string(&d.status).expect("json");
    assert!(!text.contains("not-the-password"), "{text}");
    let logins = sim.count("Login");
    // The session keeps retrying (every second: the dispatcher's lookupInterval); wait for five
    // more attempts that failed on the credentials (~5 s), then count what reached vCenter.
    ctl.more_backend_calls(&[("outcome", "AuthenticationFailed")], 5, 30)
        .await;
    let more = sim.count("Login") - logins;
    assert!(
        more <= 3,
        "{more} more logins while the session tried 5 more times: a retry storm"
    );
    assert_ne!(d.status.and_then(|s| s.state), Some(DispatcherState::Ready));
}

async fn a_vcenter_restarted_mid_install_gets_no_second_reconfigure_or_reset(c: TestCluster) {
    let sim = Vcsim::start(2);
    let port = sim.port;
    account(&c, PASSWORD).await;
    let callback = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ctl = controller(&c, callback);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1s"),
    )
    .await;
    eventually(30, "VM0 mirrored", || async {
        hosts.get("dc0-c0-rp0-vm0").await.ok()
    })
    .await;
    create(&requests, &once("r1", "dc0-c0-rp0-vm0", "debian-12")).await;
    let url = installer_attached(&sim, "DC0_C0_RP0_VM0").await;
    eventually(30, "one reset", || async {
        (sim.count("ResetVM_Task") == 1).then_some(())
    })
    .await;
    // vCenter goes away and comes back (vcsim forgets everything; the VMs are the same ones).
    drop(sim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sim = Vcsim::start_on(2, port);
    // The controller has discovered the new vCenter's VMs, then looked at the operation and
    // acted on what it saw (a whole reconcile) before the check.
    ctl.more_backend_calls(&[("call", "discover"), ("outcome", "ok")], 1, 30)
        .await;
    ctl.more_backend_calls(OPERATION_OK, 2, 30).await;
    assert_eq!(
        (
            sim.count("ReconfigVM_Task"),
            sim.count("ResetVM_Task"),
            sim.count("PowerOnVM_Task")
        ),
        (0, 0, 0),
        "nothing repeated after the restart"
    );
    assert_eq!(report(&url, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&requests, "r1", Phase::Succeeded, 30).await;
    assert_eq!(
        (sim.count("ResetVM_Task"), sim.count("PowerOnVM_Task")),
        (0, 0)
    );
}

async fn a_silent_installer_fails_the_request_and_the_vm_is_restored(c: TestCluster) {
    let sim = Vcsim::start(1);
    account(&c, PASSWORD).await;
    let _ctl = controller(&c, SocketAddr::from(([127, 0, 0, 1], free_port())));
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let mut spec = vsphere_spec(&sim);
    spec.callback_timeout = Some("3s".into());
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    eventually(30, "VM0 mirrored", || async {
        hosts.get("dc0-c0-rp0-vm0").await.ok()
    })
    .await;
    create(&requests, &once("r1", "dc0-c0-rp0-vm0", "debian-12")).await;
    installer_attached(&sim, "DC0_C0_RP0_VM0").await;
    let r = wait_phase(&requests, "r1", Phase::Failed, 60).await;
    let text = serde_json::to_string(&r.status).expect("json");
    assert!(text.contains("callbackTimeout"), "{text}");
    let after = vm(&sim.client(), "DC0_C0_RP0_VM0").await;
    let cd = after.cdrom.clone().expect("cdrom");
    assert!(!cd.start_connected && cd.iso.is_none(), "{cd:?}");
    assert_eq!(after.extra(keys::PROGRESS), Some("failed"));
    assert_eq!(after.extra(keys::CALLBACK), None);
    assert_eq!(sim.count("ResetVM_Task"), 1);
}

async fn a_lost_or_replaced_record_never_resets_a_vm_twice(c: TestCluster) {
    let sim = Vcsim::start(2);
    account(&c, PASSWORD).await;
    let callback = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ctl = controller(&c, callback);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1s"),
    )
    .await;
    // VM0: the record is really gone while the installer runs.
    create(&requests, &request("r0", "dc0-c0-rp0-vm0", "debian-12")).await;
    let url = installer_attached(&sim, "DC0_C0_RP0_VM0").await;
    eventually(30, "VM0 reset", || async {
        (sim.count("ResetVM_Task") == 1).then_some(())
    })
    .await;
    let name = record_name(&requests, "r0").await;
    lose_record(&secrets, &name).await;
    let message = wait_record_lost(&requests, "r0").await;
    assert!(message.contains("deleted"), "{message}");
    assert_eq!(report(&url, r#"{"status":"succeeded"}"#).await, 404);
    // VM1: replaced by a planted Secret of the same name while the controller is down.
    create(&requests, &request("r1", "dc0-c0-rp0-vm1", "debian-12")).await;
    installer_attached(&sim, "DC0_C0_RP0_VM1").await;
    eventually(30, "VM1 reset", || async {
        (sim.count("ResetVM_Task") == 2).then_some(())
    })
    .await;
    let name = record_name(&requests, "r1").await;
    ctl.stop().await;
    replace_record(&secrets, &name).await;
    let ctl = controller(&c, callback);
    let message = wait_record_lost(&requests, "r1").await;
    assert!(message.contains("replaced"), "{message}");
    // Discovery starts a worker for a VM still marked for an operation whose record it cannot
    // list (VM0): one began since (the second of two more discoveries) before the check.
    ctl.more_backend_calls(&[("call", "discover"), ("outcome", "ok")], 2, 30)
        .await;
    assert_eq!(
        (sim.count("ResetVM_Task"), sim.count("PowerOnVM_Task")),
        (2, 0),
        "one reset per VM, whatever happened to the records"
    );
    drop(ctl);
}

/// A request's user-data, network-config and hostname reach the VM as the guestinfo keys of
/// cloud-init's VMware datasource, which cloud-init's own decoder reads back (Debian's
/// `cloud-init`; required where `OSPROV_REQUIRE_CLOUD_INIT` is set, as in CI). The keys stay after
/// the install (cloud-init reads them on every boot); the callback URL goes.
async fn the_configuration_reaches_the_guest_as_vmware_guestinfo(c: TestCluster) {
    let sim = Vcsim::start(2);
    account(&c, PASSWORD).await;
    let callback = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _ctl = controller(&c, callback);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("vm1-config".into());
    secret.string_data = Some(
        [
            (
                "userData".to_string(),
                "#cloud-config\npackages: [htop]\n".to_string(),
            ),
            (
                "networkData".to_string(),
                "version: 2\nethernets: {}\n".to_string(),
            ),
        ]
        .into(),
    );
    create(&secrets, &secret).await;
    let dispatchers: Api<OSDispatcher> = c.api();
    create(
        &dispatchers,
        &vsphere_dispatcher("vc", vsphere_spec(&sim), "1s"),
    )
    .await;
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut r = once("r1", "dc0-c0-rp0-vm1", "debian-12");
    let by = |key: &str| {
        Some(osprov::api::ConfigSecretRef {
            name: "vm1-config".into(),
            key: Some(key.into()),
        })
    };
    r.spec.user_data = by("userData");
    r.spec.network_data = by("networkData");
    r.spec.hostname = Some("vm1.example.org".into());
    create(&requests, &r).await;
    let url = installer_attached(&sim, "DC0_C0_RP0_VM1").await;
    let soap = sim.client();
    let during = vm(&soap, "DC0_C0_RP0_VM1").await;
    let key = |k: &str| during.extra(k).map(str::to_string).unwrap_or_default();
    assert_eq!(key("guestinfo.metadata.encoding"), "base64");
    assert_eq!(key("guestinfo.userdata.encoding"), "base64");
    read_with_cloud_init(&key("guestinfo.metadata"), &key("guestinfo.userdata"));
    assert_eq!(report(&url, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&requests, "r1", Phase::Succeeded, 30).await;
    let after = vm(&soap, "DC0_C0_RP0_VM1").await;
    assert_eq!(after.extra(keys::CALLBACK), None);
    assert!(after.extra("guestinfo.userdata").is_some());
    assert_eq!(
        vm(&soap, "DC0_C0_RP0_VM0")
            .await
            .extra("guestinfo.userdata"),
        None,
        "nobody asked for VM0"
    );
}

/// Decode the keys with cloud-init's VMware datasource (through its environment-variable
/// access method, which reads the same keys as guestinfo).
fn read_with_cloud_init(metadata: &str, userdata: &str) {
    let python = std::path::Path::new("/usr/bin/python3");
    let has = std::process::Command::new(python)
        .args(["-c", "import cloudinit.sources.DataSourceVMware"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        assert!(
            std::env::var_os("OSPROV_REQUIRE_CLOUD_INIT").is_none(),
            "OSPROV_REQUIRE_CLOUD_INIT is set but cloud-init is not installed"
        );
        eprintln!("skipping the cloud-init check: cloud-init is not installed");
        return;
    }
    let script = "from cloudinit.sources import DataSourceVMware as v\n\
                  md = v.process_metadata(v.load_json_or_yaml(v.guestinfo_envvar('metadata')))\n\
                  print(md['local-hostname'], md['network']['config']['version'], \
                  md['instance-id'].startswith('osprov-'), repr(v.guestinfo_envvar('userdata')))";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .env("VMX_GUESTINFO_METADATA", metadata)
        .env("VMX_GUESTINFO_METADATA_ENCODING", "base64")
        .env("VMX_GUESTINFO_USERDATA", userdata)
        .env("VMX_GUESTINFO_USERDATA_ENCODING", "base64")
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "vm1.example.org 2 True '#cloud-config\\npackages: [htop]\\n'"
    );
}
