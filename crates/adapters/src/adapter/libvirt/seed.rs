//! The `image` strategy's config drive (a NoCloud seed, as cloud images read it at first boot)
//! in the domain XML, as pure functions over strings: attach the drive's volume on a CD-ROM of
//! its own, tell whether it is attached, and remove it again once the new disk's first boot has
//! reported. The boot order is left alone: the domain boots its (new) disk, and cloud-init finds
//! the drive by its label.
//!
//! Edits reuse the `iso` strategy's XML scanner ([`super::installer`]): byte ranges replaced in
//! the XML libvirt wrote, everything else left as it was.
use super::installer::{cdrom_element, free_target, scan, Edits};
use super::xml::XmlError;

/// `domain_xml` with the drive at `path` on a new read-only CD-ROM (IDE, SATA on q35 machines).
/// Safe to repeat: a domain that has it already is returned unchanged.
pub fn attach(domain_xml: &str, path: &str) -> Result<String, XmlError> {
    let l = scan(domain_xml)?;
    if attached_in(&l, path) {
        return Ok(domain_xml.to_string());
    }
    let devices_end = l
        .devices_end
        .ok_or_else(|| XmlError::Unsupported("the domain has no <devices> element".into()))?;
    let q35 = l.machine.as_deref().is_some_and(|m| m.contains("q35"));
    let bus = l
        .disks
        .iter()
        .find(|d| d.device == "cdrom")
        .and_then(|d| d.bus.clone())
        .unwrap_or_else(|| if q35 { "sata" } else { "ide" }.to_string());
    let target = free_target(&l, &bus, None);
    let mut edits = Edits::default();
    edits.insert(devices_end, cdrom_element(path, &target, &bus));
    Ok(edits.apply(domain_xml))
}

fn attached_in(l: &super::installer::Layout, path: &str) -> bool {
    l.disks
        .iter()
        .any(|d| d.device == "cdrom" && d.source_file.as_deref() == Some(path))
}

/// Whether a CD-ROM of `domain_xml` holds the drive at `path`.
pub fn attached(domain_xml: &str, path: &str) -> Result<bool, XmlError> {
    Ok(attached_in(&scan(domain_xml)?, path))
}

/// `domain_xml` without the CD-ROMs holding the drive at `path`. Safe to repeat.
pub fn detach(domain_xml: &str, path: &str) -> Result<String, XmlError> {
    let l = scan(domain_xml)?;
    let mut edits = Edits::default();
    for d in l
        .disks
        .iter()
        .filter(|d| d.device == "cdrom" && d.source_file.as_deref() == Some(path))
    {
        edits.replace(d.span, "");
    }
    Ok(edits.apply(domain_xml))
}

/// The elements that empty the drive's CD-ROMs on the running domain
/// (`virDomainUpdateDeviceFlags`, live): the guest loses the medium at once, not at its next
/// cold start.
pub fn eject_elements(domain_xml: &str, path: &str) -> Vec<String> {
    let Ok(l) = scan(domain_xml) else {
        return Vec::new();
    };
    l.disks
        .iter()
        .filter(|d| d.device == "cdrom" && d.source_file.as_deref() == Some(path))
        .filter_map(|d| {
            Some(format!(
                "<disk type='file' device='cdrom'><target dev='{}' bus='{}'/><readonly/></disk>",
                d.target.as_deref()?,
                d.bus.as_deref().unwrap_or("ide")
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='qemu'><name>vm</name><os><type machine='pc'>hvm</type>\
        <boot dev='hd'/></os><devices><disk type='file' device='disk'><source file='/p/vm.img'/>\
        <target dev='vda' bus='virtio'/></disk></devices></domain>";

    #[test]
    fn the_drive_goes_on_a_cdrom_of_its_own_and_comes_off_again() {
        let with = attach(DOMAIN, "/p/vm-cidata.iso").expect("attach");
        assert!(with.contains(
            "<disk type='file' device='cdrom'><source file='/p/vm-cidata.iso'/><target dev='hdc' bus='ide'/><readonly/></disk></devices>"
        ), "{with}");
        assert!(
            with.contains("<boot dev='hd'/>"),
            "the boot order is left alone"
        );
        assert!(attached(&with, "/p/vm-cidata.iso").expect("scan"));
        assert!(!attached(DOMAIN, "/p/vm-cidata.iso").expect("scan"));
        assert_eq!(attach(&with, "/p/vm-cidata.iso").expect("again"), with);
        assert_eq!(
            eject_elements(&with, "/p/vm-cidata.iso"),
            ["<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"]
        );
        let without = detach(&with, "/p/vm-cidata.iso").expect("detach");
        assert_eq!(without, DOMAIN);
        assert_eq!(detach(&without, "/p/vm-cidata.iso").expect("again"), DOMAIN);
    }

    #[test]
    fn a_q35_machine_gets_a_sata_cdrom() {
        let q35 = DOMAIN.replace("machine='pc'", "machine='pc-q35-8.2'");
        let with = attach(&q35, "/p/d.iso").expect("attach");
        assert!(with.contains("<target dev='sda' bus='sata'/>"), "{with}");
    }
}
