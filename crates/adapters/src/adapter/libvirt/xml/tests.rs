//! Domain XML as libvirt writes it (single quotes, cdrom before the disk, several disks).
use super::*;

const DOMAIN: &str = "<domain type='kvm'>
  <name>vm1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <source file='/isos/install.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='data' volume='vm1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>";

#[test]
fn the_first_disk_device_is_the_root_disk() {
    let disk = root_disk(DOMAIN, None).expect("found");
    assert_eq!(disk.target, "vda");
    assert_eq!(
        disk.source,
        DiskSource::File("/var/lib/libvirt/images/vm1.qcow2".into())
    );
}

#[test]
fn a_named_target_picks_that_disk() {
    let disk = root_disk(DOMAIN, Some("vdb")).expect("found");
    assert_eq!(
        disk.source,
        DiskSource::Volume {
            pool: "data".into(),
            volume: "vm1-data".into()
        }
    );
    assert!(matches!(
        root_disk(DOMAIN, Some("vdz")),
        Err(XmlError::NoRootDisk(Some(t))) if t == "vdz"
    ));
}

#[test]
fn a_domain_without_disks_or_with_a_sourceless_disk_is_an_error() {
    let none = "<domain><devices><disk type='file' device='cdrom'><target dev='sda'/></disk></devices></domain>";
    assert!(matches!(
        root_disk(none, None),
        Err(XmlError::NoRootDisk(None))
    ));
    let empty =
        "<domain><devices><disk type='network' device='disk'><target dev='vda'/></disk></devices></domain>";
    assert!(matches!(
        root_disk(empty, None),
        Err(XmlError::NoSource(t, k)) if t == "vda" && k == "network"
    ));
    assert!(root_disk("<domain><devices><disk", None).is_err());
}

#[test]
fn rewriting_the_source_changes_only_that_element() {
    let disk = root_disk(DOMAIN, None).expect("found");
    let new = DiskSource::File("/var/lib/libvirt/images/vm1-osprov-ab12.qcow2".into());
    let out = with_disk_source(DOMAIN, &disk, &new);
    assert_eq!(root_disk(&out, None).expect("still found").source, new);
    let before: Vec<&str> = DOMAIN.lines().collect();
    let after: Vec<&str> = out.lines().collect();
    assert_eq!(before.len(), after.len());
    let changed: Vec<usize> = (0..before.len())
        .filter(|i| before[*i] != after[*i])
        .collect();
    assert_eq!(changed.len(), 1, "{out}");
    assert!(after[changed[0]].contains("vm1-osprov-ab12.qcow2"));
    // Paths with XML specials are escaped.
    let odd = with_disk_source(DOMAIN, &disk, &DiskSource::File("/a'b&c".into()));
    assert_eq!(
        root_disk(&odd, None).expect("found").source,
        DiskSource::File("/a'b&c".into())
    );
}

#[test]
fn the_record_round_trips_and_an_empty_label_is_a_record_of_nothing() {
    let r = Record {
        os: Some("debian-12".into()),
        token: Some("u1/2/1".into()),
        progress: Some(Progress::Recorded),
        previous: Some("vm1.qcow2".into()),
        message: Some("it's <broken> & \"odd\"".into()),
        installer: None,
        seed: Some("/pool/vm1-osprov-cidata-ab.iso".into()),
    };
    assert_eq!(Record::parse(&r.to_xml()).expect("parses"), r);
    let iso = Record {
        installer: Some(Installer {
            iso: "/pool/debian-12.iso".into(),
            undo: Some(crate::adapter::libvirt::installer::Undo {
                cdrom: "hdc".into(),
                cdrom_xml: Some(
                    "<disk type='file' device='cdrom'><target dev='hdc'/></disk>".into(),
                ),
                boot: vec!["hd".into(), "network".into()],
                drive: Some("hdd".into()),
            }),
            reset_from: Some("7".into()),
            started: true,
            drive: Some("/pool/vm1-osprov-cidata-0a1b.iso".into()),
            run: Some("8".into()),
            installed_boot: true,
        }),
        ..r.clone()
    };
    assert_eq!(Record::parse(&iso.to_xml()).expect("parses"), iso);
    let bare = Record {
        installer: Some(Installer {
            iso: "/p/x.iso".into(),
            ..Default::default()
        }),
        ..r
    };
    assert_eq!(Record::parse(&bare.to_xml()).expect("parses"), bare);
    assert_eq!(Record::parse("<host/>").expect("parses"), Record::default());
    let prefixed =
        "<osprov:host xmlns:osprov='https://osprov.io/libvirt/v1' os='a' progress='done'/>";
    let p = Record::parse(prefixed).expect("parses");
    assert_eq!(
        (p.os.as_deref(), p.progress),
        (Some("a"), Some(Progress::Done))
    );
    assert_eq!(Record::parse("").expect("empty"), Record::default());
    assert!(Record::parse("<host os='unterminated/>").is_err());
}

#[test]
fn a_volume_format_is_read_from_its_target_and_written_back() {
    let vol = "<volume type='file'><name>d.qcow2</name><source/><target><path>/p/d.qcow2</path><format type='qcow2'/></target><backingStore><format type='raw'/></backingStore></volume>";
    assert_eq!(volume_format(vol).as_deref(), Some("qcow2"));
    assert_eq!(volume_format("<volume><name>x</name></volume>"), None);
    let made = volume_xml("vm1-osprov-1.qcow2", 1024, Some("qcow2"));
    assert_eq!(volume_format(&made).as_deref(), Some("qcow2"));
    assert!(made.contains("<capacity unit='bytes'>1024</capacity>"));
}
