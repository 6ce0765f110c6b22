//! The `template` strategy on vSphere, pure: where the new disk goes, the request bodies (record,
//! copy, swap, boot-order fix, delete, finish), and the step machine that orders them so a VM's
//! disk is replaced at most once per request, across controller restarts and vCenter outages.
//!
//! The order: **Record** (one reconfigure writes the token, the OS, the new disk's path and the
//! VM's power state into extraConfig, before anything changes) → **Copy** the template's disk
//! next to the VM's (`CopyVirtualDisk_Task`; repeating it is harmless, nothing uses the copy
//! yet) → **PowerOff** → **Swap** (one reconfigure removes the boot disk, deleting its file, and
//! adds the copy on the same controller slot) → **FixBoot** when the boot order named the old
//! disk → **PowerOn** → the outcome recorded → **MarkDone**. The wipe is the swap, and the VM
//! itself shows whether it happened (its disk's file is the copy), so no record can disagree with
//! it. Before the swap an outcome (a vCenter fault, the request gone) **abandons** the operation:
//! the copy is deleted and the VM powered on again if it ran before. After the swap the new OS is
//! there; the operation runs to its end.
use super::model::{option_value, reconfigure, BootDev, Vm};
use super::soap::{esc, MoRef};
use crate::adapter::store::{token_key, OutcomeKind};

/// extraConfig keys of the `template` strategy (beside `model::keys`).
pub mod keys {
    /// The disk file osprov copies the template to and swaps in.
    pub const DISK: &str = "osprov.disk";
    /// The template disk's capacity (KB), for the added disk device.
    pub const DISK_CAPACITY: &str = "osprov.diskCapacityKB";
    /// `poweredOn` when the VM ran before osprov powered it off.
    pub const PREVIOUS_POWER: &str = "osprov.previousPower";
}

/// The file the template's disk is copied to: beside the VM's boot disk, named after the token.
pub fn target_file(vm: &Vm, token: &str) -> Result<String, String> {
    let file = vm
        .boot_disk()
        .and_then(|d| d.file.clone())
        .ok_or_else(|| format!("VM {} has no file-backed disk to replace", vm.name))?;
    let (ds, path) = file
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .ok_or_else(|| format!("VM {}'s disk {file} is not a datastore path", vm.name))?;
    let dir = path.rsplit_once('/').map(|(d, _)| format!("{d}/"));
    Ok(format!(
        "[{ds}] {}osprov-{}.vmdk",
        dir.unwrap_or_default(),
        token_key(token)
    ))
}

/// The reconfigure that records the operation on the VM before anything changes, with the
/// host's configuration as `guestinfo` keys for the copied disk's first boot.
pub fn record(
    vm: &Vm,
    moref: &MoRef,
    op: (&str, &str, &str),
    capacity_kb: i64,
    guestinfo: &std::collections::BTreeMap<String, String>,
) -> String {
    use super::model::keys as k;
    let (token, os, target) = op;
    let extra: String = [
        (k::TOKEN, token),
        (k::OS, os),
        (k::PROGRESS, "recorded"),
        (keys::DISK, target),
        (keys::DISK_CAPACITY, &capacity_kb.to_string()),
        (keys::PREVIOUS_POWER, vm.power.as_str()),
    ]
    .into_iter()
    .chain(guestinfo.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    .map(|(k, v)| option_value(k, v))
    .collect();
    reconfigure(moref, &extra)
}

/// The reconfigure that swaps the boot disk for `target` in one task: the old disk is removed
/// and its file deleted, the copy is added on the same controller slot.
pub fn swap(vm: &Vm, moref: &MoRef, target: &str) -> Result<String, String> {
    let old = vm
        .boot_disk()
        .ok_or_else(|| format!("VM {} has no disk to replace", vm.name))?;
    let unit = old
        .unit_number
        .map(|u| format!("<unitNumber>{u}</unitNumber>"))
        .unwrap_or_default();
    let capacity = vm
        .extra(keys::DISK_CAPACITY)
        .and_then(|c| c.parse::<i64>().ok())
        .or(old.capacity_kb)
        .unwrap_or_default();
    let old_backing = old
        .file
        .as_deref()
        .map(|f| {
            format!(
                "<backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{}</fileName>\
                 <diskMode>persistent</diskMode></backing>",
                esc(f)
            )
        })
        .unwrap_or_default();
    Ok(reconfigure(
        moref,
        &format!(
            "<deviceChange><operation>remove</operation><fileOperation>destroy</fileOperation>\
             <device xsi:type=\"VirtualDisk\"><key>{}</key>{old_backing}<controllerKey>{}\
             </controllerKey>{unit}<capacityInKB>{}</capacityInKB></device></deviceChange>\
             <deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\">\
             <key>-100</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{}\
             </fileName><diskMode>persistent</diskMode></backing><controllerKey>{}</controllerKey>\
             {unit}<capacityInKB>{capacity}</capacityInKB></device></deviceChange>",
            old.key,
            old.controller_key,
            old.capacity_kb.unwrap_or_default(),
            esc(target),
            old.controller_key
        ),
    ))
}

/// Whether the boot order names a disk the VM no longer has (the one the swap removed).
pub fn boot_stale(vm: &Vm) -> bool {
    vm.boot
        .iter()
        .any(|b| matches!(b, BootDev::Disk(k) if !vm.disks.iter().any(|d| d.key == *k)))
}

/// The reconfigure that points the boot order's stale disk entries at the new disk.
pub fn fix_boot(vm: &Vm, moref: &MoRef, target: &str) -> Result<String, String> {
    let new = vm
        .disks
        .iter()
        .find(|d| d.file.as_deref() == Some(target))
        .ok_or_else(|| format!("VM {} does not have the disk {target}", vm.name))?;
    let order: String = vm
        .boot
        .iter()
        .map(|b| match b {
            BootDev::Disk(k) if !vm.disks.iter().any(|d| d.key == *k) => BootDev::Disk(new.key),
            other => other.clone(),
        })
        .map(|b| b.xml())
        .collect();
    Ok(reconfigure(
        moref,
        &format!("<bootOptions>{order}</bootOptions>"),
    ))
}

/// The reconfigure that records how the operation ended and drops the working keys.
pub fn finish(moref: &MoRef, progress: &str) -> String {
    let extra: String = [
        (super::model::keys::PROGRESS, progress),
        (keys::DISK_CAPACITY, ""),
        (keys::PREVIOUS_POWER, ""),
    ]
    .iter()
    .map(|(k, v)| option_value(k, v))
    .collect();
    reconfigure(moref, &extra)
}

/// `CopyVirtualDisk_Task` of `source` to `target` (overwriting a partial copy).
pub fn copy(vdm: &MoRef, dc: &MoRef, source: &str, target: &str) -> String {
    format!(
        "<CopyVirtualDisk_Task xmlns=\"urn:vim25\">{}<sourceName>{}</sourceName>{}\
         <destName>{}</destName>{}<force>true</force></CopyVirtualDisk_Task>",
        vdm.xml("_this"),
        esc(source),
        dc.xml("sourceDatacenter"),
        esc(target),
        dc.xml("destDatacenter")
    )
}

/// `DeleteVirtualDisk_Task` of `target`.
pub fn delete(vdm: &MoRef, dc: &MoRef, target: &str) -> String {
    format!(
        "<DeleteVirtualDisk_Task xmlns=\"urn:vim25\">{}<name>{}</name>{}</DeleteVirtualDisk_Task>",
        vdm.xml("_this"),
        esc(target),
        dc.xml("datacenter")
    )
}

/// The datacenter above a VM: one read following `parent` from the VM through its folders.
pub fn datacenter_of(pc: &MoRef, vm: &MoRef) -> String {
    format!(
        "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}<specSet><propSet><type>Datacenter</type>\
         <pathSet>name</pathSet></propSet><objectSet>{}<skip>true</skip>\
         <selectSet xsi:type=\"TraversalSpec\"><name>vmUp</name><type>VirtualMachine</type>\
         <path>parent</path><skip>false</skip><selectSet><name>folderUp</name></selectSet>\
         </selectSet><selectSet xsi:type=\"TraversalSpec\"><name>folderUp</name>\
         <type>Folder</type><path>parent</path><skip>false</skip><selectSet><name>folderUp\
         </name></selectSet></selectSet></objectSet></specSet><options/></RetrievePropertiesEx>",
        pc.xml("_this"),
        vm.xml("obj")
    )
}

/// What the VM and the operation record show of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The VM's extraConfig carries this token.
    pub recorded: bool,
    /// ... with a finished progress (`done`, `failed`, `cancelled`).
    pub finished: bool,
    /// The record says the copy succeeded.
    pub copied: bool,
    /// The VM's disk is the copy.
    pub swapped: bool,
    /// The boot order names a disk the VM no longer has.
    pub boot_stale: bool,
    pub running: bool,
    /// The record's outcome; `Cancelled` when the record is gone (the request was deleted).
    pub outcome: Option<OutcomeKind>,
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Record,
    Copy,
    PowerOff,
    Swap,
    FixBoot,
    PowerOn,
    /// Write the `Succeeded` outcome into the record.
    RecordSuccess,
    /// Write how it ended on the VM (`done` or `failed`).
    MarkDone(OutcomeKind),
    /// Before the swap: delete the copy, power the VM on if it ran, write how it ended.
    Abandon(OutcomeKind),
    Finished,
}

pub fn next_step(o: &Observed) -> Step {
    if o.finished {
        return Step::Finished;
    }
    if !o.recorded {
        return match o.outcome {
            Some(_) => Step::Finished,
            None => Step::Record,
        };
    }
    if o.swapped {
        if o.boot_stale {
            return Step::FixBoot;
        }
        return match (o.outcome, o.running) {
            (Some(k @ (OutcomeKind::Succeeded | OutcomeKind::Failed)), _) => Step::MarkDone(k),
            // The request is gone, but the new OS is on the disk: boot it and say so.
            (Some(OutcomeKind::Cancelled), true) => Step::MarkDone(OutcomeKind::Succeeded),
            (Some(OutcomeKind::Cancelled) | None, false) => Step::PowerOn,
            (None, true) => Step::RecordSuccess,
        };
    }
    match o.outcome {
        Some(kind) => Step::Abandon(kind),
        None if !o.copied => Step::Copy,
        None if o.running => Step::PowerOff,
        None => Step::Swap,
    }
}

#[cfg(test)]
mod tests;
