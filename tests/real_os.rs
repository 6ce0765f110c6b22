//! A real VM that changes OS: under the real libvirtd and QEMU (software emulation), a domain
//! boots OS "a", osprov reprovisions it to OS "b" through the libvirt adapter's `iso` strategy,
//! and the VM's own serial console shows what happened:
//! 1. the installer (a real bootable ISO: ISOLINUX, a Debian kernel, a busybox installer) boots
//!    once, finds the request's config drive by its label `cidata`, writes OS "b" to the disk with
//!    the hostname from the request's meta-data and the callback URL from the drive, and powers
//!    the machine off;
//! 2. osprov restores the domain's definition and starts the installed OS;
//! 3. OS "b" boots, prints its name and hostname, and reports its first boot to the callback —
//!    the request is `Succeeded` only then. Nothing in the test posts a callback.
//!
//! The guests are built from Debian packages by `tests/guests/build.sh` (cached under
//! `target/guests/`). `scripts/test.sh` installs the build tools and sets
//! `OSPROV_REQUIRE_QEMU=1`, so in CI a machine that cannot run this fails it. Elsewhere the test
//! prints why it cannot run and returns.
#![cfg(feature = "libvirt")]
mod cluster;
mod harness;
mod libvirt_support;
mod redfish_support;
mod support;

use cluster::TestCluster;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use libvirt_support::{lab_spec, libvirt_dispatcher};
use osprov::adapter::libvirt::shared_connection;
use osprov::adapter::libvirt::xml;
use osprov::api::{
    ConfigMedium, ConfigSecretRef, DispatcherState, LibvirtSpec, LibvirtStrategy, ManagedHost,
    OSDispatcher, OSProvisioningRequest, Phase, RedfishImage,
};
use redfish_support::{
    create_bmc_secrets, redfish_dispatcher, redfish_spec, Emulator, IsoServer, PASSWORD,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use virt::connect::Connect;

const URI: &str = "qemu:///system";

on_both_backends!(
    a_vm_boots_os_a_is_reprovisioned_and_boots_os_b_with_its_hostname,
    through_redfish_virtual_media_a_vm_boots_os_b_with_its_hostname,
    through_one_redfish_virtual_medium_a_per_operation_boot_iso_installs_os_b,
    a_cloud_image_of_os_b_boots_with_its_seed_and_reports_its_hostname,
);

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    for (bin, what) in [
        ("/usr/sbin/libvirtd", "libvirtd (libvirt-daemon)"),
        ("/usr/bin/qemu-system-x86_64", "QEMU (qemu-system-x86)"),
        ("/usr/bin/xorriso", "xorriso"),
        ("/usr/bin/syslinux", "syslinux"),
        ("/usr/bin/mcopy", "mtools"),
        ("/usr/sbin/mkfs.vfat", "dosfstools"),
        ("/usr/bin/cpio", "cpio"),
        ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{what} is not installed ({bin})"));
        }
    }
    if !Path::new("/var/run/libvirt/libvirt-sock").exists() {
        return Some("libvirtd is not running".into());
    }
    None
}

/// The guests, built once per version of the build script.
fn guests() -> Result<PathBuf, String> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = built.as_ref() {
        return Ok(dir.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/guests/build.sh");
    let text = std::fs::read_to_string(&script).map_err(|e| e.to_string())?;
    let dir = root
        .join("target/guests")
        .join(osprov::ident::short_hash(&text));
    if !dir.join("installer-b.iso").exists() {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "building the guests failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    *built = Some(dir.clone());
    Ok(dir)
}

/// A directory pool holding the VM's disk (OS "a") and the installer of OS "b", and the domain
/// running OS "a" with its serial console in a file; removed on drop.
struct Lab {
    conn: Connect,
    pool: String,
    domain: String,
    dir: tempfile::TempDir,
}

impl Lab {
    /// The domain's persistent definition.
    async fn inactive_xml(self: &Arc<Self>) -> String {
        let l = self.clone();
        tokio::task::spawn_blocking(move || {
            let d = l.conn.lookup_domain_by_name(&l.domain).expect("domain");
            d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).expect("xml")
        })
        .await
        .expect("read back")
    }

    fn uuid(&self) -> String {
        self.conn
            .lookup_domain_by_name(&self.domain)
            .and_then(|d| d.uuid_string())
            .expect("the domain's UUID")
    }

    fn console_path(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn console(&self) -> String {
        std::fs::read(self.console_path())
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn set_up(tag: &str, guests: &Path) -> Result<Lab, String> {
        use std::os::unix::fs::PermissionsExt;
        let conn = shared_connection(URI, None).map_err(|e| format!("connecting to {URI}: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // QEMU runs as libvirt's unprivileged user: it must reach the pool and write the console.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        for (from, to) in [
            ("os-a.img", "vm.img"),
            ("installer-b.iso", "installer-b.iso"),
            ("os-b.img", "os-b.img"),
        ] {
            let path = dir.path().join(to);
            std::fs::copy(guests.join(from), &path).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| e.to_string())?;
        }
        let pool = format!("osprov-real-{tag}");
        let p = conn
            .define_storage_pool_xml(
                &format!(
                    "<pool type='dir'><name>{pool}</name><target><path>{}</path></target></pool>",
                    dir.path().display()
                ),
                0,
            )
            .map_err(|e| format!("defining the pool: {e}"))?;
        p.create(0).map_err(|e| format!("starting the pool: {e}"))?;
        let lab = Lab {
            conn: conn.clone(),
            pool,
            domain: format!("osprov-real-{tag}"),
            dir,
        };
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/></features>\
             <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
             <interface type='user'><model type='virtio'/></interface>\
             <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>\
             <memballoon model='none'/></devices></domain>",
            name = lab.domain,
            disk = lab.dir.path().join("vm.img").display(),
            console = lab.console_path().display(),
        );
        let d = conn
            .define_domain_xml(&xml)
            .map_err(|e| format!("defining the domain: {e}"))?;
        d.create()
            .map_err(|e| format!("starting the domain under QEMU: {e}"))?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(d) = self.conn.lookup_domain_by_name(&self.domain) {
            let _ = d.destroy();
            let _ = d.undefine();
        }
        if let Ok(p) = self.conn.lookup_storage_pool_by_name(&self.pool) {
            let _ = p.destroy();
            let _ = p.undefine();
        }
    }
}

/// The lab, or `None` (with the reason printed) where QEMU cannot run and CI does not require it.
async fn lab_or_skip() -> Option<Arc<Lab>> {
    let required = std::env::var("OSPROV_REQUIRE_QEMU").is_ok_and(|v| v == "1");
    let lab = tokio::task::spawn_blocking(move || {
        if let Some(why) = missing() {
            return Err(why);
        }
        let guests = guests()?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        Lab::set_up(&tag, &guests)
    })
    .await
    .expect("set-up thread");
    match lab {
        Ok(lab) => Some(Arc::new(lab)),
        Err(why) => {
            assert!(!required, "OSPROV_REQUIRE_QEMU=1 but {why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// Two labs at once would share two cores between two emulated machines: one at a time.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn a_vm_boots_os_a_is_reprovisioned_and_boots_os_b_with_its_hostname(c: TestCluster) {
    change_os(c, Via::Libvirt).await
}

async fn through_redfish_virtual_media_a_vm_boots_os_b_with_its_hostname(c: TestCluster) {
    change_os(c, Via::Redfish).await
}

async fn a_cloud_image_of_os_b_boots_with_its_seed_and_reports_its_hostname(c: TestCluster) {
    change_os(c, Via::LibvirtImage).await
}

async fn through_one_redfish_virtual_medium_a_per_operation_boot_iso_installs_os_b(c: TestCluster) {
    change_os(c, Via::RedfishBootIso).await
}

/// Which adapter drives the VM.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Via {
    /// The libvirt adapter's `iso` strategy, straight at libvirtd.
    Libvirt,
    /// The libvirt adapter's `image` strategy: OS "b"'s disk image cloned in place of the VM's
    /// disk, booted with a NoCloud seed it reads at first boot, as cloud images do (no installer).
    LibvirtImage,
    /// The Redfish adapter, through sushy-tools' libvirt driver in front of the same libvirtd
    /// (how Metal3 and Ironic test virtual media): the installer ISO on the `Cd` medium, the
    /// config drive on the `Floppy` one.
    Redfish,
    /// The same BMC with one medium: a per-operation boot ISO (the installer grown with the
    /// configuration at its root and `ds=nocloud;s=/cdrom/` on its kernel line) in the `Cd`.
    RedfishBootIso,
}

/// What a Redfish run keeps alive: the BMC emulator and the server of the installer ISO.
struct Bmc {
    emu: Emulator,
    _iso: IsoServer,
}

/// This machine's address as both the VM (through QEMU's user networking) and the BMC emulator
/// reach it: the source address of its default route.
fn host_address() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    // A UDP "connect" sends nothing; it only picks the route and so the source address.
    probe
        .connect("192.0.2.255:9")
        .or_else(|_| probe.connect("10.255.255.255:9"))
        .expect("a route out of loopback (the VM reaches the controller through it)");
    probe.local_addr().expect("local address").ip()
}

/// Create the dispatcher for `via` and wait until it is Ready; returns its name and, for
/// Redfish, the emulator.
async fn dispatcher(c: &TestCluster, lab: &Lab, via: Via, guests: &Path) -> (String, Option<Bmc>) {
    let dispatchers: Api<OSDispatcher> = c.api();
    let (name, bmc) = match via {
        Via::Libvirt | Via::LibvirtImage => {
            let (volume, strategy) = match via {
                Via::LibvirtImage => ("os-b.img", LibvirtStrategy::Image),
                _ => ("installer-b.iso", LibvirtStrategy::Iso),
            };
            let spec = LibvirtSpec {
                callback_timeout: Some("300s".into()),
                ..lab_spec(&lab.domain, &lab.pool, ("os-b", volume), strategy)
            };
            create(&dispatchers, &libvirt_dispatcher("kvm", spec, "2s")).await;
            ("kvm", None)
        }
        Via::Redfish | Via::RedfishBootIso => {
            let emu = Emulator::start_libvirt(URI, &lab.pool, &[lab.uuid()]).await;
            let iso = IsoServer::serving(Some(guests.join("installer-b.iso"))).await;
            create_bmc_secrets(&c.api(), &emu, PASSWORD).await;
            let mut spec = redfish_spec(&emu, &iso, true);
            spec.images = vec![RedfishImage {
                name: "os-b".into(),
                url: iso.url("installer-b"),
                checksum: None,
                kernel_args: (via == Via::RedfishBootIso).then(|| "ds=nocloud;s=/cdrom/".into()),
            }];
            spec.config_medium = match via {
                Via::RedfishBootIso => Some(ConfigMedium::BootIso),
                _ => Some(ConfigMedium::SecondMedium),
            };
            spec.callback_timeout = Some("300s".into());
            create(&dispatchers, &redfish_dispatcher("bmc", spec)).await;
            ("bmc", Some(Bmc { emu, _iso: iso }))
        }
    };
    eventually(60, "dispatcher Ready", || async {
        let d = dispatchers.get(name).await.ok()?;
        (d.status?.state == Some(DispatcherState::Ready)).then_some(())
    })
    .await;
    (name.to_string(), bmc)
}

async fn change_os(c: TestCluster, via: Via) {
    let _one = ONE_VM.lock().await;
    let Some(lab) = lab_or_skip().await else {
        return;
    };
    let t0 = Instant::now();
    eventually(120, "OS a booted", || async {
        lab.console()
            .contains("osprov-os: a hostname: unnamed")
            .then_some(())
    })
    .await;
    let booted_a = t0.elapsed();
    let port = free_port();
    // QEMU's user networking shows the host's loopback to the guest as 10.0.2.2; a BMC fetching
    // the config drive from the same base URL needs an address both reach.
    let (bind, url_host) = match via {
        Via::Libvirt | Via::LibvirtImage => (
            std::net::IpAddr::from([127, 0, 0, 1]),
            "10.0.2.2".to_string(),
        ),
        Via::Redfish | Via::RedfishBootIso => (
            std::net::IpAddr::from([0, 0, 0, 0]),
            host_address().to_string(),
        ),
    };
    let settings = osprov::controller::settings::Settings {
        callback_addr: osprov::controller::settings::MetricsAddr(Some((bind, port).into())),
        callback_url: Some(format!("http://{url_host}:{port}")),
        ..fast_settings_in(&c.ns)
    };
    let _ctl = RunningController::start(
        c.client.clone(),
        settings,
        Arc::new(osprov::adapter::simulator::SimRegistry::default()),
    );
    let guests = guests().expect("the guests were built with the lab");
    let (_dispatcher, bmc) = dispatcher(&c, &lab, via, &guests).await;
    let secrets: Api<Secret> = c.api();
    let mut meta = Secret::default();
    meta.metadata.name = Some("tiny-meta".into());
    meta.string_data = Some([("metaData".to_string(), "rack: r7\n".to_string())].into());
    create(&secrets, &meta).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut r = request("to-b", &lab.domain, "os-b");
    r.spec.max_attempts = Some(1);
    r.spec.hostname = Some("tiny-1".into());
    r.spec.meta_data = Some(ConfigSecretRef {
        name: "tiny-meta".into(),
        key: None,
    });
    let t1 = Instant::now();
    create(&requests, &r).await;
    let written = match via {
        Via::LibvirtImage => "osprov-os: b configured from its seed",
        _ => "osprov-installer: wrote b",
    };
    until(&lab, &requests, 180, "OS b written", |console| {
        console.contains(written)
    })
    .await;
    let installed = t1.elapsed();
    // Until OS b itself reports, the request is not Succeeded.
    let st = requests.get("to-b").await.expect("request").status;
    assert_ne!(
        st.and_then(|s| s.phase),
        Some(Phase::Succeeded),
        "succeeded before the installed OS reported"
    );
    until(
        &lab,
        &requests,
        180,
        "OS b reported its first boot",
        |console| console.contains("osprov-os: b reported its first boot"),
    )
    .await;
    let done = wait_phase(&requests, "to-b", Phase::Succeeded, 30).await;
    let reported = t1.elapsed();
    let console = lab.console();
    assert!(
        console.contains("osprov-os: b hostname: tiny-1")
            && console.contains("osprov-os: b reported its first boot"),
        "{console}"
    );
    // One install, one boot of each OS: one power cycle for the request.
    let installs = usize::from(via != Via::LibvirtImage);
    for (line, n) in [
        ("osprov-installer: installing b", installs),
        ("osprov-os: a hostname", 1),
        ("osprov-os: b hostname", 1),
    ] {
        assert_eq!(console.matches(line).count(), n, "{line}: {console}");
    }
    let st = done.status.expect("status");
    assert_eq!(st.attempts, Some(1));
    let inactive = lab.inactive_xml().await;
    assert!(!inactive.contains("device='cdrom'"), "{inactive}");
    assert!(!inactive.contains("device='floppy'"), "{inactive}");
    match (&bmc, via) {
        (Some(bmc), Via::Redfish | Via::RedfishBootIso) => redfish_checks(&lab, bmc, via).await,
        _ => libvirt_checks(&lab, &inactive).await,
    }
    let from = match via {
        Via::RedfishBootIso => "configuration from the boot medium (/cdrom/)",
        Via::LibvirtImage => "osprov-os: b configured from its seed /dev/",
        _ => "configuration from /dev/",
    };
    assert!(console.contains(from), "{from}: {console}");
    let hosts: Api<ManagedHost> = c.api();
    eventually(30, "ManagedHost runs os-b", || async {
        let h = hosts.get(&lab.domain).await.ok()?;
        (h.status?.current_os.as_deref() == Some("os-b")).then_some(())
    })
    .await;
    eprintln!(
        "real OS run ({via:?}): OS a booted in {:.1}s; request → installer done {:.1}s → OS b \
         reported {:.1}s",
        booted_a.as_secs_f64(),
        installed.as_secs_f64(),
        reported.as_secs_f64()
    );
}

/// The libvirt adapter left the domain its own definition and deleted the drive's volume.
async fn libvirt_checks(lab: &Arc<Lab>, inactive: &str) {
    let l = lab.clone();
    let volumes = tokio::task::spawn_blocking(move || {
        let pool = l.conn.lookup_storage_pool_by_name(&l.pool).expect("pool");
        let _ = pool.refresh(0);
        pool.list_all_volumes(0)
            .expect("volumes")
            .iter()
            .filter_map(|v| v.name().ok())
            .collect::<Vec<String>>()
    })
    .await
    .expect("read back");
    assert!(
        !volumes.iter().any(|v| v.contains("cidata")),
        "the drive is deleted: {volumes:?}"
    );
    let record = xml::Record::parse(&inactive[inactive.find("<osprov:host").unwrap_or(0)..])
        .expect("record");
    assert_eq!(record.os.as_deref(), Some("os-b"));
}

/// Through the BMC: two resets (into the installer, then into the installed OS once the
/// installer powered off), both media ejected; libvirt's own log of the domain shows the QEMU
/// starts: OS a, the installer, OS b.
async fn redfish_checks(lab: &Lab, bmc: &Bmc, via: Via) {
    let floppy_inserts = bmc
        .emu
        .count("POST", "/VirtualMedia/Floppy/", ".InsertMedia");
    let expected = usize::from(via == Via::Redfish);
    assert_eq!(floppy_inserts, expected, "{}", bmc.emu.log_text());
    let resets = bmc.emu.count("POST", "ComputerSystem.Reset", "");
    assert_eq!(resets, 2, "{}", bmc.emu.log_text());
    let qemu_log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", lab.domain))
        .unwrap_or_default();
    assert_eq!(
        qemu_log.matches("starting up").count(),
        3,
        "QEMU starts: {qemu_log}"
    );
    let uuid = lab.uuid();
    for device in ["Cd", "Floppy"] {
        let media = bmc
            .emu
            .get(&format!("/redfish/v1/Systems/{uuid}/VirtualMedia/{device}"))
            .await;
        assert_ne!(media["Inserted"], true, "{device}: {media}");
    }
}

/// Wait until the console satisfies `check`; on timeout, panic with the console and the
/// request's status.
async fn until(
    lab: &Lab,
    requests: &Api<OSProvisioningRequest>,
    secs: u64,
    what: &str,
    check: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check(&lab.console()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let status = requests
        .get("to-b")
        .await
        .ok()
        .and_then(|r| r.status)
        .map(|s| serde_json::to_string(&s).unwrap_or_default());
    panic!(
        "timed out after {secs}s waiting for: {what}\nrequest: {status:?}\nconsole:\n{}",
        lab.console()
    );
}
