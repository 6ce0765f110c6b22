//! A request's own configuration (user-data, network-config, meta-data Secrets and a hostname),
//! end to end through the real controller on both API backends, with the simulator as the
//! backend that records what each operation was given:
//! - the configuration reaches the host, and the drive osprov renders for it is one cloud-init
//!   itself reads: `blkid` finds it by label, `isoinfo` reads the files by their names,
//!   `cloud-init schema` accepts the user-data and cloud-init's own NoCloud reader and
//!   network-config parser take the rest (Debian's `cloud-init` and `genisoimage`, installed by
//!   `scripts/test.sh`, which sets `OSPROV_REQUIRE_CLOUD_INIT=1` so CI cannot skip them);
//! - a missing Secret or key and unusable content keep the request Pending with a reason that
//!   names the Secret (never its content) and start nothing, until the Secret is fixed;
//! - a dispatcher that cannot deliver configuration (a simulator served out of process) rejects
//!   the request before anything starts;
//! - a kickstart rides on an `OEMDRV` drive (`spec.configDrive`): `blkid` finds the label,
//!   `isoinfo` reads `ks.cfg`, and pykickstart's `ksvalidator` (Fedora's own validator) accepts
//!   it; an `OEMDRV` request without user-data waits with `ConfigurationInvalid`.
mod cluster;
mod harness;
mod support;

use cluster::TestCluster;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::adapter::HostConfig;
use osprov::api::{
    conditions::reason, ConfigDriveFormat, ConfigSecretRef, OSDispatcher, OSProvisioningRequest,
    Phase,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

on_both_backends!(
    configuration_reaches_the_host_on_a_drive_cloud_init_reads,
    a_missing_or_unusable_secret_keeps_the_request_pending_until_fixed,
    configuration_for_a_dispatcher_that_cannot_deliver_it_is_rejected,
    a_kickstart_rides_on_an_oemdrv_drive_anaconda_reads,
);

const KICKSTART: &str = "lang en_US.UTF-8\nkeyboard us\ntimezone UTC\nrootpw --lock\n\
                         network --bootproto=dhcp --hostname=web-1\n%packages\n@core\n%end\n";

const USER_DATA: &str = "#cloud-config\nusers:\n  - name: ops\n    ssh_authorized_keys:\n      \
                         - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsprovTestKeyOnly ops@example\n\
                         packages: [htop]\n";
const NETWORK: &str = "version: 2\nethernets:\n  eth0:\n    dhcp4: false\n    addresses: \
                       [192.0.2.10/24]\n    gateway4: 192.0.2.1\n";

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

fn configured(name: &str, host: &str) -> OSProvisioningRequest {
    let mut r = request(name, host, "debian-12");
    let by = |n: &str| {
        Some(ConfigSecretRef {
            name: n.into(),
            key: None,
        })
    };
    r.spec.user_data = by("web-user-data");
    r.spec.network_data = by("web-network");
    r.spec.meta_data = by("web-meta");
    r.spec.hostname = Some("web-1.example.org".into());
    r
}

fn controller(c: &TestCluster, sims: &Arc<SimRegistry>) -> RunningController {
    RunningController::start(c.client.clone(), fast_settings_in(&c.ns), sims.clone())
}

async fn configuration_reaches_the_host_on_a_drive_cloud_init_reads(c: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let _ctl = controller(&c, &sims);
    let secrets: Api<Secret> = c.api();
    create(
        &secrets,
        &secret("web-user-data", &[("userData", USER_DATA)]),
    )
    .await;
    create(
        &secrets,
        &secret("web-network", &[("networkData", NETWORK)]),
    )
    .await;
    create(&secrets, &secret("web-meta", &[("metaData", "rack: r7\n")])).await;
    let dispatchers: Api<OSDispatcher> = c.api();
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 50))).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    create(&requests, &configured("web", "sim-000")).await;
    let done = wait_phase(&requests, "web", Phase::Succeeded, 30).await;
    let token = done
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("operation recorded");
    let fleet = sims.get(&c.key("sim")).expect("fleet");
    let given = fleet
        .config(&token)
        .expect("the operation was given the configuration");
    assert_eq!(given.user_data.as_deref(), Some(USER_DATA.as_bytes()));
    assert_eq!(given.network_config.as_deref(), Some(NETWORK.as_bytes()));
    assert_eq!(given.hostname, "web-1.example.org");
    assert_eq!(
        given.instance_id,
        format!("osprov-{}", token.replace('/', "-"))
    );
    let host = fleet.host("sim-000").expect("host");
    assert_eq!(
        host.details.get("hostname").map(String::as_str),
        Some("web-1.example.org"),
        "the host took the requested name"
    );
    validate_with_cloud_init(&given);
}

/// Render `config`'s drive and have the standard tools and cloud-init's own code read it.
fn validate_with_cloud_init(config: &HostConfig) {
    let callback = "https://osprov.example/callback/k.s";
    let Some((dir, iso)) = rendered(config, callback) else {
        return;
    };
    let blkid = run("/usr/sbin/blkid", &["-o", "export", path(&iso)]);
    assert!(
        blkid.contains("LABEL=cidata") && blkid.contains("TYPE=iso9660"),
        "{blkid}"
    );
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).expect("seed dir");
    for f in [
        "user-data",
        "meta-data",
        "network-config",
        "osprov-callback",
    ] {
        let out = Command::new("isoinfo")
            .args(["-R", "-i", path(&iso), "-x", &format!("/{f}")])
            .output()
            .expect("isoinfo");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{f} on the drive"
        );
        std::fs::write(seed.join(f), &out.stdout).expect("extract");
    }
    assert_eq!(
        std::fs::read_to_string(seed.join("osprov-callback")).expect("callback"),
        format!("{callback}\n")
    );
    let schema = run(
        "cloud-init",
        &["schema", "--config-file", path(&seed.join("user-data"))],
    );
    assert!(schema.contains("Valid cloud-config"), "{schema}");
    // cloud-init's NoCloud seed reader and network-config parser, on the extracted files.
    let script = format!(
        "import sys, yaml\n\
         from cloudinit import util\n\
         from cloudinit.net import network_state\n\
         md, ud, vd = util.read_seeded('file://{seed}/')\n\
         net = yaml.safe_load(open('{seed}/network-config'))\n\
         ns = network_state.parse_net_config_data(net, skip_broken=False)\n\
         print(md['instance-id'], md['local-hostname'], md['rack'], len(ud), ns.version)\n",
        seed = seed.display()
    );
    let read = run("/usr/bin/python3", &["-c", &script]);
    assert_eq!(
        read.trim(),
        format!(
            "{} web-1.example.org r7 {} 2",
            config.instance_id,
            USER_DATA.len()
        )
    );
}

/// `config`'s drive written to a file, or `None` (said on stderr) where the reading tools are
/// missing and CI does not require them.
fn rendered(config: &HostConfig, callback: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if let Some(why) = tools_missing() {
        assert!(
            std::env::var_os("OSPROV_REQUIRE_CLOUD_INIT").is_none(),
            "OSPROV_REQUIRE_CLOUD_INIT is set but {why}"
        );
        eprintln!("skipping the drive checks: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = dir.path().join("drive.iso");
    std::fs::write(&iso, config.drive_iso(Some(callback)).expect("iso")).expect("write");
    Some((dir, iso))
}

fn tools_missing() -> Option<String> {
    for (bin, pkg) in [
        ("/usr/bin/cloud-init", "cloud-init"),
        ("/usr/bin/isoinfo", "genisoimage"),
        ("/usr/sbin/blkid", "util-linux"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} is missing (Debian package {pkg})"));
        }
    }
    None
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect(bin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{bin} {args:?}: {text}");
    text
}

async fn a_missing_or_unusable_secret_keeps_the_request_pending_until_fixed(c: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let _ctl = controller(&c, &sims);
    let dispatchers: Api<OSDispatcher> = c.api();
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 50))).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    create(&requests, &configured("web", "sim-000")).await;
    let why = wait_reason(&requests, "web", reason::CONFIGURATION_MISSING).await;
    assert!(
        why.contains("web-user-data") && why.contains("spec.userData"),
        "{why}"
    );
    let secrets: Api<Secret> = c.api();
    // The wrong key: the message names the key wanted and the keys there.
    create(
        &secrets,
        &secret("web-user-data", &[("user-data", USER_DATA)]),
    )
    .await;
    create(
        &secrets,
        &secret("web-network", &[("networkData", NETWORK)]),
    )
    .await;
    let why = wait_message(&requests, "web", "no key userData").await;
    assert!(why.contains("user-data"), "{why}");
    let fix = serde_json::json!({"data": {"userData": ByteString(USER_DATA.as_bytes().to_vec())}});
    secrets
        .patch(
            "web-user-data",
            &PatchParams::default(),
            &Patch::Merge(&fix),
        )
        .await
        .expect("add the key");
    // Meta-data that is not a mapping: invalid, and the content is not repeated.
    create(
        &secrets,
        &secret("web-meta", &[("metaData", "- do-not-echo-me\n")]),
    )
    .await;
    let why = wait_reason(&requests, "web", reason::CONFIGURATION_INVALID).await;
    assert!(
        why.contains("web-meta") && !why.contains("do-not-echo-me"),
        "{why}"
    );
    let fleet = sims.get(&c.key("sim")).expect("fleet");
    assert_eq!(fleet.stats().started(), 0, "nothing started while unusable");
    let fix = serde_json::json!({"data": {"metaData": ByteString(b"rack: r7\n".to_vec())}});
    secrets
        .patch("web-meta", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fix meta-data");
    wait_phase(&requests, "web", Phase::Succeeded, 30).await;
    assert_eq!(fleet.stats().started(), 1);
}

async fn configuration_for_a_dispatcher_that_cannot_deliver_it_is_rejected(c: TestCluster) {
    // A simulator served out of process speaks a protocol with no configuration in it.
    let served = Arc::new(SimRegistry::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(listener, osprov::adapter::simulator::serve::router(served)).await
    });
    let sims = Arc::new(SimRegistry::default());
    let _ctl = controller(&c, &sims);
    let mut spec = sim(2, 50);
    spec.endpoint = Some(format!("http://{addr}"));
    let dispatchers: Api<OSDispatcher> = c.api();
    create(&dispatchers, &sim_dispatcher("remote", spec)).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    let mut r = request("named", "sim-000", "debian-12");
    r.spec.hostname = Some("web-1".into());
    create(&requests, &r).await;
    let done = wait_phase(&requests, "named", Phase::Rejected, 30).await;
    let st = done.status.expect("status");
    assert_eq!(
        st.reason.as_deref(),
        Some(reason::CONFIGURATION_UNSUPPORTED)
    );
    assert!(st.operation.is_none(), "no operation was recorded");
    // The same dispatcher takes a request without configuration.
    create(&requests, &request("plain", "sim-001", "debian-12")).await;
    wait_phase(&requests, "plain", Phase::Succeeded, 30).await;
    server.abort();
}

/// Wait until request `name` is Pending with `reason`; its message.
async fn wait_reason(api: &Api<OSProvisioningRequest>, name: &str, want: &str) -> String {
    eventually(30, &format!("{name} Pending with {want}"), || async {
        let st = api.get(name).await.ok()?.status?;
        (st.phase == Some(Phase::Pending) && st.reason.as_deref() == Some(want))
            .then(|| st.message.unwrap_or_default())
    })
    .await
}

/// Wait until request `name`'s message contains `part`; the message.
async fn wait_message(api: &Api<OSProvisioningRequest>, name: &str, part: &str) -> String {
    eventually(30, &format!("{name}'s message says {part}"), || async {
        let m = api.get(name).await.ok()?.status?.message?;
        m.contains(part).then_some(m)
    })
    .await
}

async fn a_kickstart_rides_on_an_oemdrv_drive_anaconda_reads(c: TestCluster) {
    let sims = Arc::new(SimRegistry::default());
    let _ctl = controller(&c, &sims);
    let dispatchers: Api<OSDispatcher> = c.api();
    create(&dispatchers, &sim_dispatcher("sim", sim(2, 50))).await;
    let requests: Api<OSProvisioningRequest> = c.api();
    // OEMDRV without a kickstart: nothing for Anaconda to read, so the request waits.
    let mut bare = request("no-ks", "sim-001", "debian-12");
    bare.spec.config_drive = Some(ConfigDriveFormat::Oemdrv);
    create(&requests, &bare).await;
    let why = wait_reason(&requests, "no-ks", reason::CONFIGURATION_INVALID).await;
    assert!(why.contains("spec.userData"), "{why}");
    let secrets: Api<Secret> = c.api();
    create(&secrets, &secret("web-ks", &[("userData", KICKSTART)])).await;
    let mut r = request("web-ks", "sim-000", "debian-12");
    r.spec.config_drive = Some(ConfigDriveFormat::Oemdrv);
    r.spec.user_data = Some(ConfigSecretRef {
        name: "web-ks".into(),
        key: None,
    });
    create(&requests, &r).await;
    let done = wait_phase(&requests, "web-ks", Phase::Succeeded, 30).await;
    let token = done
        .status
        .and_then(|s| s.operation)
        .map(|o| o.token)
        .expect("operation recorded");
    let given = sims
        .get(&c.key("sim"))
        .expect("fleet")
        .config(&token)
        .expect("the operation was given the configuration");
    assert_eq!(given.format, osprov::adapter::DriveFormat::Oemdrv);
    let st = requests.get("no-ks").await.expect("no-ks").status;
    assert_eq!(
        st.and_then(|s| s.operation),
        None,
        "nothing started for no-ks"
    );
    validate_kickstart_drive(&given);
}

/// Render `config`'s OEMDRV drive and read it as Anaconda would find it.
fn validate_kickstart_drive(config: &HostConfig) {
    let Some((dir, iso)) = rendered(config, "https://c/callback/k.s") else {
        return;
    };
    let blkid = run("/usr/sbin/blkid", &["-o", "export", path(&iso)]);
    assert!(blkid.contains("LABEL=OEMDRV"), "{blkid}");
    let out = Command::new("isoinfo")
        .args(["-R", "-i", path(&iso), "-x", "/ks.cfg"])
        .output()
        .expect("isoinfo");
    assert_eq!(String::from_utf8_lossy(&out.stdout), KICKSTART);
    let ks = dir.path().join("ks.cfg");
    std::fs::write(&ks, &out.stdout).expect("extract");
    // Fedora's validator lives in scripts/test.sh's venv (pykickstart).
    let Ok(python) = std::env::var("OSPROV_PYTHON") else {
        assert!(
            std::env::var_os("OSPROV_REQUIRE_CLOUD_INIT").is_none(),
            "OSPROV_REQUIRE_CLOUD_INIT is set but OSPROV_PYTHON (the venv with pykickstart) is not"
        );
        eprintln!("skipping ksvalidator: OSPROV_PYTHON (a venv with pykickstart) is not set");
        return;
    };
    let validator = Path::new(&python).with_file_name("ksvalidator");
    let checked = run(path(&validator), &[path(&ks)]);
    assert!(!checked.contains("problem"), "{checked}");
}
