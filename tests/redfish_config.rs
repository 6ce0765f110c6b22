//! A request's configuration through Redfish: the real controller against a real sushy-tools BMC,
//! on both API backends. The config drive goes in the BMC's second virtual media device (sushy's
//! `Floppy`, which takes USB stick images) as a URL on the controller's callback endpoint, the
//! installer ISO in the CD as before; the image URL no longer carries the callback (it is on the
//! drive). The test reads the drive from that URL as the BMC does and checks it with `blkid` and
//! `isoinfo` (Debian's `genisoimage`; required where `OSPROV_REQUIRE_CLOUD_INIT` is set, as in
//! CI), reports through the callback URL found on the drive, and checks that both media are
//! ejected, the drive URL is gone and the host was reset once.
mod cluster;
mod harness;
mod redfish_rig;
mod redfish_support;
mod support;

use cluster::TestCluster;
use harness::*;
use osprov::api::{ConfigSecretRef, Phase};
use redfish_rig::Rig;
use redfish_support::*;
use std::process::Command;

on_both_backends!(the_config_drive_rides_in_a_second_virtual_medium);

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
    rig.dispatcher(rig.spec(true)).await;
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
