//! The domain XML of the `iso` strategy, as pure functions over strings: attach an installer ISO
//! as the domain's CD-ROM, boot from it first, hand the guest its callback URL, and undo all of it
//! afterwards.
//!
//! - The callback URL reaches the guest as an SMBIOS type 11 OEM string,
//!   `io.systemd.credential:osprov.callback=<url>` (`<sysinfo type='smbios'><oemStrings>` plus
//!   `<os><smbios mode='sysinfo'/>`): the installer reads it with `dmidecode -t 11`, and systemd
//!   in the guest imports it as the credential `osprov.callback`.
//! - The CD-ROM: the domain's first CD-ROM device takes the ISO (its original element is kept for
//!   the undo); a domain without one gets a new IDE (SATA on q35 machines) CD-ROM.
//! - Boot order: `<os><boot dev='cdrom'/>` first, then the domain's own boot devices. Domains
//!   using per-device `<boot order>` and domains with their own SMBIOS sysinfo are refused with a
//!   clear reason rather than half-changed.
//!
//! Like [`super::xml`], edits are byte ranges replaced in the XML libvirt wrote; everything osprov
//! does not touch stays as it was. [`Undo`] is what the domain's metadata record keeps so that a
//! restarted controller can restore the domain.
use super::xml::{attr, pos, XmlError};
use quick_xml::events::Event;
use quick_xml::Reader;

/// The SMBIOS OEM string prefix carrying the callback URL.
pub const CALLBACK_PREFIX: &str = "io.systemd.credential:osprov.callback=";

/// What [`attach`] changed, so [`detach`] can restore it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Undo {
    /// Target device of the CD-ROM holding the ISO.
    pub cdrom: String,
    /// The CD-ROM's element before osprov took it over; `None`: osprov added the device.
    pub cdrom_xml: Option<String>,
    /// The domain's `<os><boot dev>` list before (empty: it had none).
    pub boot: Vec<String>,
    /// Target device of the CD-ROM osprov added for the config drive, if it added one.
    pub drive: Option<String>,
}

/// One `<disk>` of `<devices>`.
#[derive(Clone, Debug, Default)]
pub(super) struct Disk {
    pub(super) device: String,
    pub(super) target: Option<String>,
    pub(super) bus: Option<String>,
    pub(super) source_file: Option<String>,
    pub(super) span: (usize, usize),
}

/// Where the parts [`attach`] and [`detach`] change are in a domain's XML.
#[derive(Debug, Default)]
pub(super) struct Layout {
    os_start: Option<usize>,
    os_end: Option<usize>,
    pub(super) machine: Option<String>,
    boots: Vec<(String, (usize, usize))>,
    smbios: Option<(usize, usize)>,
    pub(super) devices_end: Option<usize>,
    pub(super) disks: Vec<Disk>,
    device_boot_order: bool,
    /// `<sysinfo type='smbios'>` elements, and whether they carry osprov's callback.
    sysinfos: Vec<((usize, usize), bool)>,
}

/// Append a text or entity event's characters to `out`.
fn push_text(out: &mut String, event: &Event<'_>) {
    match event {
        Event::Text(t) => out.push_str(&t.decode().unwrap_or_default()),
        Event::GeneralRef(r) => {
            if let Ok(Some(c)) = r.resolve_char_ref() {
                out.push(c);
            } else if let Ok(name) = r.decode() {
                let resolved = quick_xml::escape::resolve_predefined_entity(&name);
                out.push_str(resolved.unwrap_or_default());
            }
        }
        _ => {}
    }
}

pub(super) fn scan(xml: &str) -> Result<Layout, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut l = Layout::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut disk: Option<Disk> = None;
    let mut sysinfo: Option<(usize, bool)> = None;
    let mut entry = String::new();
    loop {
        let start = pos(&reader);
        let event = reader.read_event()?;
        let end = pos(&reader);
        let parent = path.last().map(Vec::as_slice);
        let in_domain = path.len() == 1;
        match &event {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().as_ref().to_vec();
                let empty = matches!(event, Event::Empty(_));
                match name.as_slice() {
                    b"os" if in_domain => l.os_start = Some(start),
                    b"type" if parent == Some(b"os") => l.machine = attr(e, "machine")?,
                    b"boot" if parent == Some(b"os") => {
                        l.boots
                            .push((attr(e, "dev")?.unwrap_or_default(), (start, end)));
                    }
                    b"boot" if attr(e, "order")?.is_some() => l.device_boot_order = true,
                    b"smbios" if parent == Some(b"os") => l.smbios = Some((start, end)),
                    b"sysinfo" if in_domain && attr(e, "type")?.as_deref() == Some("smbios") => {
                        if empty {
                            l.sysinfos.push(((start, end), false));
                        } else {
                            sysinfo = Some((start, false));
                        }
                    }
                    b"disk" if parent == Some(b"devices") => {
                        let d = Disk {
                            device: attr(e, "device")?.unwrap_or_else(|| "disk".into()),
                            span: (start, end),
                            ..Default::default()
                        };
                        if empty {
                            l.disks.push(d);
                        } else {
                            disk = Some(d);
                        }
                    }
                    b"target" if parent == Some(b"disk") => {
                        if let Some(d) = disk.as_mut() {
                            d.target = attr(e, "dev")?;
                            d.bus = attr(e, "bus")?;
                        }
                    }
                    b"source" if parent == Some(b"disk") => {
                        if let Some(d) = disk.as_mut() {
                            d.source_file = attr(e, "file")?;
                        }
                    }
                    _ => {}
                }
                if !empty {
                    path.push(name);
                }
            }
            Event::Text(_) | Event::GeneralRef(_) if parent == Some(b"entry") => {
                push_text(&mut entry, &event);
            }
            Event::End(e) => {
                match e.name().as_ref() {
                    b"entry" => {
                        if let Some(s) = sysinfo.as_mut() {
                            s.1 |= entry.trim().starts_with(CALLBACK_PREFIX);
                        }
                        entry.clear();
                    }
                    b"os" if path.len() == 2 => l.os_end = Some(start),
                    b"devices" if path.len() == 2 => l.devices_end = Some(start),
                    b"disk" if path.len() == 3 => {
                        if let Some(mut d) = disk.take() {
                            d.span.1 = end;
                            l.disks.push(d);
                        }
                    }
                    b"sysinfo" if path.len() == 2 => {
                        if let Some((s, ours)) = sysinfo.take() {
                            l.sysinfos.push(((s, end), ours));
                        }
                    }
                    _ => {}
                }
                path.pop();
            }
            Event::Eof => return Ok(l),
            _ => {}
        }
    }
}

/// Replacements of byte ranges, applied together.
#[derive(Default)]
pub(super) struct Edits(Vec<(usize, usize, String)>);

impl Edits {
    pub(super) fn replace(&mut self, span: (usize, usize), with: impl Into<String>) {
        self.0.push((span.0, span.1, with.into()));
    }

    pub(super) fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.0.push((at, at, text.into()));
    }

    pub(super) fn apply(self, xml: &str) -> String {
        // Ranges never overlap. Apply the last first so earlier offsets stay valid; at one offset
        // a replacement goes before the insertions, and insertions land in the order made.
        let mut edits: Vec<(usize, (usize, usize, String))> =
            self.0.into_iter().enumerate().collect();
        edits.sort_by_key(|(i, (a, b, _))| (std::cmp::Reverse(*a), a == b, std::cmp::Reverse(*i)));
        let mut out = xml.to_string();
        for (_, (a, b, t)) in edits {
            if a <= b && b <= out.len() {
                out.replace_range(a..b, &t);
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn boot_elements(devs: &[String]) -> String {
    devs.iter()
        .map(|d| format!("<boot dev='{}'/>", escape(d)))
        .collect()
}

/// A free CD-ROM target on `bus`, other than `taken`.
pub(super) fn free_target(l: &Layout, bus: &str, taken: Option<&str>) -> String {
    let used: Vec<&str> = l
        .disks
        .iter()
        .filter_map(|d| d.target.as_deref())
        .chain(taken)
        .collect();
    let candidates: Vec<String> = if bus == "ide" {
        ["hdc", "hdd", "hdb", "hda"].map(String::from).to_vec()
    } else {
        (b'a'..=b'z').map(|c| format!("sd{}", c as char)).collect()
    };
    candidates
        .into_iter()
        .find(|t| !used.contains(&t.as_str()))
        .unwrap_or_else(|| "sdz".into())
}

pub(super) fn cdrom_element(iso: &str, target: &str, bus: &str) -> String {
    format!(
        "<disk type='file' device='cdrom'><source file='{}'/><target dev='{}' bus='{}'/><readonly/></disk>",
        escape(iso),
        escape(target),
        escape(bus)
    )
}

/// `domain_xml` booting `iso` from a CD-ROM first, with `callback_url` for the guest and, when
/// given, the config drive `drive` on a CD-ROM of its own; and what to keep to undo it.
pub fn attach(
    domain_xml: &str,
    iso: &str,
    drive: Option<&str>,
    callback_url: &str,
) -> Result<(String, Undo), XmlError> {
    let l = scan(domain_xml)?;
    let (Some(os_start), Some(os_end)) = (l.os_start, l.os_end) else {
        return Err(XmlError::Unsupported(
            "the domain has no <os> element".into(),
        ));
    };
    let devices_end = l
        .devices_end
        .ok_or_else(|| XmlError::Unsupported("the domain has no <devices> element".into()))?;
    if l.device_boot_order {
        return Err(XmlError::Unsupported(
            "the domain sets per-device <boot order>; the iso strategy boots through <os><boot dev>"
                .into(),
        ));
    }
    if l.smbios.is_some() || !l.sysinfos.is_empty() {
        return Err(XmlError::Unsupported(
            "the domain has its own SMBIOS settings; the iso strategy passes the callback URL \
             through SMBIOS OEM strings"
                .into(),
        ));
    }
    let mut edits = Edits::default();
    let (undo, bus) = match l.disks.iter().find(|d| d.device == "cdrom") {
        Some(d) => {
            let target = d.target.clone().unwrap_or_else(|| "hdc".into());
            let bus = d.bus.clone().unwrap_or_else(|| "ide".into());
            edits.replace(d.span, cdrom_element(iso, &target, &bus));
            let original = domain_xml.get(d.span.0..d.span.1).unwrap_or_default();
            let undo = Undo {
                cdrom: target,
                cdrom_xml: Some(original.replace(['\n', '\r'], " ")),
                ..Undo::default()
            };
            (undo, bus)
        }
        None => {
            let q35 = l.machine.as_deref().is_some_and(|m| m.contains("q35"));
            let bus = if q35 { "sata" } else { "ide" };
            let target = free_target(&l, bus, None);
            edits.insert(devices_end, cdrom_element(iso, &target, bus));
            let undo = Undo {
                cdrom: target,
                ..Undo::default()
            };
            (undo, bus.to_string())
        }
    };
    let drive = drive.map(|path| {
        let target = free_target(&l, &bus, Some(&undo.cdrom));
        edits.insert(devices_end, cdrom_element(path, &target, &bus));
        target
    });
    let boot: Vec<String> = l.boots.iter().map(|(d, _)| d.clone()).collect();
    for (_, span) in &l.boots {
        edits.replace(*span, "");
    }
    let mut order = vec!["cdrom".to_string()];
    let rest = if boot.is_empty() {
        vec!["hd".to_string()]
    } else {
        boot.clone()
    };
    order.extend(rest.into_iter().filter(|d| d != "cdrom"));
    edits.insert(os_end, boot_elements(&order));
    edits.insert(os_end, "<smbios mode='sysinfo'/>");
    edits.insert(
        os_start,
        format!(
            "<sysinfo type='smbios'><oemStrings><entry>{}</entry></oemStrings></sysinfo>",
            escape(&format!("{CALLBACK_PREFIX}{callback_url}"))
        ),
    );
    Ok((
        edits.apply(domain_xml),
        Undo {
            boot,
            drive,
            ..undo
        },
    ))
}

/// `domain_xml` with what [`attach`] changed restored. Safe to repeat.
pub fn detach(domain_xml: &str, undo: &Undo) -> Result<String, XmlError> {
    let l = scan(domain_xml)?;
    let mut edits = Edits::default();
    if let Some(d) = l
        .disks
        .iter()
        .find(|d| d.device == "cdrom" && d.target.as_deref() == Some(undo.cdrom.as_str()))
    {
        edits.replace(d.span, undo.cdrom_xml.clone().unwrap_or_default());
    }
    if let Some(drive) = &undo.drive {
        for d in l
            .disks
            .iter()
            .filter(|d| d.device == "cdrom" && d.target.as_deref() == Some(drive.as_str()))
        {
            edits.replace(d.span, "");
        }
    }
    for (_, span) in &l.boots {
        edits.replace(*span, "");
    }
    if let Some(os_end) = l.os_end {
        edits.insert(os_end, boot_elements(&undo.boot));
    }
    let ours: Vec<(usize, usize)> = l.sysinfos.iter().filter(|s| s.1).map(|s| s.0).collect();
    if !ours.is_empty() {
        if let Some(span) = l.smbios {
            edits.replace(span, "");
        }
    }
    for span in ours {
        edits.replace(span, "");
    }
    Ok(edits.apply(domain_xml))
}

/// Whether the CD-ROM `target` holds `iso` in `domain_xml`.
pub fn attached(domain_xml: &str, target: &str, iso: &str) -> Result<bool, XmlError> {
    Ok(scan(domain_xml)?.disks.iter().any(|d| {
        d.device == "cdrom"
            && d.target.as_deref() == Some(target)
            && d.source_file.as_deref() == Some(iso)
    }))
}

/// The callback URL osprov handed the guest, if the domain carries one.
pub fn callback_url(domain_xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(domain_xml);
    let mut entry: Option<String> = None;
    loop {
        let event = reader.read_event().ok()?;
        match &event {
            Event::Start(e) if e.name().as_ref() == b"entry" => entry = Some(String::new()),
            Event::End(e) if e.name().as_ref() == b"entry" => {
                let text = entry.take().unwrap_or_default();
                if let Some(url) = text.trim().strip_prefix(CALLBACK_PREFIX) {
                    return Some(url.to_string());
                }
            }
            Event::Text(_) | Event::GeneralRef(_) => {
                if let Some(text) = entry.as_mut() {
                    push_text(text, &event);
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The elements that eject the CD-ROMs of `undo` (the installer's, then the config drive's) on a
/// running domain (`virDomainUpdateDeviceFlags`).
pub fn eject_elements(domain_xml: &str, undo: &Undo) -> Vec<String> {
    let Ok(l) = scan(domain_xml) else {
        return Vec::new();
    };
    std::iter::once(undo.cdrom.as_str())
        .chain(undo.drive.as_deref())
        .filter_map(|target| {
            let d = l
                .disks
                .iter()
                .find(|d| d.device == "cdrom" && d.target.as_deref() == Some(target))?;
            Some(format!(
                "<disk type='file' device='cdrom'><target dev='{}' bus='{}'/><readonly/></disk>",
                escape(target),
                escape(d.bus.as_deref().unwrap_or("ide"))
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
