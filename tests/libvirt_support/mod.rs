//! libvirt test fixtures: a test-driver node (`test:///<file>`) written per test, the
//! dispatcher pointing at it, and readers of what libvirt holds (disk sources, volumes, osprov's
//! metadata record) through the same shared connection the adapter uses.
#![allow(dead_code)]
use osprov::adapter::libvirt::xml::{self, Record};
use osprov::adapter::libvirt::{shared_connection, Credentials};
use osprov::api::{
    AdapterKind, DomainSelector, LibvirtImage, LibvirtSpec, LibvirtStrategy, OSDispatcher,
    OSDispatcherSpec,
};
use std::path::{Path, PathBuf};
use virt::connect::Connect;

/// OS images every node offers (volume names in the `disks` pool).
pub const IMAGES: [&str; 2] = ["debian-12.qcow2", "ubuntu-24.04.qcow2"];

/// A test-driver node: `domains` running domains `vm-0…` with root disks in pool `disks`, which
/// also holds the images. `auth`: the node asks for this user and password.
pub struct Node {
    pub uri: String,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn uuid_of(i: usize) -> String {
    format!("6f1e0000-0000-4000-8000-{:012x}", i)
}

pub fn node_xml(domains: usize, auth: Option<(&str, &str)>) -> String {
    let mut out = String::from("<?xml version='1.0'?>\n<node>\n");
    if let Some((user, password)) = auth {
        out.push_str(&format!(
            "<auth><user password='{password}'>{user}</user></auth>\n"
        ));
    }
    for i in 0..domains {
        out.push_str(&format!(
            "<domain type='test'><name>vm-{i}</name><uuid>{}</uuid>\
             <memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='/disks/vm-{i}.qcow2'/><target dev='vda' bus='virtio'/></disk>\
             </devices></domain>\n",
            uuid_of(i)
        ));
    }
    out.push_str(
        "<pool type='dir'><name>disks</name><uuid>6f1e0000-0000-4000-9000-000000000001</uuid>\
                  <capacity unit='GiB'>100</capacity><allocation>0</allocation>\
                  <available unit='GiB'>100</available><target><path>/disks</path></target>\n",
    );
    for i in 0..domains {
        out.push_str(&format!(
            "<volume><name>vm-{i}.qcow2</name><capacity unit='GiB'>2</capacity>\
             <target><format type='qcow2'/></target></volume>\n"
        ));
    }
    // The images live in the same pool: the test driver clones only within one pool (real
    // libvirt clones across pools).
    for image in IMAGES {
        out.push_str(&format!(
            "<volume><name>{image}</name><capacity unit='GiB'>3</capacity>\
             <target><format type='qcow2'/></target></volume>\n"
        ));
    }
    out.push_str("</pool>\n</node>\n");
    out
}

impl Node {
    pub fn new(domains: usize, auth: Option<(&str, &str)>) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.xml");
        std::fs::write(&path, node_xml(domains, auth)).expect("node file");
        Node {
            uri: format!("test://{}", path.display()),
            path,
            _dir: dir,
        }
    }

    /// A node described by `xml` (e.g. [`node_xml`] with more volumes).
    pub fn from_xml(xml: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.xml");
        std::fs::write(&path, xml).expect("node file");
        Node {
            uri: format!("test://{}", path.display()),
            path,
            _dir: dir,
        }
    }

    /// A URI for a node file that does not exist (yet) in this node's directory.
    pub fn missing_uri(&self) -> (String, PathBuf) {
        let path = self.dir().join("later.xml");
        (format!("test://{}", path.display()), path)
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().expect("parent")
    }

    /// The adapter's connection (shared per URI), blocking; call from `spawn_blocking`.
    pub fn conn(&self, creds: Option<&Credentials>) -> Connect {
        shared_connection(&self.uri, creds).expect("libvirt connection")
    }
}

/// The spec of a dispatcher over `uri` whose catalogue is [`IMAGES`] in pool `disks`.
pub fn libvirt_spec(uri: &str) -> LibvirtSpec {
    LibvirtSpec {
        uri: uri.into(),
        credentials_secret_ref: None,
        domains: DomainSelector::default(),
        image_pool: "disks".into(),
        images: images(),
        strategy: LibvirtStrategy::Image,
        root_disk: None,
        callback_timeout: None,
    }
}

/// The spec of a dispatcher over one named domain on `qemu:///system`, root disk `vda`, whose
/// catalogue is one image `name` → `volume` in `pool` (the real-QEMU tests' labs).
pub fn lab_spec(
    domain: &str,
    pool: &str,
    (name, volume): (&str, &str),
    strategy: LibvirtStrategy,
) -> LibvirtSpec {
    LibvirtSpec {
        uri: "qemu:///system".into(),
        credentials_secret_ref: None,
        domains: DomainSelector {
            names: vec![domain.to_string()],
            labelled: false,
        },
        image_pool: pool.into(),
        images: vec![LibvirtImage {
            name: name.into(),
            volume: volume.into(),
        }],
        strategy,
        root_disk: Some("vda".into()),
        callback_timeout: None,
    }
}

/// [`IMAGES`] as catalogue entries (`debian-12` → `debian-12.qcow2`).
pub fn images() -> Vec<LibvirtImage> {
    IMAGES
        .iter()
        .map(|v| LibvirtImage {
            name: v.trim_end_matches(".qcow2").into(),
            volume: (*v).into(),
        })
        .collect()
}

pub fn libvirt_dispatcher(name: &str, spec: LibvirtSpec, lookup: &str) -> OSDispatcher {
    OSDispatcher::new(
        name,
        OSDispatcherSpec {
            adapter: AdapterKind::Libvirt,
            provisioner: "osp".into(),
            lookup_interval: Some(lookup.into()),
            max_concurrent: None,
            simulator: None,
            redfish: None,
            libvirt: Some(spec),
            vsphere: None,
        },
    )
}

/// What libvirt holds for one domain.
#[derive(Debug)]
pub struct Seen {
    pub active: bool,
    pub disk: String,
    pub record: Option<Record>,
    pub disks_pool: Vec<String>,
}

/// Read domain `name` and the `disks` pool through `conn`.
pub fn seen(conn: &Connect, name: &str) -> Seen {
    let d = conn.lookup_domain_by_name(name).expect("domain");
    let inactive = d
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .expect("domain xml");
    let disk = match xml::root_disk(&inactive, None).expect("root disk").source {
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
    let pool = conn
        .lookup_storage_pool_by_name("disks")
        .expect("disks pool");
    let mut disks_pool = pool.list_volumes().expect("volumes");
    disks_pool.sort();
    Seen {
        active: d.is_active().expect("state"),
        disk,
        record,
        disks_pool,
    }
}
