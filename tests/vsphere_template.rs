//! End-to-end: the vSphere `template` strategy through the real controller against govmomi's
//! vCenter simulator (vcsim), on both API backends. vcsim really copies the template's disk
//! files on its datastore directory and really deletes the old ones, so the test reads the
//! result from disk (the new disk holds the template's marker text) as well as through a vim25
//! session of its own; vcsim's SOAP trace counts the copies, reconfigures and power tasks.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod records_support;
mod support;
mod vsphere_support;

use cluster::TestCluster;
use harness::*;
use kube::api::{Api, PostParams};
use osprov::adapter::vsphere::model::keys;
use osprov::api::{ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, PowerState};
use osprov::controller::settings::Settings;
use records_support::*;
use std::sync::Arc;
use std::time::Duration;
use vsphere_support::*;

on_both_backends!(
    the_template_disk_replaces_the_vm_disk_once_across_a_controller_restart,
    a_missing_template_fails_the_request_and_leaves_the_vm_alone,
    a_catalogue_that_does_not_fit_the_strategy_is_refused_by_the_api,
    a_request_deleted_mid_way_leaves_the_vm_ready_for_the_next_one,
    a_record_lost_mid_swap_ends_the_attempt_without_repeating_a_step,
    the_copied_disk_boots_with_the_configuration_in_guestinfo,
);

const TEMPLATE: &str = "tmpl-ubuntu";
const VM: &str = "DC0_C0_RP0_VM1";
const HOST: &str = "dc0-c0-rp0-vm1";

fn controller(c: &TestCluster) -> RunningController {
    RunningController::start(
        c.client.clone(),
        Settings {
            ..fast_settings_in(&c.ns)
        },
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    )
}

async fn account(c: &TestCluster) {
    account_secret(&c.api(), PASSWORD).await;
}

async fn the_template_disk_replaces_the_vm_disk_once_across_a_controller_restart(c: TestCluster) {
    let sim = Vcsim::start_with(2, 0, &[TEMPLATE]);
    let template_disk = sim.info.templates[TEMPLATE].clone();
    account(&c).await;
    let ctl = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE)]);
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    let mirrored = eventually(30, "two VMs mirrored", || async {
        let list = hosts.list(&Default::default()).await.ok()?;
        (list.items.len() == 2 && list.items.iter().all(|h| h.status.is_some()))
            .then_some(list.items)
    })
    .await;
    assert!(
        mirrored
            .iter()
            .all(|h| !h.metadata.name.clone().unwrap_or_default().contains("tmpl")),
        "the template is no host: {mirrored:?}"
    );

    let soap = sim.client();
    let before = vm(&soap, VM).await;
    let old_disk = before
        .boot_disk()
        .and_then(|d| d.file.clone())
        .expect("VM1's disk file");
    assert!(sim.file(&old_disk).exists(), "{old_disk}");

    // The controller dies right after it asked for the copy; a new one carries on.
    create(&requests, &once("r1", HOST, "ubuntu-24.04")).await;
    eventually(30, "the template's disk copied", || async {
        (sim.count("CopyVirtualDisk_Task") >= 1).then_some(())
    })
    .await;
    ctl.stop().await;
    // Stopped means gone, workers included, as with a killed pod: vcsim hears nothing more. A
    // call already on the wire when the controller stopped may reach vcsim's trace a moment
    // later, so the count is read once it has held still for half a second.
    let heard = settled(&sim).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sim.total(), heard, "{:?}", sim.snapshot());
    let ctl = controller(&c);
    let r = wait_phase(&requests, "r1", Phase::Succeeded, 60).await;
    let message = serde_json::to_string(&r.status).expect("json");

    let after = vm(&soap, VM).await;
    assert_eq!(after.disks.len(), 1, "{:?}", after.disks);
    let new_disk = after.disks[0].file.clone().expect("file");
    assert!(
        new_disk.starts_with(&format!("[LocalDS_0] {VM}/osprov-")),
        "{new_disk}"
    );
    assert_eq!(
        std::fs::read_to_string(sim.file(&new_disk.replace(".vmdk", "-flat.vmdk")))
            .expect("the new disk's data"),
        format!("vcsim template {TEMPLATE}\n"),
        "the VM's disk is a copy of the template's"
    );
    assert!(!sim.file(&old_disk).exists(), "the old disk is deleted");
    assert!(
        sim.file(&template_disk).exists(),
        "the template keeps its disk"
    );
    assert_eq!(after.power, "poweredOn", "{message}");
    assert_eq!(after.extra(keys::PROGRESS), Some("done"));
    assert_eq!(after.extra(keys::OS), Some("ubuntu-24.04"));
    eventually(30, "the current OS on the ManagedHost", || async {
        let st = hosts.get(HOST).await.ok()?.status?;
        (st.current_os.as_deref() == Some("ubuntu-24.04") && st.power == Some(PowerState::On))
            .then_some(())
    })
    .await;

    // One wipe: one power-off, one disk swap (record, swap, finish: three reconfigures).
    assert_eq!(sim.count("PowerOffVM_Task"), 1);
    assert_eq!(sim.count("PowerOnVM_Task"), 1);
    assert_eq!(sim.count("ReconfigVM_Task"), 3);
    let copies = sim.count("CopyVirtualDisk_Task");
    assert!((1..=2).contains(&copies), "{copies} copies");

    // Another restart finds nothing left to do; the other VM was never touched. The new
    // controller has discovered twice (its session started, read every VM and its record, and
    // went round once more) before the counts are read.
    ctl.stop().await;
    let ctl = controller(&c);
    ctl.more_backend_calls(&[("call", "discover"), ("outcome", "ok")], 2, 30)
        .await;
    assert_eq!(sim.count("ReconfigVM_Task"), 3);
    assert_eq!(sim.count("CopyVirtualDisk_Task"), copies);
    let other = vm(&soap, "DC0_C0_RP0_VM0").await;
    assert_eq!(other.extra(keys::TOKEN), None);
}

async fn a_missing_template_fails_the_request_and_leaves_the_vm_alone(c: TestCluster) {
    let sim = Vcsim::start_with(2, 0, &[TEMPLATE]);
    account(&c).await;
    let _ctl = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE), ("rhel-9", "no-such")]);
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    eventually(30, "VM1 mirrored", || async {
        hosts.get(HOST).await.ok().filter(|h| h.status.is_some())
    })
    .await;
    let soap = sim.client();
    let before = vm(&soap, VM).await;

    create(&requests, &once("r1", HOST, "rhel-9")).await;
    let r = wait_phase(&requests, "r1", Phase::Failed, 30).await;
    let text = serde_json::to_string(&r.status).expect("json");
    assert!(text.contains("no-such"), "{text}");
    assert_eq!(vm(&soap, VM).await, before, "untouched");
    assert_eq!(sim.count("ReconfigVM_Task"), 0);
    assert_eq!(sim.count("CopyVirtualDisk_Task"), 0);
}

async fn a_catalogue_that_does_not_fit_the_strategy_is_refused_by_the_api(c: TestCluster) {
    let sim = Vcsim::start(1);
    let dispatchers: Api<OSDispatcher> = c.api();
    // Strategy template, but the image only has an ISO.
    let mut spec = vsphere_spec(&sim);
    spec.strategy = osprov::api::VsphereStrategy::Template;
    let s = refused(&dispatchers, spec).await;
    assert!(
        s.message.contains("`template` with strategy template"),
        "{}",
        s.message
    );
    // And an iso dispatcher whose image has only a template.
    let mut spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE)]);
    spec.strategy = osprov::api::VsphereStrategy::Iso;
    refused(&dispatchers, spec).await;
}

async fn a_request_deleted_mid_way_leaves_the_vm_ready_for_the_next_one(c: TestCluster) {
    let sim = Vcsim::start_with(2, 0, &[TEMPLATE]);
    account(&c).await;
    let ctl = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let hosts: Api<ManagedHost> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE), ("debian-12", TEMPLATE)]);
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    eventually(30, "VM1 mirrored", || async {
        hosts.get(HOST).await.ok().filter(|h| h.status.is_some())
    })
    .await;

    // The controller dies mid-way; the request is deleted while none runs.
    create(&requests, &once("r1", HOST, "ubuntu-24.04")).await;
    eventually(30, "the template's disk copied", || async {
        (sim.count("CopyVirtualDisk_Task") >= 1).then_some(())
    })
    .await;
    ctl.stop().await;
    requests
        .delete("r1", &Default::default())
        .await
        .expect("delete r1");
    let _ctl = controller(&c);
    eventually(60, "r1 gone", || async {
        requests.get_opt("r1").await.ok()?.is_none().then_some(())
    })
    .await;

    // The VM does not stay busy: the next request for it goes through.
    create(&requests, &once("r2", HOST, "debian-12")).await;
    let r = wait_phase(&requests, "r2", Phase::Succeeded, 90).await;
    let soap = sim.client();
    let after = vm(&soap, VM).await;
    let uid = r.metadata.uid.clone().expect("uid");
    assert_eq!(after.extra(keys::OS), Some("debian-12"));
    assert_eq!(after.extra(keys::PROGRESS), Some("done"));
    assert_eq!(after.power, "poweredOn");
    assert_eq!(after.disks.len(), 1, "{:?}", after.disks);
    let disk = after.disks[0].file.clone().unwrap_or_default();
    assert!(disk.contains(&uid.to_lowercase()), "r2's copy: {disk}");

    // A mark left behind by a request that is gone (its controller died after the request was
    // released, before its worker finished): the next discovery finishes it, so the VM does not
    // refuse every later request as busy.
    let vm0 = vm(&soap, "DC0_C0_RP0_VM0").await;
    let moref = vm0.moref.clone().expect("moref");
    let marks: String = [
        ("osprov.token", "0f0f0f0f-gone/1/1"),
        ("osprov.os", "ubuntu-24.04"),
        ("osprov.progress", "recorded"),
        (
            "osprov.disk",
            "[LocalDS_0] DC0_C0_RP0_VM0/osprov-0f0f0f0f-gone-1-1.vmdk",
        ),
        ("osprov.previousPower", "poweredOn"),
    ]
    .iter()
    .map(|(k, v)| {
        format!(
            "<extraConfig><key>{k}</key><value xsi:type=\"xsd:string\">{v}</value></extraConfig>"
        )
    })
    .collect();
    soap.call(&format!(
        "<ReconfigVM_Task xmlns=\"urn:vim25\">{}<spec>{marks}</spec></ReconfigVM_Task>",
        moref.xml("_this")
    ))
    .await
    .expect("reconfigure");
    eventually(10, "the orphan mark on VM0", || async {
        let v = vm(&soap, "DC0_C0_RP0_VM0").await;
        (v.extra(keys::PROGRESS) == Some("recorded")).then_some(())
    })
    .await;
    create(&requests, &once("r3", "dc0-c0-rp0-vm0", "ubuntu-24.04")).await;
    wait_phase(&requests, "r3", Phase::Succeeded, 90).await;
    let v = vm(&soap, "DC0_C0_RP0_VM0").await;
    assert_eq!(v.extra(keys::OS), Some("ubuntu-24.04"));
    assert_eq!(v.power, "poweredOn");
}

/// Create a dispatcher with `spec`, which the API must refuse with a 422; its Status.
async fn refused(
    dispatchers: &Api<OSDispatcher>,
    spec: osprov::api::VsphereSpec,
) -> kube::core::Status {
    let err = dispatchers
        .create(
            &PostParams::default(),
            &vsphere_dispatcher("vc", spec, "1s"),
        )
        .await
        .expect_err("refused");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            *s
        }
        other => panic!("{other:?}"),
    }
}

async fn a_record_lost_mid_swap_ends_the_attempt_without_repeating_a_step(c: TestCluster) {
    let sim = Vcsim::start_with(2, 0, &[TEMPLATE]);
    account(&c).await;
    let ctl = controller(&c);
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    let spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE)]);
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    create(&requests, &request("r1", HOST, "ubuntu-24.04")).await;
    // The controller dies once the copy was asked for; the record goes while it is down.
    eventually(30, "the template's disk copied", || async {
        (sim.count("CopyVirtualDisk_Task") >= 1).then_some(())
    })
    .await;
    let name = record_name(&requests, "r1").await;
    ctl.stop().await;
    let steps = |sim: &Vcsim| {
        (
            sim.count("CopyVirtualDisk_Task"),
            sim.count("PowerOffVM_Task"),
            sim.count("ReconfigVM_Task"),
        )
    };
    let before = steps(&sim);
    lose_record(&secrets, &name).await;
    let _ctl = controller(&c);
    let message = wait_record_lost(&requests, "r1").await;
    assert!(message.contains("deleted"), "{message}");
    let after = steps(&sim);
    assert_eq!(after, before, "no step of the swap was sent again");
    assert!(
        after.0 == 1 && after.1 <= 1 && after.2 <= 1,
        "(copies, power-offs, reconfigures) = {after:?}"
    );
}

/// The host's configuration is on the VM as cloud-init's VMware datasource keys before the
/// template's disk is copied, so the copy's first boot reads it.
async fn the_copied_disk_boots_with_the_configuration_in_guestinfo(c: TestCluster) {
    let sim = Vcsim::start_with(2, 0, &[TEMPLATE]);
    account(&c).await;
    let _ctl = controller(&c);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("vm1-user-data".into());
    secret.string_data = Some([("userData".to_string(), "#cloud-config\n".to_string())].into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let dispatchers: Api<OSDispatcher> = c.api();
    let spec = template_spec(&sim, &[("ubuntu-24.04", TEMPLATE)]);
    create(&dispatchers, &vsphere_dispatcher("vc", spec, "1s")).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut r = once("r1", HOST, "ubuntu-24.04");
    r.spec.user_data = Some(osprov::api::ConfigSecretRef {
        name: "vm1-user-data".into(),
        key: None,
    });
    r.spec.hostname = Some("web-1".into());
    create(&requests, &r).await;
    wait_phase(&requests, "r1", Phase::Succeeded, 60).await;
    let after = vm(&sim.client(), VM).await;
    let decode = |k: &str| {
        use base64::Engine;
        let v = after.extra(k).unwrap_or_default();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    };
    assert_eq!(decode("guestinfo.userdata"), "#cloud-config\n");
    assert!(
        decode("guestinfo.metadata").contains("local-hostname: web-1"),
        "{}",
        decode("guestinfo.metadata")
    );
    assert_eq!(after.extra("guestinfo.metadata.encoding"), Some("base64"));
}

/// vcsim's call count once it has not changed for half a second (at most 10 s).
async fn settled(sim: &Vcsim) -> usize {
    let mut last = sim.total();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sim.total();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!(
        "vcsim kept hearing calls after the controller stopped: {:?}",
        sim.snapshot()
    );
}
