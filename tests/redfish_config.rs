//! A request's configuration through Redfish: the real controller against a real sushy-tools BMC,
//! on both API backends. The config drive goes in the BMC's second virtual media device (sushy's
//! `Floppy`, which takes USB stick images) as a URL on the controller's callback endpoint, the
//! installer ISO in the CD as before; the image URL no longer carries the callback (it is on the
//! drive). The test reads the drive from that URL as the BMC does and checks it with `blkid` and
//! `isoinfo` (Debian's `genisoimage`; required where `OSPROV_REQUIRE_CLOUD_INIT` is set, as in
//! CI), reports through the callback URL found on the drive, and checks that both media are
//! ejected, the drive URL is gone and the host was reset once.
//!
//! With the default `configMedium: BootIso` the BMC gets one medium: a real installer ISO (built
//! here by `xorriso` with ISOLINUX, GRUB menus, Rock Ridge and Joliet) grown by osprov with the
//! configuration at its root and the image's kernel arguments in both menus, served from the
//! controller while the operation runs. `isoinfo` reads it back through both name trees, the El
//! Torito boot record and the installer's own files unchanged.
// Talks to real third-party software: the full test tier only (see build.rs).
#![cfg(osprov_full_tests)]
mod cluster;
mod harness;
mod redfish_rig;
mod redfish_support;
mod support;

use cluster::TestCluster;
use harness::*;
use osprov::api::{ConfigMedium, ConfigSecretRef, Phase};
use redfish_rig::Rig;
use redfish_support::*;
use std::process::Command;

on_both_backends!(
    the_config_drive_rides_in_a_second_virtual_medium,
    the_configuration_rides_inside_a_per_operation_boot_iso,
);

async fn floppy(rig: &Rig) -> serde_json::Value {
    rig.emu
        .get(&format!(
            "/redfish/v1/Systems/{}/VirtualMedia/Floppy",
            system_uuid(0)
        ))
        .await
}

async fn the_config_drive_rides_in_a_second_virtual_medium(c: TestCluster) {
    let mut rig = Rig::start(c, 1, PASSWORD).await;
    rig.start_controller();
    create(
        &rig.secrets,
        &secret("node-0-config", &[("metaData", "rack: r7\n")]),
    )
    .await;
    let mut spec = rig.spec(true);
    spec.config_medium = Some(ConfigMedium::SecondMedium);
    rig.dispatcher(spec).await;
    rig.wait_hosts(1).await;
    let mut r = once("r0", "node-0", "ubuntu-24.04");
    r.spec.meta_data = Some(ConfigSecretRef {
        name: "node-0-config".into(),
        key: None,
    });
    r.spec.hostname = Some("node-0.example.org".into());
    create(&rig.requests, &r).await;
    let drive_url = eventually(60, "the drive inserted", || async {
        let f = floppy(&rig).await;
        (f["Inserted"] == true)
            .then(|| f["Image"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    assert!(
        drive_url.starts_with(&format!("http://{}/drive/", rig.callback))
            && drive_url.ends_with(".iso"),
        "{drive_url}"
    );
    let cd = eventually(60, "the installer inserted", || async {
        let cd = rig.media(0).await;
        (cd["Inserted"] == true).then_some(cd)
    })
    .await;
    let image = cd["Image"].as_str().unwrap_or_default();
    assert!(
        !image.contains("osprov_callback") && !image.contains("callback"),
        "the image URL carries no callback any more: {cd}"
    );
    eventually(30, "one reset", || async {
        (rig.resets(0) == 1).then_some(())
    })
    .await;

    // Read the drive as the BMC does.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let wrong = drive_url.replace("/drive/", "/drive/x");
    let refused = http.get(&wrong).send().await.expect("get").status();
    assert!(refused == 404 || refused == 401, "{refused}");
    let tampered = format!("{}x.iso", drive_url.trim_end_matches(".iso"));
    assert_eq!(http.get(&tampered).send().await.expect("get").status(), 401);
    let bytes = http
        .get(&drive_url)
        .send()
        .await
        .expect("drive")
        .bytes()
        .await
        .expect("body");
    // A BMC reading in pieces gets the same bytes.
    let part = http
        .get(&drive_url)
        .header("Range", "bytes=32768-34815")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.expect("part").as_ref(),
        &bytes[32768..34816],
        "the volume descriptor, as a range"
    );
    let Some(callback) = check_drive(&bytes) else {
        eprintln!("isoinfo/blkid missing: the drive is not checked and the test stops here");
        return;
    };
    assert!(
        callback.starts_with(&format!("http://{}/callback/", rig.callback)),
        "{callback}"
    );
    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&rig.requests, "r0", Phase::Succeeded, 60).await;
    assert_eq!(
        floppy(&rig).await["Inserted"],
        false,
        "the drive is ejected"
    );
    assert_eq!(rig.media(0).await["Inserted"], false, "the CD is ejected");
    assert_eq!(
        http.get(&drive_url).send().await.expect("get").status(),
        404,
        "the drive is gone with the operation"
    );
    assert_eq!(rig.resets(0), 1);
}

/// Check the drive with the standard tools; the callback URL on it. `None` where the tools are
/// missing and CI does not require them.
fn check_drive(bytes: &[u8]) -> Option<String> {
    let have = ["/usr/bin/isoinfo", "/usr/sbin/blkid"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !have {
        assert!(
            std::env::var_os("OSPROV_REQUIRE_CLOUD_INIT").is_none(),
            "OSPROV_REQUIRE_CLOUD_INIT is set but isoinfo or blkid is missing"
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drive.iso");
    std::fs::write(&path, bytes).expect("write");
    let p = path.to_str().expect("utf-8");
    let label = Command::new("blkid")
        .args(["-o", "value", "-s", "LABEL", p])
        .output()
        .expect("blkid");
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "cidata");
    let read = |f: &str| {
        let out = Command::new("isoinfo")
            .args(["-R", "-i", p, "-x", &format!("/{f}")])
            .output()
            .expect("isoinfo");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let meta = read("meta-data");
    assert!(
        meta.contains("local-hostname: node-0.example.org") && meta.contains("rack: r7"),
        "{meta}"
    );
    Some(read("osprov-callback").trim().to_string())
}

/// A real installer-shaped ISO built by `xorriso` (ISOLINUX boot record, an ISOLINUX and a GRUB
/// menu, a payload), or `None` where the tools are missing and CI does not require them.
fn installer_iso(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let isolinux = std::path::Path::new("/usr/lib/ISOLINUX/isolinux.bin");
    let tools = ["/usr/bin/xorriso", "/usr/bin/isoinfo"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !tools || !isolinux.exists() {
        assert!(
            std::env::var_os("OSPROV_REQUIRE_CLOUD_INIT").is_none(),
            "OSPROV_REQUIRE_CLOUD_INIT is set but xorriso, isoinfo or isolinux is missing"
        );
        return None;
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("isolinux")).expect("mkdir");
    std::fs::create_dir_all(tree.join("boot/grub")).expect("mkdir");
    std::fs::copy(isolinux, tree.join("isolinux/isolinux.bin")).expect("isolinux.bin");
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        "DEFAULT install\nLABEL install\n  KERNEL /vmlinuz\n  APPEND console=ttyS0 quiet\n",
    )
    .expect("write");
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        "menuentry install {\n  linux /vmlinuz quiet ---\n}\n",
    )
    .expect("write");
    std::fs::write(tree.join("payload.img"), vec![0x5a; 300_000]).expect("write");
    let iso = dir.join("installer.iso");
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "OSPROV_INSTALL",
            "-R",
            "-J",
        ])
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args([
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-o",
        ])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("xorriso");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(iso)
}

async fn the_configuration_rides_inside_a_per_operation_boot_iso(c: TestCluster) {
    let work = tempfile::tempdir().expect("tempdir");
    let Some(installer) = installer_iso(work.path()) else {
        eprintln!("SKIPPED: xorriso, isoinfo or isolinux is missing");
        return;
    };
    let mut rig = Rig::start(c, 1, PASSWORD).await;
    rig.iso = IsoServer::serving(Some(installer.clone())).await;
    rig.start_controller();
    create(
        &rig.secrets,
        &secret("node-0-config", &[("metaData", "rack: r7\n")]),
    )
    .await;
    let mut spec = rig.spec(true);
    assert_eq!(
        spec.config_medium, None,
        "the default medium is the boot ISO"
    );
    spec.images[0].kernel_args = Some("autoinstall ds=nocloud;s=/cdrom/".into());
    rig.dispatcher(spec).await;
    rig.wait_hosts(1).await;
    let mut r = once("r0", "node-0", "ubuntu-24.04");
    r.spec.meta_data = Some(ConfigSecretRef {
        name: "node-0-config".into(),
        key: None,
    });
    r.spec.hostname = Some("node-0.example.org".into());
    create(&rig.requests, &r).await;
    let cd = eventually(60, "the boot ISO inserted", || async {
        let cd = rig.media(0).await;
        (cd["Inserted"] == true).then_some(cd)
    })
    .await;
    let url = cd["Image"].as_str().unwrap_or_default().to_string();
    assert!(
        url.starts_with(&format!("http://{}/drive/", rig.callback)) && url.ends_with(".iso"),
        "the CD holds the controller's boot ISO: {cd}"
    );
    eventually(30, "one reset", || async {
        (rig.resets(0) == 1).then_some(())
    })
    .await;
    assert_ne!(floppy(&rig).await["Inserted"], true, "one medium only");

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let bytes = http
        .get(&url)
        .send()
        .await
        .expect("boot ISO")
        .bytes()
        .await
        .expect("body");
    let original = std::fs::read(&installer).expect("installer");
    assert!(bytes.len() > original.len(), "the ISO grew");
    let part = http
        .get(&url)
        .header("Range", "bytes=32768-34815")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.expect("part").as_ref(),
        &bytes[32768..34816]
    );
    let served = work.path().join("served.iso");
    std::fs::write(&served, &bytes).expect("write");
    let p = served.to_str().expect("utf-8");
    let read = |tree: &str, f: &str| {
        let out = Command::new("isoinfo")
            .args([tree, "-i", p, "-x", f])
            .output()
            .expect("isoinfo");
        out.stdout
    };
    let text = |tree: &str, f: &str| String::from_utf8_lossy(&read(tree, f)).into_owned();
    for tree in ["-R", "-J"] {
        let meta = text(tree, "/meta-data");
        assert!(
            meta.contains("local-hostname: node-0.example.org") && meta.contains("rack: r7"),
            "{tree}: {meta}"
        );
        assert!(
            text(tree, "/isolinux/isolinux.cfg")
                .contains("APPEND console=ttyS0 quiet autoinstall ds=nocloud;s=/cdrom/\n"),
            "{tree}"
        );
        assert!(
            text(tree, "/boot/grub/grub.cfg")
                .contains("linux /vmlinuz quiet autoinstall 'ds=nocloud;s=/cdrom/' ---"),
            "{tree}"
        );
        assert_eq!(read(tree, "/payload.img"), vec![0x5a; 300_000], "{tree}");
    }
    let info = Command::new("isoinfo")
        .args(["-d", "-i", p])
        .output()
        .expect("isoinfo");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Volume id: OSPROV_INSTALL") && info.contains("El Torito"),
        "{info}"
    );
    let callback = text("-R", "/osprov-callback").trim().to_string();
    assert!(
        callback.starts_with(&format!("http://{}/callback/", rig.callback)),
        "{callback}"
    );
    assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
    wait_phase(&rig.requests, "r0", Phase::Succeeded, 60).await;
    assert_eq!(rig.media(0).await["Inserted"], false, "the CD is ejected");
    assert_eq!(
        http.get(&url).send().await.expect("get").status(),
        404,
        "the boot ISO is gone with the operation"
    );
    assert_eq!(rig.resets(0), 1);
}
