//! Real Redfish backend for tests: runs `sushy-emulator` (sushy-tools from PyPI, installed into the
//! venv by scripts/test.sh) with its fake driver on a free 127.0.0.1 port, behind basic auth
//! (bcrypt htpasswd) and TLS (a fresh self-signed certificate), with a fresh state directory; and a
//! small local HTTP server for the test ISO, which the emulator really downloads.
//!
//! The emulator's access log (one line per request) is kept in a file across restarts so tests
//! can count what osprov actually sent.
#![allow(dead_code)]
use crate::harness::free_port;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod iso_server;
pub use iso_server::IsoServer;

pub const USER: &str = "osprov";
pub const PASSWORD: &str = "s3cret-bmc-pass";

/// A free 127.0.0.1 port (bound and released).
pub fn venv_bin(name: &str) -> PathBuf {
    if let Ok(py) = std::env::var("OSPROV_PYTHON") {
        if let Some(dir) = Path::new(&py).parent() {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/venv/bin")
        .join(name);
    if local.exists() {
        return local;
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join(name).exists() {
                return dir.join(name);
            }
        }
    }
    panic!("{name} not found: run scripts/test.sh (it installs sushy-tools into a venv) or set OSPROV_PYTHON");
}

/// A self-signed certificate for 127.0.0.1/localhost: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// The DER of the first certificate of a PEM text.
pub fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

/// A self-signed certificate for 127.0.0.1 marked `CA:TRUE`, as many BMCs make theirs (rustls
/// refuses it as a server certificate even when it is the trusted CA): (cert PEM, key PEM, DER).
pub fn self_signed_ca_marked() -> (String, String, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn bcrypt_line(user: &str, password: &str) -> String {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(rounds=4)).decode())",
            password,
        ])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "bcrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{user}:{}", String::from_utf8_lossy(&out.stdout).trim())
}

/// One fake system of the emulator.
pub fn system_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// A running (or stopped) sushy-emulator.
pub struct Emulator {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    config: PathBuf,
    pub log: PathBuf,
    sessions: bool,
    /// The account's password as the emulator checks it now.
    password: String,
}

/// The emulator with a SessionService in front (as real BMCs have), written by osprov's tests.
fn session_emulator() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/redfish_support/session_emulator.py")
}

impl Emulator {
    /// Start an emulator with `systems` fake systems named `node-<i>`, a SessionService whose
    /// sessions expire after 30 minutes unused, and an EventService with an SSE stream.
    pub async fn start(systems: usize) -> Emulator {
        Emulator::start_with(systems, Some(1800), true).await
    }

    /// Start an emulator; `session_timeout` (seconds) puts the SessionService in front, `None`
    /// runs plain sushy-tools (basic auth only); `events` adds the EventService (needs sessions).
    pub async fn start_with(
        systems: usize,
        session_timeout: Option<u64>,
        events: bool,
    ) -> Emulator {
        Emulator::start_with_cert(systems, session_timeout, events, self_signed()).await
    }

    /// [`Emulator::start_with`] serving `cert` (cert PEM, key PEM).
    pub async fn start_with_cert(
        systems: usize,
        session_timeout: Option<u64>,
        events: bool,
        (cert, key): (String, String),
    ) -> Emulator {
        let mut fake = String::from("[\n");
        for i in 0..systems {
            fake.push_str(&format!(
                "  {{'uuid': '{}', 'name': 'node-{i}', 'power_state': 'On', 'nics': [{{'mac': '52:54:00:{:02x}:{:02x}:{:02x}', 'ip': '10.0.0.1'}}]}},\n",
                system_uuid(i),
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ));
        }
        fake.push(']');
        let driver =
            format!("SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = {fake}\n");
        Emulator::launch(driver, session_timeout, events, (cert, key)).await
    }

    /// Plain sushy-tools (basic auth, no sessions) with its libvirt driver in front of the
    /// domains `uuids` at `uri`; images inserted as virtual media are uploaded to `pool`.
    pub async fn start_libvirt(uri: &str, pool: &str, uuids: &[String]) -> Emulator {
        let driver = format!(
            "SUSHY_EMULATOR_LIBVIRT_URI = {uri:?}\n\
             SUSHY_EMULATOR_STORAGE_POOL = {pool:?}\n\
             SUSHY_EMULATOR_ALLOWED_INSTANCES = {uuids:?}\n"
        );
        Emulator::launch(driver, None, false, self_signed()).await
    }

    async fn launch(
        driver: String,
        session_timeout: Option<u64>,
        events: bool,
        (cert, key): (String, String),
    ) -> Emulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("cert.pem"), &cert).expect("cert");
        std::fs::write(p("key.pem"), &key).expect("key");
        std::fs::write(p("htpasswd"), bcrypt_line(USER, PASSWORD) + "\n").expect("htpasswd");
        std::fs::create_dir_all(p("state")).expect("state dir");
        let port = free_port();
        let config = p("emulator.conf");
        std::fs::write(
            &config,
            format!(
                "{driver}\
                 SUSHY_EMULATOR_STATE_DIR = {state:?}\n\
                 SUSHY_EMULATOR_AUTH_FILE = {auth:?}\n\
                 SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
                 SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_SSL_CERT = {cert:?}\n\
                 SUSHY_EMULATOR_SSL_KEY = {key:?}\n\
                 SESSION_TIMEOUT = {timeout}\n\
                 EVENT_STREAM = {events}\n",
                timeout = session_timeout.unwrap_or(1800),
                events = if events { "True" } else { "False" },
                state = p("state").display().to_string(),
                auth = p("htpasswd").display().to_string(),
                cert = p("cert.pem").display().to_string(),
                key = p("key.pem").display().to_string(),
            ),
        )
        .expect("config");
        let mut emu = Emulator {
            child: None,
            port,
            log: p("emulator.log"),
            dir,
            cert_pem: cert,
            config,
            sessions: session_timeout.is_some(),
            password: PASSWORD.to_string(),
        };
        emu.restart().await;
        emu
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// (Re)start the process on the same port, config and state directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = if self.sessions {
            let mut c = Command::new(venv_bin("python"));
            c.arg(session_emulator());
            c
        } else {
            Command::new(venv_bin("sushy-emulator"))
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            // Everything the emulator fetches (images, config drives) is served on this machine.
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sushy-emulator starts");
        self.child = Some(child);
        let http = self.http();
        let url = format!("{}/redfish/v1/", self.endpoint());
        for _ in 0..300 {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("sushy-emulator exited with {status}: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sushy-emulator did not come up: {}", self.log_text());
    }

    /// Kill the process abruptly (as a BMC that drops off the network).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client that trusts the emulator's certificate and logs in.
    /// A client of the test's own that trusts exactly the emulator's certificate (pinned: it
    /// may be marked CA:TRUE, which rustls refuses as a server certificate).
    pub fn http(&self) -> reqwest::Client {
        let fingerprint: String = osprov::adapter::tls::thumbprint_of(&pem_der(&self.cert_pem), 32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        reqwest::Client::builder()
            .use_preconfigured_tls(
                osprov::adapter::tls::pinned_config(&fingerprint, "the emulator").expect("pin"),
            )
            .no_proxy()
            .build()
            .expect("client")
    }

    /// GET a Redfish path as JSON (authenticated).
    pub async fn get(&self, path: &str) -> serde_json::Value {
        self.http()
            .get(format!("{}{path}", self.endpoint()))
            .basic_auth(USER, Some(&self.password))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    /// GET a Redfish path as JSON; `None` while the emulator is down or answers oddly.
    pub async fn try_get(&self, path: &str) -> Option<serde_json::Value> {
        self.view().try_get(path).await
    }

    /// What a client needs to read the emulator, apart from the emulator (which the test may
    /// stop and restart meanwhile).
    pub fn view(&self) -> EmulatorView {
        EmulatorView {
            endpoint: self.endpoint(),
            password: self.password.clone(),
            http: self.http(),
        }
    }

    /// The sessions open now (read with basic auth, as an administrator would).
    pub async fn sessions(&self) -> Vec<String> {
        let doc = self.get("/redfish/v1/SessionService/Sessions").await;
        doc["Members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|l| l["@odata.id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Delete a session from outside (as a BMC administrator, or the BMC's own expiry, would).
    pub async fn delete_session(&self, path: &str) {
        let status = self
            .http()
            .delete(format!("{}{path}", self.endpoint()))
            .basic_auth(USER, Some(&self.password))
            .send()
            .await
            .expect("DELETE")
            .status();
        assert_eq!(status.as_u16(), 204, "deleting {path}");
    }

    /// Replace the account's password in the emulator's htpasswd file (read on every request).
    pub fn set_password(&mut self, password: &str) {
        std::fs::write(
            self.dir.path().join("htpasswd"),
            bcrypt_line(USER, password) + "\n",
        )
        .expect("htpasswd");
        self.password = password.to_string();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests in the access log: (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        strip_ansi(&self.log_text())
            .lines()
            .filter_map(|l| {
                let start = l.find('"')?;
                let rest = &l[start + 1..];
                let end = rest.find('"')?;
                let mut parts = rest[..end].split_whitespace();
                let method = parts.next()?.to_string();
                let path = parts.next()?.to_string();
                let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
                Some((method, path, status))
            })
            .collect()
    }

    /// Successful requests whose path contains `needle` and ends with `suffix`.
    pub fn count(&self, method: &str, needle: &str, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(m, p, s)| {
                m == method && p.contains(needle) && p.ends_with(suffix) && *s < 300
            })
            .count()
    }
}

/// The emulator colours its access log; drop the escape sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reader of the emulator (see [`Emulator::view`]).
#[derive(Clone)]
pub struct EmulatorView {
    endpoint: String,
    password: String,
    http: reqwest::Client,
}

impl EmulatorView {
    /// GET a Redfish path as JSON; `None` while the emulator is down or answers oddly.
    pub async fn try_get(&self, path: &str) -> Option<serde_json::Value> {
        self.http
            .get(format!("{}{path}", self.endpoint))
            .basic_auth(USER, Some(&self.password))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

/// Write a line to stderr immediately (test progress).
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[redfish test] {msg}");
}

/// A Secret with `data` (keys to plain-text values).
pub fn secret(name: &str, data: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Secret {
    let mut s = k8s_openapi::api::core::v1::Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect(),
    );
    s
}

/// The credentials Secret `bmc` (USER / `password`) and the CA Secret `bmc-ca` (the emulator's
/// certificate) that [`redfish_spec`] names, created in `secrets`' namespace.
pub async fn create_bmc_secrets(
    secrets: &kube::Api<k8s_openapi::api::core::v1::Secret>,
    emu: &Emulator,
    password: &str,
) {
    let pp = kube::api::PostParams::default();
    secrets
        .create(
            &pp,
            &secret("bmc", &[("username", USER), ("password", password)]),
        )
        .await
        .expect("credentials Secret");
    secrets
        .create(&pp, &secret("bmc-ca", &[("ca.crt", &emu.cert_pem)]))
        .await
        .expect("CA Secret");
}

/// A Redfish dispatcher spec for `emu` with the Secrets of [`create_bmc_secrets`] (the CA one
/// only when `with_ca`) and one image, `ubuntu-24.04`, served by `iso`.
pub fn redfish_spec(emu: &Emulator, iso: &IsoServer, with_ca: bool) -> osprov::api::RedfishSpec {
    use osprov::api::{CredentialsSecretRef, RedfishImage, RedfishSpec, RedfishTls, SecretKeyRef};
    RedfishSpec {
        endpoint: emu.endpoint(),
        insecure_http: false,
        credentials_secret_ref: CredentialsSecretRef {
            name: "bmc".into(),
            username_key: None,
            password_key: None,
        },
        tls: with_ca.then(|| RedfishTls {
            fingerprint: None,
            ca_secret_ref: Some(SecretKeyRef {
                name: "bmc-ca".into(),
                key: None,
            }),
            insecure_skip_verify: false,
        }),
        images: vec![RedfishImage {
            name: "ubuntu-24.04".into(),
            url: iso.url("ubuntu-24.04"),
            checksum: None,
            kernel_args: None,
        }],
        systems: vec![],
        callback_timeout: None,
        requests_per_second: Some(200),
        max_connections: Some(8),
        auth: None,
        config_medium: None,
    }
}

/// A Redfish OSDispatcher named `name` for provisioner `osp`.
pub fn redfish_dispatcher(name: &str, spec: osprov::api::RedfishSpec) -> osprov::api::OSDispatcher {
    osprov::api::OSDispatcher::new(
        name,
        osprov::api::OSDispatcherSpec {
            adapter: osprov::api::AdapterKind::Redfish,
            provisioner: "osp".into(),
            lookup_interval: Some("1s".into()),
            max_concurrent: None,
            simulator: None,
            libvirt: None,
            vsphere: None,
            redfish: Some(spec),
        },
    )
}

/// Wait until system `i` has the ISO from `iso` inserted; return the callback URL its image URL
/// carries (what the installer would call).
pub async fn wait_inserted(emu: &Emulator, iso: &IsoServer, i: usize) -> String {
    let path = format!("/redfish/v1/Systems/{}/VirtualMedia/Cd", system_uuid(i));
    let mut media = serde_json::Value::Null;
    for _ in 0..600 {
        media = emu.get(&path).await;
        if media["Inserted"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        media["Inserted"], true,
        "media not inserted in 60 s: {media}"
    );
    let image = media["Image"].as_str().expect("Image").to_string();
    assert!(image.starts_with(&iso.url("ubuntu-24.04")), "{image}");
    let encoded = image
        .split("osprov_callback=")
        .nth(1)
        .expect("callback in URL");
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .expect("utf8")
        .to_string()
}
