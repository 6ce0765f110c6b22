//! The libvirt adapter against a real hypervisor: libvirtd (`qemu:///system`, started by
//! `scripts/test.sh`) driving QEMU with software emulation. A tiny domain with a `qemu-img`
//! disk in a directory pool is reprovisioned through the real controller:
//! - `image`: the running domain's live XML must show the fresh volume as its root disk;
//! - `iso`: QEMU must be started with the ISO on the CD-ROM and the callback URL as an SMBIOS
//!   type 11 string (read from its command line), and after the callback the ISO is ejected from
//!   the running QEMU and the definition restored.
//!
//! `scripts/test.sh` installs libvirtd and QEMU from Debian, starts virtlogd and libvirtd, and
//! sets `OSPROV_REQUIRE_QEMU=1`,
//! so in CI a machine that cannot run them fails this test. Elsewhere the test prints why it
//! cannot run (no libvirtd, no QEMU) and returns.
#![cfg(feature = "libvirt")]
mod cluster;
mod harness;
mod libvirt_support;
mod support;

use cluster::{Backend, TestCluster};
use harness::*;
use kube::api::Api;
use libvirt_support::{lab_spec, libvirt_dispatcher};
use osprov::adapter::libvirt::xml::{self, Progress, Record};
use osprov::adapter::libvirt::{installer, shared_connection};
use osprov::api::{DispatcherState, LibvirtStrategy, OSDispatcher, OSProvisioningRequest, Phase};
use std::path::Path;
use std::sync::Arc;
use virt::connect::Connect;

const URI: &str = "qemu:///system";

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    for (bin, what) in [
        ("/usr/sbin/libvirtd", "libvirtd (libvirt-daemon)"),
        ("/usr/bin/qemu-system-x86_64", "QEMU (qemu-system-x86)"),
        ("/usr/bin/qemu-img", "qemu-img (qemu-utils)"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{what} is not installed ({bin})"));
        }
    }
    None
}

fn pool_xml(name: &str, dir: &Path) -> String {
    format!(
        "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
        dir.display()
    )
}

fn domain_xml(name: &str, disk: &str) -> String {
    // TCG (type qemu) needs no /dev/kvm; no network, no graphics, 64 MiB.
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
         <memballoon model='none'/></devices></domain>"
    )
}

/// A directory pool with an image and a domain's disk, and the running domain; removed on drop.
struct Lab {
    conn: Connect,
    pool: String,
    domain: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn set_up(tag: &str) -> Result<Lab, String> {
        let conn = shared_connection(URI, None).map_err(|e| format!("connecting to {URI}: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // QEMU runs as libvirt's unprivileged user: it must reach the pool directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let pool_name = format!("osprov-{tag}");
        let pool = conn
            .define_storage_pool_xml(&pool_xml(&pool_name, dir.path()), 0)
            .map_err(|e| format!("defining the pool: {e}"))?;
        pool.create(0)
            .map_err(|e| format!("starting the pool: {e}"))?;
        let lab = Lab {
            conn: conn.clone(),
            pool: pool_name,
            domain: format!("osprov-{tag}-vm"),
            dir,
        };
        for (vol, format) in [
            ("tiny-os.qcow2", "qcow2"),
            ("vm.qcow2", "qcow2"),
            ("installer.iso", "raw"),
        ] {
            let xml = xml::volume_xml(vol, 16 << 20, Some(format));
            virt::storage_vol::StorageVol::create_xml(&pool, &xml, 0)
                .map_err(|e| format!("creating volume {vol}: {e}"))?;
        }
        let disk = lab.dir.path().join("vm.qcow2");
        let d = conn
            .define_domain_xml(&domain_xml(&lab.domain, &disk.display().to_string()))
            .map_err(|e| format!("defining the domain: {e}"))?;
        d.create()
            .map_err(|e| format!("starting the domain under QEMU: {e}"))?;
        Ok(lab)
    }

    /// The running domain's root disk (live XML), whether it runs, and osprov's record.
    fn live(&self) -> (String, bool, Option<Record>) {
        let d = self
            .conn
            .lookup_domain_by_name(&self.domain)
            .expect("domain");
        let live = d.xml_desc(0).expect("live xml");
        let disk = match xml::root_disk(&live, None).expect("root disk").source {
            xml::DiskSource::File(p) => p,
            xml::DiskSource::Volume { volume, .. } => volume,
        };
        let record = d
            .metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(xml::NAMESPACE),
                virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
            )
            .ok()
            .map(|x| Record::parse(&x).expect("record"));
        (disk, d.is_active().unwrap_or(false), record)
    }

    fn volumes(&self) -> Vec<String> {
        let pool = self
            .conn
            .lookup_storage_pool_by_name(&self.pool)
            .expect("pool");
        let _ = pool.refresh(0);
        let mut v = pool.list_volumes().expect("volumes");
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(d) = self.conn.lookup_domain_by_name(&self.domain) {
            let _ = d.destroy();
            let _ = d.undefine();
        }
        if let Ok(p) = self.conn.lookup_storage_pool_by_name(&self.pool) {
            if let Ok(vols) = p.list_all_volumes(0) {
                for v in vols {
                    let _ = v.delete(0);
                }
            }
            let _ = p.destroy();
            let _ = p.undefine();
        }
    }
}

/// The lab, or `None` (with the reason printed) where QEMU cannot run and CI does not require it.
async fn lab_or_skip(test: &str) -> Option<Arc<Lab>> {
    let required = std::env::var("OSPROV_REQUIRE_QEMU").is_ok_and(|v| v == "1");
    if let Some(why) = missing() {
        assert!(!required, "OSPROV_REQUIRE_QEMU=1 but {why}");
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    match tokio::task::spawn_blocking(move || Lab::set_up(&tag)).await {
        Ok(Ok(lab)) => Some(Arc::new(lab)),
        Ok(Err(why)) => {
            assert!(
                !required,
                "OSPROV_REQUIRE_QEMU=1 but libvirt/QEMU cannot run here: {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            None
        }
        Err(e) => panic!("setting the lab up panicked: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_domain_boots_from_the_fresh_volume() {
    let Some(lab) = lab_or_skip("a_qemu_domain_boots_from_the_fresh_volume").await else {
        return;
    };
    let c = TestCluster::start(Backend::Embedded).await;
    let _ctl = RunningController::start(
        c.client.clone(),
        fast_settings_in(&c.ns),
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    );
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let spec = lab_spec(
        &lab.domain,
        &lab.pool,
        ("tiny-os", "tiny-os.qcow2"),
        LibvirtStrategy::Image,
    );
    create(&dispatchers, &libvirt_dispatcher("qemu", spec, "2s")).await;
    eventually(60, "dispatcher Ready", || async {
        let d = dispatchers.get("qemu").await.ok()?;
        (d.status?.state == Some(DispatcherState::Ready)).then_some(())
    })
    .await;
    let host = lab.domain.clone();
    create(&requests, &request("r1", &host, "tiny-os")).await;
    let r = wait_phase(&requests, "r1", Phase::Succeeded, 120).await;
    let token = r
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("token");
    let l = lab.clone();
    let ((disk, active, record), volumes) =
        tokio::task::spawn_blocking(move || (l.live(), l.volumes()))
            .await
            .expect("read back");
    let fresh =
        osprov::adapter::libvirt::steps::target_volume(&lab.domain, &token, "tiny-os.qcow2");
    assert_eq!(
        disk,
        lab.dir.path().join(&fresh).display().to_string(),
        "QEMU runs the fresh volume"
    );
    assert!(active, "the domain runs");
    let mut want = vec![
        fresh.clone(),
        "installer.iso".to_string(),
        "tiny-os.qcow2".to_string(),
    ];
    want.sort();
    assert_eq!(volumes, want, "the old disk is gone");
    let record = record.expect("osprov's record");
    assert_eq!(
        (record.os.as_deref(), record.progress),
        (Some("tiny-os"), Some(Progress::Done))
    );
}

/// QEMU's command line for the running domain `name` (libvirt's pid file, then `/proc`).
fn qemu_cmdline(name: &str) -> Option<String> {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).ok()?;
    let raw = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_domain_boots_the_installer_iso_and_is_restored_after_the_callback() {
    let test = "a_qemu_domain_boots_the_installer_iso_and_is_restored_after_the_callback";
    let Some(lab) = lab_or_skip(test).await else {
        return;
    };
    osprov::controller::settings::init_logging(
        &std::env::var("OSPROV_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        osprov::controller::settings::LogFormat::Text,
    );
    let c = TestCluster::start(Backend::Embedded).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let settings = osprov::controller::settings::Settings {
        callback_addr: osprov::controller::settings::MetricsAddr(Some(addr)),
        ..fast_settings_in(&c.ns)
    };
    let _ctl = RunningController::start(
        c.client.clone(),
        settings,
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    );
    let dispatchers: Api<OSDispatcher> = c.api();
    let requests: Api<OSProvisioningRequest> = c.api();
    let spec = lab_spec(
        &lab.domain,
        &lab.pool,
        ("tiny-installer", "installer.iso"),
        LibvirtStrategy::Iso,
    );
    create(&dispatchers, &libvirt_dispatcher("qemu", spec, "2s")).await;
    eventually(60, "dispatcher Ready", || async {
        let d = dispatchers.get("qemu").await.ok()?;
        (d.status?.state == Some(DispatcherState::Ready)).then_some(())
    })
    .await;
    let definition = |flags: u32| {
        let l = lab.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let d = l.conn.lookup_domain_by_name(&l.domain).expect("domain");
                (d.xml_desc(flags).expect("xml"), d.id())
            })
            .await
            .expect("read back")
        }
    };
    let (_, id_before) = definition(0).await;
    let iso = lab.dir.path().join("installer.iso").display().to_string();
    // The request carries configuration of its own: it goes on a config drive.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = c.api();
    let user_data = "#cloud-config\npackages: [htop]\n";
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("r1-user-data".into());
    secret.string_data = Some([("userData".to_string(), user_data.to_string())].into());
    create(&secrets, &secret).await;
    let mut r = request("r1", &lab.domain, "tiny-installer");
    r.spec.max_attempts = Some(1);
    r.spec.user_data = Some(osprov::api::ConfigSecretRef {
        name: "r1-user-data".into(),
        key: None,
    });
    r.spec.hostname = Some("tiny-1".into());
    create(&requests, &r).await;
    let (live, id) = eventually(120, "QEMU restarted with the installer ISO", || async {
        let (live, id) = definition(0).await;
        (id.is_some() && id != id_before && installer::attached(&live, "hdc", &iso).ok()?)
            .then_some((live, id))
    })
    .await;
    let callback = installer::callback_url(&live).expect("callback URL in the live definition");
    assert!(
        callback.starts_with(&format!("http://{addr}/callback/")),
        "{callback}"
    );
    // The pid file and /proc can lag the live definition for a moment (a process still being
    // exec'd has an empty command line): read until QEMU's own arguments are there.
    let cmdline = eventually(20, "QEMU's command line", || async {
        qemu_cmdline(&lab.domain).filter(|c| c.contains("qemu-system"))
    })
    .await;
    assert!(
        cmdline.contains(&format!(
            "type=11,value={}{callback}",
            installer::CALLBACK_PREFIX
        )),
        "QEMU got the callback as an SMBIOS OEM string: {cmdline}"
    );
    assert!(cmdline.contains(&iso), "QEMU has the ISO: {cmdline}");
    wait_phase(&requests, "r1", Phase::Provisioning, 10).await;
    // The config drive: a volume of the pool on a CD-ROM of its own, which QEMU opened, holding
    // the user-data, the hostname and the same callback URL.
    let token = requests
        .get("r1")
        .await
        .expect("r1")
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("token");
    let drive_name = format!(
        "{}-osprov-cidata-{}.iso",
        lab.domain,
        osprov::ident::short_hash(&token)
    );
    let drive = lab.dir.path().join(&drive_name).display().to_string();
    assert!(
        installer::attached(&live, "hdd", &drive).expect("live XML"),
        "{live}"
    );
    assert!(
        cmdline.contains(&drive),
        "QEMU has the config drive: {cmdline}"
    );
    let read = |file: &str| {
        let out = std::process::Command::new("isoinfo")
            .args(["-R", "-i", &drive, "-x", &format!("/{file}")])
            .output()
            .expect("isoinfo (genisoimage)");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(read("user-data"), user_data);
    assert!(read("meta-data").contains("local-hostname: tiny-1"));
    assert_eq!(read("osprov-callback").trim(), callback);
    let blkid = std::process::Command::new("blkid")
        .args(["-o", "value", "-s", "LABEL", &drive])
        .output()
        .expect("blkid");
    assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "cidata");

    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(&callback)
        .body(r#"{"status":"succeeded"}"#)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(status, 200);
    wait_phase(&requests, "r1", Phase::Succeeded, 60).await;
    let (live, id_after) = definition(0).await;
    // The guest keeps running; should its tray refuse the eject, osprov restarts it without the
    // medium instead (see `Step::Detach`), so either way it runs without the installer.
    assert!(
        id_after.is_some(),
        "the installed guest runs ({id:?} before)"
    );
    assert!(
        !installer::attached(&live, "hdc", &iso).expect("live XML")
            && !live.contains(&format!("file='{iso}'")),
        "ejected from the running QEMU: {live}"
    );
    let (inactive, _) = definition(virt::sys::VIR_DOMAIN_XML_INACTIVE).await;
    assert!(installer::callback_url(&inactive).is_none(), "{inactive}");
    assert!(
        !lab.volumes().contains(&drive_name),
        "the config drive is deleted with the operation"
    );
    assert!(!inactive.contains("device='cdrom'"), "{inactive}");
    assert!(!inactive.contains("<boot dev='cdrom'/>"), "{inactive}");
    let (_, _, record) = {
        let l = lab.clone();
        tokio::task::spawn_blocking(move || l.live())
            .await
            .expect("record")
    };
    let record = record.expect("osprov's record");
    assert_eq!(
        (record.os.as_deref(), record.progress),
        (Some("tiny-installer"), Some(Progress::Done))
    );
}

/// Two dispatchers on one libvirt URI in one controller (or two tests in one process) each get
/// lifecycle events. libvirt refuses a second registration of the same callback on one
/// connection ("event callback already tracked"), so each subscription needs a connection of
/// its own; before, the second one failed for as long as the first lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_to_one_libvirt_uri_both_get_events() {
    use futures::StreamExt;
    use osprov::adapter::Adapter;
    let test = "two_subscriptions_to_one_libvirt_uri_both_get_events";
    let Some(lab) = lab_or_skip(test).await else {
        return;
    };
    let adapter = |names: Vec<String>| {
        osprov::adapter::libvirt::LibvirtAdapter::new(osprov::adapter::libvirt::LibvirtConfig {
            uri: URI.into(),
            credentials: None,
            names,
            labelled: false,
            image_pool: lab.pool.clone(),
            images: Vec::new(),
            root_disk: None,
            strategy: LibvirtStrategy::Image,
            callback_base: None,
            callback_timeout: std::time::Duration::from_secs(60),
        })
    };
    let (a, b) = (
        adapter(vec![lab.domain.clone()]),
        adapter(vec![lab.domain.clone()]),
    );
    let mut first = a.subscribe().await.expect("the first subscription");
    let mut second = b
        .subscribe()
        .await
        .expect("a second subscription to the same URI");
    let l = lab.clone();
    tokio::task::spawn_blocking(move || {
        let d = l.conn.lookup_domain_by_name(&l.domain).expect("domain");
        d.destroy().expect("power the domain off");
    })
    .await
    .expect("power off");
    for (name, stream) in [("first", &mut first), ("second", &mut second)] {
        tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("the {name} subscription saw no event in 30 s"))
            .unwrap_or_else(|| panic!("the {name} subscription ended"));
    }
}
