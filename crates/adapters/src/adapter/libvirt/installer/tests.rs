//! Attach and detach on domain XML as libvirt writes it: with and without a CD-ROM, with and
//! without boot devices, and the shapes the strategy refuses.
use super::*;

const WITH_CDROM: &str = "<domain type='kvm'>
  <name>vm1</name>
  <os>
    <type arch='x86_64' machine='pc-i440fx-8.2'>hvm</type>
    <boot dev='hd'/>
    <boot dev='network'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <address type='drive' controller='0' bus='1' target='0' unit='0'/>
    </disk>
  </devices>
</domain>";

const NO_CDROM_Q35: &str = "<domain type='kvm'><name>vm2</name>\
<os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>\
<devices><disk type='file' device='disk'><source file='/p/vm2.qcow2'/><target dev='sda' bus='sata'/></disk></devices>\
</domain>";

const ISO: &str = "/pool/debian-12.iso";
const URL: &str = "http://osprov:8082/callback/k.s?a=1&b=2";

#[test]
fn an_existing_cdrom_takes_the_iso_and_boots_first() {
    let (xml, undo) = attach(WITH_CDROM, ISO, None, URL).expect("attach");
    assert!(attached(&xml, "hdc", ISO).expect("scan"));
    assert!(!attached(WITH_CDROM, "hdc", ISO).expect("scan"));
    assert_eq!(undo.cdrom, "hdc");
    assert_eq!(undo.boot, ["hd", "network"]);
    assert!(undo
        .cdrom_xml
        .as_deref()
        .is_some_and(|x| x.contains("controller='0'")));
    assert!(
        xml.contains(
            "<boot dev='cdrom'/><boot dev='hd'/><boot dev='network'/><smbios mode='sysinfo'/></os>"
        ),
        "{xml}"
    );
    assert_eq!(xml.matches("<boot ").count(), 3);
    assert_eq!(callback_url(&xml).as_deref(), Some(URL));
    assert!(xml.contains("<sysinfo type='smbios'><oemStrings><entry>io.systemd.credential:osprov.callback=http://osprov:8082/callback/k.s?a=1&amp;b=2</entry></oemStrings></sysinfo>"));
    // The root disk is untouched.
    assert!(xml.contains("<source file='/var/lib/libvirt/images/vm1.qcow2'/>"));
}

#[test]
fn detach_restores_the_domain_byte_for_byte_and_repeats_safely() {
    for original in [WITH_CDROM, NO_CDROM_Q35] {
        let (xml, undo) = attach(original, ISO, None, URL).expect("attach");
        let restored = detach(&xml, &undo).expect("detach");
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&restored), squash(original));
        assert_eq!(detach(&restored, &undo).expect("again"), restored);
        assert_eq!(callback_url(&restored), None);
    }
}

#[test]
fn a_domain_without_cdrom_gets_one_on_the_machines_bus() {
    let (xml, undo) = attach(NO_CDROM_Q35, ISO, None, URL).expect("attach");
    assert_eq!(undo.cdrom_xml, None);
    assert_eq!(undo.cdrom, "sdb", "sda is the disk's");
    assert!(xml.contains("<target dev='sdb' bus='sata'/>"), "{xml}");
    assert!(xml.contains("<boot dev='cdrom'/><boot dev='hd'/>"), "{xml}");
    assert!(undo.boot.is_empty());
    let pc = NO_CDROM_Q35
        .replace("pc-q35-8.2", "pc")
        .replace("'sda' bus='sata'", "'vda' bus='virtio'");
    let (xml, undo) = attach(&pc, ISO, None, URL).expect("attach");
    assert_eq!(undo.cdrom, "hdc");
    assert!(xml.contains("bus='ide'"));
}

#[test]
fn the_eject_elements_name_the_cdroms() {
    let (xml, undo) = attach(WITH_CDROM, ISO, None, URL).expect("attach");
    assert_eq!(
        eject_elements(&xml, &undo),
        ["<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"]
    );
    let (xml, undo) = attach(WITH_CDROM, ISO, Some(DRIVE), URL).expect("attach");
    assert_eq!(
        eject_elements(&xml, &undo),
        [
            "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>",
            "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/><readonly/></disk>"
        ]
    );
}

const DRIVE: &str = "/pool/vm1-osprov-cidata-0123abcd.iso";

#[test]
fn the_config_drive_gets_a_cdrom_of_its_own_on_the_same_bus_and_goes_with_detach() {
    for (original, installer, drive, bus) in [
        (WITH_CDROM, "hdc", "hdd", "ide"),
        (NO_CDROM_Q35, "sdb", "sdc", "sata"),
    ] {
        let (xml, undo) = attach(original, ISO, Some(DRIVE), URL).expect("attach");
        assert_eq!(undo.cdrom, installer);
        assert_eq!(undo.drive.as_deref(), Some(drive));
        assert!(attached(&xml, installer, ISO).expect("scan"));
        assert!(attached(&xml, drive, DRIVE).expect("scan"), "{xml}");
        assert!(xml.contains(&format!("<target dev='{drive}' bus='{bus}'/>")));
        let restored = detach(&xml, &undo).expect("detach");
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&restored), squash(original));
        assert!(!restored.contains(DRIVE));
        assert_eq!(detach(&restored, &undo).expect("again"), restored);
    }
}

#[test]
fn unsupported_shapes_are_refused_with_a_reason() {
    let per_device = WITH_CDROM
        .replace("<boot dev='hd'/>", "")
        .replace("<boot dev='network'/>", "")
        .replace(
            "<target dev='vda' bus='virtio'/>",
            "<target dev='vda' bus='virtio'/><boot order='1'/>",
        );
    let e = attach(&per_device, ISO, None, URL).expect_err("per-device boot order");
    assert!(e.to_string().contains("per-device"), "{e}");
    let own_smbios = WITH_CDROM.replace(
        "<os>",
        "<sysinfo type='smbios'><bios><entry name='vendor'>X</entry></bios></sysinfo><os>",
    );
    let e = attach(&own_smbios, ISO, None, URL).expect_err("own sysinfo");
    assert!(e.to_string().contains("SMBIOS"), "{e}");
    let e = attach("<domain><devices/></domain>", ISO, None, URL).expect_err("no os");
    assert!(e.to_string().contains("<os>"), "{e}");
    assert!(attach("<domain><os><boot", ISO, None, URL).is_err());
}
