//! The real control plane for the integration tests: etcd, kube-apiserver (RBAC authorizer,
//! service-account issuer and signing key, serving certificate of a CA made here, an admin client
//! certificate in `system:masters`) and kube-controller-manager (garbage collector and namespace
//! controller only), all built from their Go modules by `scripts/k8s-tools.sh` and started on free
//! 127.0.0.1 ports in a temporary directory.
//!
//! One control plane serves every test of a test binary (each test gets a namespace of its own);
//! it starts on first use. Its processes are spawned from a thread that lives as long as the test
//! process and carry `PR_SET_PDEATHSIG = SIGKILL`, so they die with the test binary however it
//! ends (a panic, a timeout, a kill): no process is left behind; that thread also restarts
//! kube-apiserver on request ([`restart_apiserver`], for the soak). `OSPROV_TEST_KUBECONFIG` points
//! the tests at a cluster of the developer's own instead (the osprov CRDs are applied to it).
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// What the tests need of the control plane: where it is and who may do everything.
pub struct Plane {
    /// Admin kubeconfig (client certificate in `system:masters`, or the developer's own).
    pub kubeconfig: PathBuf,
    /// Directory of the real tools (kubectl, helm, …).
    pub bin: PathBuf,
    /// The control plane's working directory (logs, certificates).
    pub dir: PathBuf,
    /// kube-apiserver's audit log (JSON lines, level Metadata for every request: who did what
    /// and the response code); None on a developer's own cluster.
    pub audit_log: Option<PathBuf>,
    /// Asks the thread that owns the processes to restart kube-apiserver (None on a developer's
    /// own cluster).
    restarts: Option<Mutex<mpsc::Sender<Restart>>>,
}

/// Stop kube-apiserver, wait `down_for`, start it again on the same etcd, port and certificates,
/// and answer once it is ready.
struct Restart {
    down_for: Duration,
    done: mpsc::Sender<Result<(), String>>,
}

static PLANE: OnceLock<Result<Plane, String>> = OnceLock::new();

/// The shared control plane, started on first use (blocking; call from `spawn_blocking`).
pub fn plane() -> &'static Plane {
    match PLANE.get_or_init(start_once) {
        Ok(p) => p,
        Err(e) => panic!("the real control plane did not start: {e}"),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the real tools: `OSPROV_K8S_TOOLS`, or what `scripts/k8s-tools.sh` prints
/// (it builds them when they are not cached yet).
pub fn tools_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("OSPROV_K8S_TOOLS") {
        return Ok(dir.into());
    }
    let out = Command::new("bash")
        .arg(root().join("scripts/k8s-tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("scripts/k8s-tools.sh: {e}"))?;
    if !out.status.success() {
        return Err("scripts/k8s-tools.sh failed (see its output above)".into());
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(dir.into())
}

fn start_once() -> Result<Plane, String> {
    let bin = tools_bin()?;
    if let Some(kc) = std::env::var_os("OSPROV_TEST_KUBECONFIG") {
        let kubeconfig = PathBuf::from(kc);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        let plane = Plane {
            kubeconfig,
            bin,
            dir,
            audit_log: None,
            restarts: None,
        };
        apply_crds(&plane)?;
        return Ok(plane);
    }
    let (tx, rx) = mpsc::channel();
    let (restart_tx, restart_rx) = mpsc::channel::<Restart>();
    // The processes' parent thread: it never ends, so PDEATHSIG fires only when the process does.
    std::thread::Builder::new()
        .name("k8s-control-plane".into())
        .spawn(move || {
            // Free ports are found by binding and releasing them, so another process can take
            // one first; a boot that fails is retried on new ports.
            let mut attempt = 0;
            let (result, mut children) = loop {
                attempt += 1;
                let mut children = Vec::new();
                match boot(bin.clone(), &mut children) {
                    Ok(plane) => {
                        let plane = Plane {
                            restarts: Some(Mutex::new(restart_tx.clone())),
                            ..plane
                        };
                        break (Ok(plane), children);
                    }
                    Err(e) => {
                        for mut c in children {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        if attempt == 3 {
                            break (Err(e), Vec::new());
                        }
                        eprintln!("control plane: attempt {attempt} failed, retrying: {e}");
                    }
                }
            };
            let restart_with = result
                .as_ref()
                .ok()
                .map(|p| (p.kubeconfig.clone(), p.bin.clone(), p.dir.clone()));
            let _ = tx.send(result);
            let Some((kubeconfig, bin, dir)) = restart_with else {
                return;
            };
            // Hold the children for the life of the process, restarting kube-apiserver on demand.
            let view = Plane {
                kubeconfig,
                bin,
                dir,
                audit_log: None,
                restarts: None,
            };
            while let Ok(r) = restart_rx.recv() {
                let _ = r.done.send(restart(&view, &mut children, r.down_for));
            }
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn boot(bin: PathBuf, children: &mut Vec<Child>) -> Result<Plane, String> {
    let dir = work_dir()?;
    let pki = Pki::generate(&dir).map_err(|e| format!("certificates: {e}"))?;
    let (etcd_client, etcd_peer, api_port) = (free_port(), free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let data = dir.join("etcd");
    children.push(spawn(
        &bin.join("etcd"),
        &dir.join("etcd.log"),
        &[
            "--name=default",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )?);
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("audit-policy.yaml"),
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    )
    .map_err(|e| e.to_string())?;
    let apiserver_args: Vec<String> = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        format!("--cert-dir={}", p("apiserver-certs")),
        format!("--tls-cert-file={}", p("serving.crt")),
        format!("--tls-private-key-file={}", p("serving.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-cluster-ip-range=10.96.0.0/24".into(),
        format!("--audit-policy-file={}", p("audit-policy.yaml")),
        format!("--audit-log-path={}", p("audit.log")),
        "--audit-log-mode=blocking".into(),
        "--profiling=false".into(),
        "--v=0".into(),
    ];
    std::fs::write(dir.join("kube-apiserver.args"), apiserver_args.join("\n"))
        .map_err(|e| e.to_string())?;
    children.push(spawn_apiserver(&bin, &dir, &apiserver_args)?);
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig, pki.kubeconfig(&server)).map_err(|e| e.to_string())?;
    let plane = Plane {
        kubeconfig,
        bin,
        audit_log: Some(dir.join("audit.log")),
        dir: dir.clone(),
        restarts: None,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_ready(&plane, deadline, children)?;
    apply_crds(&plane)?;
    // The garbage collector discovers resources when it starts (and every 30 s after), so it is
    // started once the CRDs are served.
    children.push(spawn(
        &plane.bin.join("kube-controller-manager"),
        &dir.join("kube-controller-manager.log"),
        &[
            &format!("--kubeconfig={}", plane.kubeconfig.display()),
            "--controllers=garbage-collector-controller,namespace-controller",
            "--leader-elect=false",
            "--secure-port=0",
            "--concurrent-gc-syncs=5",
            "--v=0",
        ],
    )?);
    Ok(plane)
}

/// A fresh directory per test process (mode 0700: it holds the admin key and the signing key),
/// under a per-user base; directories of test processes that are gone are removed.
#[allow(unsafe_code)] // getuid, below
fn work_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let base = std::env::temp_dir().join(format!("osprov-k8s-{uid}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let alive = name
                .parse::<u32>()
                .map(|pid| Path::new(&format!("/proc/{pid}")).exists())
                .unwrap_or(false);
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

fn spawn(program: &Path, log: &Path, args: &[&str]) -> Result<Child, String> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("{}: {e}", program.display()))
}

/// kube-apiserver with `args`, logging to `kube-apiserver.log` in `dir`.
fn spawn_apiserver(bin: &Path, dir: &Path, args: &[String]) -> Result<Child, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(
        &bin.join("kube-apiserver"),
        &dir.join("kube-apiserver.log"),
        &args,
    )
}

/// Where kube-apiserver is in the plane thread's children (after etcd).
const APISERVER: usize = 1;

/// On the plane's own thread: SIGKILL kube-apiserver, wait `down_for`, start it again with the
/// arguments it was first started with (same etcd, port, certificates), and wait until it is
/// ready and serves the osprov CRDs again.
fn restart(plane: &Plane, children: &mut [Child], down_for: Duration) -> Result<(), String> {
    let old = children
        .get_mut(APISERVER)
        .ok_or("no kube-apiserver process to restart")?;
    let _ = old.kill();
    let _ = old.wait();
    std::thread::sleep(down_for);
    let args: Vec<String> = std::fs::read_to_string(plane.dir.join("kube-apiserver.args"))
        .map_err(|e| e.to_string())?
        .lines()
        .map(String::from)
        .collect();
    children[APISERVER] = spawn_apiserver(&plane.bin, &plane.dir, &args)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_ready(plane, deadline, &mut children[..=APISERVER])?;
    apply_crds(plane)
}

/// Restart the plane's kube-apiserver on its etcd (blocking: call from `spawn_blocking`); an
/// error on a developer's own cluster, which osprov's tests do not restart.
pub fn restart_apiserver(plane: &Plane, down_for: Duration) -> Result<(), String> {
    let Some(restarts) = &plane.restarts else {
        return Err("this control plane is not the tests' own: it is not restarted".into());
    };
    let (done, answer) = mpsc::channel();
    restarts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(Restart { down_for, done })
        .map_err(|_| "the control plane's thread is gone".to_string())?;
    answer
        .recv()
        .map_err(|_| "the control plane's thread is gone".to_string())?
}

/// The audit events kube-apiserver has written so far (one JSON object per request).
pub fn audit_events(plane: &Plane) -> Vec<serde_json::Value> {
    let Some(path) = &plane.audit_log else {
        return Vec::new();
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `kubectl` of the real tools against the plane, as admin.
pub fn kubectl(plane: &Plane, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(plane.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .args(args)
        .output()
}

fn wait_ready(plane: &Plane, deadline: Instant, children: &mut [Child]) -> Result<(), String> {
    loop {
        let out = kubectl(plane, &["get", "--raw", "/readyz"]);
        if matches!(&out, Ok(o) if o.status.success()) {
            return Ok(());
        }
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "a control-plane process exited ({status}); etcd:\n{}\nkube-apiserver:\n{}",
                    tail(&plane.dir.join("etcd.log")),
                    tail(&plane.dir.join("kube-apiserver.log"))
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "kube-apiserver not ready in time: {}\n{}",
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default(),
                tail(&plane.dir.join("kube-apiserver.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Applies the generated osprov CRDs (server-side, as `kubectl apply --server-side` does) and
/// waits until they are Established.
fn apply_crds(plane: &Plane) -> Result<(), String> {
    let path = plane.dir.join("crds.yaml");
    let docs: Vec<String> = osprov::api::crds()
        .iter()
        .map(|c| osprov::api::crd_yaml(c).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    std::fs::write(&path, docs.join("---\n")).map_err(|e| e.to_string())?;
    let file = path.display().to_string();
    for args in [
        vec![
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=osprov-tests",
            "-f",
            &file,
        ],
        vec![
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &file,
        ],
    ] {
        let out = kubectl(plane, &args).map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// The CA, the apiserver's serving certificate, the admin client certificate and the
/// service-account signing key, written into the plane's directory.
struct Pki {
    ca_pem: String,
    admin_pem: String,
    admin_key: String,
}

fn ca_params(cn: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Pki {
    fn generate(dir: &Path) -> Result<Pki, Box<dyn std::error::Error>> {
        let ca_key = KeyPair::generate()?;
        let params = ca_params("osprov test cluster CA")?;
        let ca = params.self_signed(&ca_key)?;
        let issuer = Issuer::new(params, ca_key);

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join("serving.crt"), serving.pem() + &ca.pem())?;
        std::fs::write(dir.join("serving.key"), key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;

        let admin_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "osprov-test-admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin = params.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        std::fs::write(dir.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), sa_key.public_key_pem())?;
        Ok(Pki {
            ca_pem: ca.pem(),
            admin_pem: admin.pem(),
            admin_key: admin_key.serialize_pem(),
        })
    }

    fn kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "real", "cluster": {
                "server": server,
                "certificate-authority-data": b64(&self.ca_pem),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(&self.admin_pem),
                "client-key-data": b64(&self.admin_key),
            }}],
            "contexts": [{"name": "real", "context": {"cluster": "real", "user": "admin"}}],
            "current-context": "real",
        });
        serde_norway::to_string(&doc).unwrap_or_default()
    }
}
