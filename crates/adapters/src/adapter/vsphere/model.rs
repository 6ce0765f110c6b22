//! The vim25 data the vSphere adapter reads and writes, as pure functions: virtual machines from
//! `RetrievePropertiesEx`/`WaitForUpdatesEx` answers, and the request bodies osprov sends
//! (property specs, the reconfigure spec that attaches or detaches an installer ISO).
//!
//! Element order in the request bodies follows the vim25 schema's sequences
//! (`VirtualMachineConfigSpec`: `deviceChange`, then `extraConfig`, then `bootOptions`), which
//! vCenter checks and vcsim does not.
use super::soap::{child_text, esc, moref, xsi_type, MoRef, SoapError};
use std::collections::BTreeMap;

/// The VM properties discovery reads.
pub const VM_PROPERTIES: [&str; 11] = [
    "name",
    "config.uuid",
    "config.instanceUuid",
    "config.template",
    "config.guestId",
    "config.extraConfig",
    "config.hardware.device",
    "config.bootOptions",
    "runtime.powerState",
    "summary.config.numCpu",
    "summary.config.memorySizeMB",
];

/// extraConfig keys osprov keeps on a VM (its record, like libvirt's metadata element).
pub mod keys {
    /// The request token of the last operation.
    pub const TOKEN: &str = "osprov.token";
    /// The OS the last operation installs (installed, once `done`).
    pub const OS: &str = "osprov.os";
    /// `recorded` (installer attached), `done`, `failed`, `cancelled`.
    pub const PROGRESS: &str = "osprov.progress";
    /// The CD-ROM's ISO before osprov attached the installer (empty: none).
    pub const PREVIOUS_ISO: &str = "osprov.previousIso";
    /// The boot order before (`cdrom,disk:2000,net:4000,floppy`; empty: none set).
    pub const PREVIOUS_BOOT: &str = "osprov.previousBoot";
    /// The callback URL, for the guest (`vmtoolsd --cmd "info-get guestinfo.osprov.callback"`).
    pub const CALLBACK: &str = "guestinfo.osprov.callback";
}

/// A boot device in `bootOptions.bootOrder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootDev {
    Cdrom,
    Disk(i32),
    Net(i32),
    Floppy,
}

impl BootDev {
    pub(super) fn xml(&self) -> String {
        match self {
            BootDev::Cdrom => {
                "<bootOrder xsi:type=\"VirtualMachineBootOptionsBootableCdromDevice\"/>".into()
            }
            BootDev::Floppy => {
                "<bootOrder xsi:type=\"VirtualMachineBootOptionsBootableFloppyDevice\"/>".into()
            }
            BootDev::Disk(k) => format!(
                "<bootOrder xsi:type=\"VirtualMachineBootOptionsBootableDiskDevice\"><deviceKey>{k}</deviceKey></bootOrder>"
            ),
            BootDev::Net(k) => format!(
                "<bootOrder xsi:type=\"VirtualMachineBootOptionsBootableEthernetDevice\"><deviceKey>{k}</deviceKey></bootOrder>"
            ),
        }
    }
}

/// A boot order as osprov stores it in extraConfig.
pub fn boot_to_string(order: &[BootDev]) -> String {
    order
        .iter()
        .map(|d| match d {
            BootDev::Cdrom => "cdrom".to_string(),
            BootDev::Floppy => "floppy".to_string(),
            BootDev::Disk(k) => format!("disk:{k}"),
            BootDev::Net(k) => format!("net:{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`boot_to_string`] (unknown entries are dropped).
pub fn boot_from_string(s: &str) -> Vec<BootDev> {
    s.split(',')
        .filter_map(|e| match e.split_once(':') {
            None if e == "cdrom" => Some(BootDev::Cdrom),
            None if e == "floppy" => Some(BootDev::Floppy),
            Some(("disk", k)) => k.parse().ok().map(BootDev::Disk),
            Some(("net", k)) => k.parse().ok().map(BootDev::Net),
            _ => None,
        })
        .collect()
}

/// A VM's CD-ROM drive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cdrom {
    pub key: i32,
    pub controller_key: i32,
    pub unit_number: Option<i32>,
    /// The ISO it holds (`[ds] path`), if its backing is an ISO file.
    pub iso: Option<String>,
    pub start_connected: bool,
    pub connected: bool,
}

/// A VM's virtual disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    pub key: i32,
    pub controller_key: i32,
    pub unit_number: Option<i32>,
    /// Its file (`[ds] dir/name.vmdk`), if file-backed.
    pub file: Option<String>,
    pub capacity_kb: Option<i64>,
}

/// One virtual machine as osprov sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vm {
    pub moref: Option<MoRef>,
    pub name: String,
    pub uuid: String,
    pub instance_uuid: String,
    pub template: bool,
    pub guest_id: String,
    pub power: String,
    pub num_cpu: String,
    pub memory_mb: String,
    pub extra: BTreeMap<String, String>,
    pub cdrom: Option<Cdrom>,
    /// Its virtual disks, in device order.
    pub disks: Vec<Disk>,
    pub boot: Vec<BootDev>,
}

impl Vm {
    /// The host id osprov uses: the instance UUID (unique in a vCenter), else the BIOS UUID.
    pub fn id(&self) -> String {
        if self.instance_uuid.is_empty() {
            self.uuid.clone()
        } else {
            self.instance_uuid.clone()
        }
    }

    /// The disk it boots from: the first disk in its boot order, else its first disk.
    pub fn boot_disk(&self) -> Option<&Disk> {
        self.boot
            .iter()
            .find_map(|b| match b {
                BootDev::Disk(k) => self.disks.iter().find(|d| d.key == *k),
                _ => None,
            })
            .or_else(|| self.disks.first())
    }

    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn int(node: roxmltree::Node<'_, '_>, name: &str) -> Option<i32> {
    child_text(node, name).and_then(|t| t.trim().parse().ok())
}

fn flag(node: roxmltree::Node<'_, '_>, name: &str) -> bool {
    child_text(node, name).is_some_and(|t| t.trim() == "true")
}

fn read_devices(vm: &mut Vm, val: roxmltree::Node<'_, '_>) {
    for d in val.children().filter(|c| c.is_element()) {
        match xsi_type(d).as_deref() {
            Some("VirtualCdrom") if vm.cdrom.is_none() => {
                let backing = children(d, "backing").next();
                let iso = backing
                    .filter(|b| xsi_type(*b).as_deref() == Some("VirtualCdromIsoBackingInfo"))
                    .and_then(|b| child_text(b, "fileName"));
                let conn = children(d, "connectable").next();
                vm.cdrom = Some(Cdrom {
                    key: int(d, "key").unwrap_or_default(),
                    controller_key: int(d, "controllerKey").unwrap_or_default(),
                    unit_number: int(d, "unitNumber"),
                    iso,
                    start_connected: conn.is_some_and(|c| flag(c, "startConnected")),
                    connected: conn.is_some_and(|c| flag(c, "connected")),
                });
            }
            Some("VirtualDisk") => {
                let backing = children(d, "backing").next();
                vm.disks.push(Disk {
                    key: int(d, "key").unwrap_or_default(),
                    controller_key: int(d, "controllerKey").unwrap_or_default(),
                    unit_number: int(d, "unitNumber"),
                    file: backing.and_then(|b| child_text(b, "fileName")),
                    capacity_kb: child_text(d, "capacityInKB").and_then(|t| t.trim().parse().ok()),
                });
            }
            _ => {}
        }
    }
}

fn read_boot(vm: &mut Vm, val: roxmltree::Node<'_, '_>) {
    vm.boot = children(val, "bootOrder")
        .filter_map(|b| match xsi_type(b).as_deref() {
            Some("VirtualMachineBootOptionsBootableCdromDevice") => Some(BootDev::Cdrom),
            Some("VirtualMachineBootOptionsBootableFloppyDevice") => Some(BootDev::Floppy),
            Some("VirtualMachineBootOptionsBootableDiskDevice") => {
                int(b, "deviceKey").map(BootDev::Disk)
            }
            Some("VirtualMachineBootOptionsBootableEthernetDevice") => {
                int(b, "deviceKey").map(BootDev::Net)
            }
            _ => None,
        })
        .collect();
}

/// Apply one property (`name`, `val`) to `vm`.
fn apply(vm: &mut Vm, name: &str, val: Option<roxmltree::Node<'_, '_>>) {
    let text = || val.and_then(|v| v.text()).unwrap_or_default().to_string();
    match name {
        "name" => vm.name = text(),
        "config.uuid" => vm.uuid = text(),
        "config.instanceUuid" => vm.instance_uuid = text(),
        "config.template" => vm.template = text() == "true",
        "config.guestId" => vm.guest_id = text(),
        "runtime.powerState" => vm.power = text(),
        "summary.config.numCpu" => vm.num_cpu = text(),
        "summary.config.memorySizeMB" => vm.memory_mb = text(),
        "config.extraConfig" => {
            vm.extra = val
                .into_iter()
                .flat_map(|v| v.children().filter(|c| c.is_element()))
                .filter_map(|o| Some((child_text(o, "key")?, child_text(o, "value")?)))
                .collect();
        }
        "config.hardware.device" => {
            vm.cdrom = None;
            vm.disks.clear();
            if let Some(v) = val {
                read_devices(vm, v);
            }
        }
        "config.bootOptions" => {
            vm.boot.clear();
            if let Some(v) = val {
                read_boot(vm, v);
            }
        }
        _ => {}
    }
}

/// The VMs of a `RetrievePropertiesEx` (or `ContinueRetrievePropertiesEx`) answer, and the
/// continuation token when there are more.
pub fn parse_vms(text: &str) -> Result<(Vec<Vm>, Option<String>), SoapError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| SoapError::Malformed(e.to_string()))?;
    let Some(rv) = doc.descendants().find(|n| n.has_tag_name("returnval")) else {
        return Ok((Vec::new(), None));
    };
    let mut vms = Vec::new();
    for o in children(rv, "objects") {
        let mut vm = Vm {
            moref: children(o, "obj").next().map(moref),
            ..Default::default()
        };
        for p in children(o, "propSet") {
            let name = child_text(p, "name").unwrap_or_default();
            apply(&mut vm, &name, children(p, "val").next());
        }
        vms.push(vm);
    }
    Ok((vms, child_text(rv, "token")))
}

/// What one `WaitForUpdatesEx` answer says: the new version, the VMs whose changes were applied
/// to the known copies, the VMs not known yet (to be read), and the VMs that left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Updates {
    pub version: Option<String>,
    pub applied: Vec<MoRef>,
    pub unknown: Vec<MoRef>,
    pub left: Vec<MoRef>,
}

/// Read a `WaitForUpdatesEx` answer, applying each changed property to the VM in `known` (the
/// feed follows vCenter without reading a VM again).
pub fn apply_updates(
    text: &str,
    known: &mut std::collections::HashMap<MoRef, Vm>,
) -> Result<Updates, SoapError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| SoapError::Malformed(e.to_string()))?;
    let mut u = Updates::default();
    let Some(rv) = doc.descendants().find(|n| n.has_tag_name("returnval")) else {
        return Ok(u);
    };
    u.version = child_text(rv, "version");
    for fs in children(rv, "filterSet") {
        for os in children(fs, "objectSet") {
            let Some(obj) = children(os, "obj").next().map(moref) else {
                continue;
            };
            if child_text(os, "kind").as_deref() == Some("leave") {
                known.remove(&obj);
                u.left.push(obj);
                continue;
            }
            let Some(vm) = known.get_mut(&obj) else {
                u.unknown.push(obj);
                continue;
            };
            for change in children(os, "changeSet") {
                let name = child_text(change, "name").unwrap_or_default();
                let val = match child_text(change, "op").as_deref() {
                    Some("remove" | "indirectRemove") => None,
                    _ => children(change, "val").next(),
                };
                apply(vm, &name, val);
            }
            u.applied.push(obj);
        }
    }
    Ok(u)
}

/// The `propSet` of the VM properties.
fn prop_set() -> String {
    let paths: String = VM_PROPERTIES
        .iter()
        .map(|p| format!("<pathSet>{p}</pathSet>"))
        .collect();
    format!("<propSet><type>VirtualMachine</type>{paths}</propSet>")
}

/// An object spec over every VM of `view` (a ContainerView of VirtualMachines).
fn view_object_set(view: &MoRef) -> String {
    format!(
        "<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>view</name>\
         <type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
        view.xml("obj")
    )
}

/// `RetrievePropertiesEx` of every VM in `view`.
pub fn retrieve_all(pc: &MoRef, view: &MoRef) -> String {
    format!(
        "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}<specSet>{}{}</specSet>\
         <options><maxObjects>500</maxObjects></options></RetrievePropertiesEx>",
        pc.xml("_this"),
        prop_set(),
        view_object_set(view)
    )
}

/// `RetrievePropertiesEx` of one VM.
pub fn retrieve_one(pc: &MoRef, vm: &MoRef) -> String {
    format!(
        "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}<specSet>{}<objectSet>{}<skip>false</skip>\
         </objectSet></specSet><options/></RetrievePropertiesEx>",
        pc.xml("_this"),
        prop_set(),
        vm.xml("obj")
    )
}

/// A filter for `WaitForUpdatesEx` over the VMs of `view` (power, name, config changes).
pub fn create_filter(pc: &MoRef, view: &MoRef) -> String {
    format!(
        "<CreateFilter xmlns=\"urn:vim25\">{}<spec><propSet><type>VirtualMachine</type>\
         <pathSet>name</pathSet><pathSet>runtime.powerState</pathSet>\
         <pathSet>config.extraConfig</pathSet></propSet>{}</spec>\
         <partialUpdates>false</partialUpdates></CreateFilter>",
        pc.xml("_this"),
        view_object_set(view)
    )
}

pub(super) fn option_value(key: &str, value: &str) -> String {
    format!(
        "<extraConfig><key>{}</key><value xsi:type=\"xsd:string\">{}</value></extraConfig>",
        esc(key),
        esc(value)
    )
}

fn cdrom_edit(c: &Cdrom, iso: Option<&str>, on: bool) -> String {
    let backing = match iso {
        Some(iso) => format!(
            "<backing xsi:type=\"VirtualCdromIsoBackingInfo\"><fileName>{}</fileName></backing>",
            esc(iso)
        ),
        None => {
            "<backing xsi:type=\"VirtualCdromRemoteAtapiBackingInfo\"><deviceName></deviceName>\
                 <useAutoDetect>false</useAutoDetect></backing>"
                .into()
        }
    };
    let unit = c
        .unit_number
        .map(|u| format!("<unitNumber>{u}</unitNumber>"))
        .unwrap_or_default();
    format!(
        "<deviceChange><operation>edit</operation><device xsi:type=\"VirtualCdrom\"><key>{}</key>\
         {backing}<connectable><startConnected>{on}</startConnected>\
         <allowGuestControl>true</allowGuestControl><connected>{on}</connected></connectable>\
         <controllerKey>{}</controllerKey>{unit}</device></deviceChange>",
        c.key, c.controller_key
    )
}

pub(super) fn reconfigure(vm: &MoRef, spec: &str) -> String {
    format!(
        "<ReconfigVM_Task xmlns=\"urn:vim25\">{}<spec>{spec}</spec></ReconfigVM_Task>",
        vm.xml("_this")
    )
}

/// The reconfigure that records `token` and attaches the installer: the CD-ROM holds `iso` and
/// is connected, the boot order starts with the CD-ROM, the guest gets `callback` and the
/// host's configuration as `guestinfo` keys. What it replaces is kept in extraConfig for
/// [`detach`]; the configuration keys stay (cloud-init reads them on every boot).
pub fn attach(
    vm: &Vm,
    moref: &MoRef,
    target: (&str, &str, &str),
    callback: &str,
    guestinfo: &BTreeMap<String, String>,
) -> Result<String, String> {
    let (token, os, iso) = target;
    let cdrom = vm.cdrom.as_ref().ok_or_else(|| {
        format!(
            "VM {} has no CD-ROM drive to attach the installer to",
            vm.name
        )
    })?;
    let mut order = vec![BootDev::Cdrom];
    if vm.boot.is_empty() {
        order.extend(vm.boot_disk().map(|d| BootDev::Disk(d.key)));
    } else {
        order.extend(vm.boot.iter().filter(|b| **b != BootDev::Cdrom).cloned());
    }
    let boot: String = order.iter().map(BootDev::xml).collect();
    let extra: String = [
        (keys::TOKEN, token),
        (keys::OS, os),
        (keys::PROGRESS, "recorded"),
        (keys::PREVIOUS_ISO, cdrom.iso.as_deref().unwrap_or_default()),
        (keys::PREVIOUS_BOOT, &boot_to_string(&vm.boot)),
        (keys::CALLBACK, callback),
    ]
    .into_iter()
    .chain(guestinfo.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    .map(|(k, v)| option_value(k, v))
    .collect();
    Ok(reconfigure(
        moref,
        &format!(
            "{}{extra}<bootOptions>{boot}</bootOptions>",
            cdrom_edit(cdrom, Some(iso), true)
        ),
    ))
}

/// The reconfigure that detaches the installer and records how the operation ended: the CD-ROM
/// disconnected and back to its previous ISO (or empty), the previous boot order, the callback
/// URL removed (an empty value deletes an extraConfig key).
pub fn detach(vm: &Vm, moref: &MoRef, progress: &str) -> String {
    let previous_iso = vm.extra(keys::PREVIOUS_ISO).map(str::to_string);
    let mut boot = boot_from_string(vm.extra(keys::PREVIOUS_BOOT).unwrap_or_default());
    if boot.is_empty() {
        // No order was set before; booting the disk first is what an unset order does.
        boot.extend(vm.boot_disk().map(|d| BootDev::Disk(d.key)));
    }
    let device = vm
        .cdrom
        .as_ref()
        .map(|c| cdrom_edit(c, previous_iso.as_deref(), false))
        .unwrap_or_default();
    let extra: String = [
        (keys::PROGRESS, progress),
        (keys::CALLBACK, ""),
        (keys::PREVIOUS_ISO, ""),
        (keys::PREVIOUS_BOOT, ""),
    ]
    .iter()
    .map(|(k, v)| option_value(k, v))
    .collect();
    let boot: String = boot.iter().map(BootDev::xml).collect();
    reconfigure(
        moref,
        &format!("{device}{extra}<bootOptions>{boot}</bootOptions>"),
    )
}

/// Whether the VM's CD-ROM holds `iso`, connected at power-on.
pub fn attached(vm: &Vm, iso: &str) -> bool {
    vm.cdrom
        .as_ref()
        .is_some_and(|c| c.iso.as_deref() == Some(iso) && c.start_connected)
}

#[cfg(test)]
mod tests;
