//! vSphere test fixtures: govmomi's vcsim (built from its Go module by `scripts/vcsim.sh`, see
//! `tests/vcsim/main.go`) started per test on a free port, with SOAP tracing on so a test can
//! count what osprov sent it; the dispatcher pointing at it; and a second, independent vim25
//! session (osprov's SOAP client, as any other vCenter client) to read and change VMs.
#![allow(dead_code)]
use osprov::adapter::vsphere::model::{self, Vm};
use osprov::adapter::vsphere::soap::{MoRef, Soap, SoapConfig};
use osprov::adapter::vsphere::tls::{http_client, Trust};
use osprov::api::{
    AdapterKind, CredentialsSecretRef, OSDispatcher, OSDispatcherSpec, VmSelector, VsphereImage,
    VsphereSpec, VsphereStrategy, VsphereTls,
};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const USER: &str = "administrator@vsphere.local";
pub const PASSWORD: &str = "vcsim-pass";
pub const ISO: &str = "debian-12-netinst.iso";

/// The vcsim binary: `$OSPROV_VCSIM`, else built (or found cached) by `scripts/vcsim.sh`.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("OSPROV_VCSIM") {
        return PathBuf::from(p);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/vcsim.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/vcsim.sh");
    assert!(out.status.success(), "scripts/vcsim.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// What vcsim printed when it started.
#[derive(Debug, serde::Deserialize)]
pub struct Started {
    pub url: String,
    pub thumbprint: String,
    pub datastore: String,
    /// The datastore's backing directory on this machine.
    pub datastore_dir: String,
    pub vms: Vec<String>,
    /// Template name → its disk's datastore path (`-templates`).
    #[serde(default)]
    pub templates: std::collections::HashMap<String, String>,
}

/// A running vcsim; stopped on drop (its stdin closes).
pub struct Vcsim {
    child: Child,
    pub info: Started,
    pub port: u16,
    /// SOAP requests vcsim received (its `-trace` output), method names in order.
    trace: Arc<Mutex<Vec<String>>>,
    /// vcsim's TMPDIR (its datastore directories), removed after it stops.
    _tmp: tempfile::TempDir,
}

impl Vcsim {
    pub fn start(vms: usize) -> Vcsim {
        Self::start_on(vms, 0)
    }

    /// Start on `port` (0: a free one).
    pub fn start_on(vms: usize, port: u16) -> Vcsim {
        Self::start_with(vms, port, &[])
    }

    /// Start on `port` (0: a free one) with VM templates named `templates` (clones of the first
    /// VM whose disk holds "vcsim template NAME\n").
    pub fn start_with(vms: usize, port: u16, templates: &[&str]) -> Vcsim {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(binary())
            .env("TMPDIR", tmp.path())
            .args(["-templates", &templates.join(",")])
            .args([
                "-listen",
                &format!("127.0.0.1:{port}"),
                "-vms",
                &vms.to_string(),
                "-username",
                USER,
                "-password",
                PASSWORD,
                "-isos",
                ISO,
                "-trace",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vcsim");
        // Drain stderr from the start: a full pipe would stall vcsim.
        let trace = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let t = trace.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for method in methods_in(&line) {
                    t.lock().expect("trace").push(method);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("vcsim's first line");
        let info: Started = serde_json::from_str(&line).expect("vcsim's JSON line");
        let port = info
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches("/sdk").parse().ok())
            .expect("port");
        Vcsim {
            child,
            info,
            port,
            trace,
            _tmp: tmp,
        }
    }

    /// How many requests of `method` vcsim has received.
    pub fn count(&self, method: &str) -> usize {
        self.trace
            .lock()
            .expect("trace")
            .iter()
            .filter(|m| *m == method)
            .count()
    }

    /// The file behind datastore path `[ds] path` on this machine.
    pub fn file(&self, datastore_path: &str) -> PathBuf {
        let rel = datastore_path
            .split_once("] ")
            .map(|(_, p)| p)
            .unwrap_or(datastore_path);
        PathBuf::from(&self.info.datastore_dir).join(rel)
    }

    /// Every request vcsim has received.
    pub fn total(&self) -> usize {
        self.trace.lock().expect("trace").len()
    }

    /// Requests received so far, by method.
    pub fn snapshot(&self) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for method in self.trace.lock().expect("trace").iter() {
            *m.entry(method.clone()).or_insert(0) += 1;
        }
        m
    }

    /// A fresh vim25 session of its own (as govc or the vSphere Client would have).
    pub fn client(&self) -> Soap {
        let http = http_client(
            &Trust {
                insecure_skip_verify: true,
                ..Default::default()
            },
            2,
        )
        .expect("http client");
        Soap::new(
            SoapConfig {
                url: self.info.url.clone(),
                username: USER.into(),
                password: PASSWORD.into(),
                max_connections: 2,
                timeout: Duration::from_secs(30),
            },
            http,
        )
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // Closing its stdin stops vcsim cleanly (it removes its datastore directory); a kill is
        // the fallback.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// vim25 method names in one line of vcsim's trace (request bodies: `<Method xmlns="urn:vim25"`).
fn methods_in(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find(" xmlns=\"urn:vim25\"") {
        let head = &rest[..i];
        if let Some(open) = head.rfind('<') {
            let name = &head[open + 1..];
            if !name.is_empty() && !name.ends_with("Response") && !name.contains(['/', ' ']) {
                out.push(name.to_string());
            }
        }
        rest = &rest[i + 1..];
    }
    out
}

/// Every VM vcsim has, read through `soap`.
pub async fn vms(soap: &Soap) -> Vec<Vm> {
    let sc = soap.service_content().await.expect("service content");
    let body = format!(
        "<CreateContainerView xmlns=\"urn:vim25\">{}{}<type>VirtualMachine</type>\
         <recursive>true</recursive></CreateContainerView>",
        sc.view_manager.xml("_this"),
        sc.root_folder.xml("container")
    );
    let text = soap.call(&body).await.expect("view");
    let doc = roxmltree::Document::parse(&text).expect("xml");
    let rv = doc
        .descendants()
        .find(|n| n.has_tag_name("returnval"))
        .expect("returnval");
    let view = MoRef::new(
        rv.attribute("type").unwrap_or_default(),
        rv.text().unwrap_or_default(),
    );
    let text = soap
        .call(&model::retrieve_all(&sc.property_collector, &view))
        .await
        .expect("retrieve");
    model::parse_vms(&text).expect("parse").0
}

/// The VM named `name`.
pub async fn vm(soap: &Soap, name: &str) -> Vm {
    vms(soap)
        .await
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name}"))
}

/// Run a power task (`PowerOffVM_Task`, `PowerOnVM_Task`) on `vm` from this session.
pub async fn power(soap: &Soap, vm: &Vm, method: &str) {
    let m = vm.moref.clone().expect("moref");
    let body = format!(
        "<{method} xmlns=\"urn:vim25\">{}</{method}>",
        m.xml("_this")
    );
    soap.call(&body).await.expect("power task");
}

/// The account Secret `vcenter` (vcsim's user, `password`) in the namespace of `secrets`.
pub async fn account_secret(
    secrets: &kube::Api<k8s_openapi::api::core::v1::Secret>,
    password: &str,
) {
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("vcenter".into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("username".to_string(), USER.to_string()),
                ("password".to_string(), password.to_string()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    secrets
        .create(&kube::api::PostParams::default(), &s)
        .await
        .expect("Secret");
}

/// The dispatcher's spec: vcsim's URL, its certificate pinned by thumbprint, the ISO as the one
/// image.
pub fn vsphere_spec(sim: &Vcsim) -> VsphereSpec {
    VsphereSpec {
        url: sim.info.url.clone(),
        insecure_http: false,
        credentials_secret_ref: CredentialsSecretRef {
            name: "vcenter".into(),
            username_key: None,
            password_key: None,
        },
        tls: Some(VsphereTls {
            ca_secret_ref: None,
            thumbprint: Some(sim.info.thumbprint.clone()),
            insecure_skip_verify: false,
        }),
        vms: VmSelector::default(),
        images: vec![VsphereImage {
            name: "debian-12".into(),
            iso: Some(format!("[{}] {ISO}", sim.info.datastore)),
            template: None,
        }],
        strategy: VsphereStrategy::Iso,
        callback_timeout: None,
        max_connections: None,
    }
}

/// The dispatcher's spec with the `template` strategy: one image per template.
pub fn template_spec(sim: &Vcsim, images: &[(&str, &str)]) -> VsphereSpec {
    VsphereSpec {
        images: images
            .iter()
            .map(|(name, template)| VsphereImage {
                name: name.to_string(),
                iso: None,
                template: Some(template.to_string()),
            })
            .collect(),
        strategy: VsphereStrategy::Template,
        ..vsphere_spec(sim)
    }
}

pub fn vsphere_dispatcher(name: &str, spec: VsphereSpec, lookup: &str) -> OSDispatcher {
    OSDispatcher::new(
        name,
        OSDispatcherSpec {
            adapter: AdapterKind::Vsphere,
            provisioner: "osp".into(),
            lookup_interval: Some(lookup.into()),
            max_concurrent: None,
            simulator: None,
            redfish: None,
            libvirt: None,
            vsphere: Some(spec),
        },
    )
}
