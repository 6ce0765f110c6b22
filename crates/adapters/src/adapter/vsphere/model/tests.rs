//! VMs read from property-collector answers shaped like vCenter's, and the reconfigure bodies.
use super::*;

const VMS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
<soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>
<token>t-1</token>
<objects><obj type="VirtualMachine">vm-42</obj>
<propSet><name>name</name><val xsi:type="xsd:string">web-1</val></propSet>
<propSet><name>config.instanceUuid</name><val xsi:type="xsd:string">5029-aaaa</val></propSet>
<propSet><name>config.uuid</name><val xsi:type="xsd:string">4229-bbbb</val></propSet>
<propSet><name>config.template</name><val xsi:type="xsd:boolean">false</val></propSet>
<propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOn</val></propSet>
<propSet><name>summary.config.numCpu</name><val xsi:type="xsd:int">2</val></propSet>
<propSet><name>config.extraConfig</name><val xsi:type="ArrayOfOptionValue">
  <OptionValue xsi:type="OptionValue"><key>osprov.token</key><value xsi:type="xsd:string">u1/1/1</value></OptionValue>
  <OptionValue xsi:type="OptionValue"><key>osprov.os</key><value xsi:type="xsd:string">debian-12</value></OptionValue>
</val></propSet>
<propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
  <VirtualDevice xsi:type="VirtualIDEController"><key>200</key></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>2001</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web-1/data.vmdk</fileName><diskMode>persistent</diskMode></backing><controllerKey>1000</controllerKey><unitNumber>1</unitNumber><capacityInKB>1024</capacityInKB></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web-1/web-1.vmdk</fileName><diskMode>persistent</diskMode></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>10485760</capacityInKB></VirtualDevice>
  <VirtualDevice xsi:type="VirtualCdrom"><key>3002</key>
    <backing xsi:type="VirtualCdromIsoBackingInfo"><fileName>[ds1] old.iso</fileName></backing>
    <connectable><startConnected>false</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected></connectable>
    <controllerKey>200</controllerKey><unitNumber>0</unitNumber></VirtualDevice>
</val></propSet>
<propSet><name>config.bootOptions</name><val xsi:type="VirtualMachineBootOptions">
  <bootOrder xsi:type="VirtualMachineBootOptionsBootableEthernetDevice"><deviceKey>4000</deviceKey></bootOrder>
  <bootOrder xsi:type="VirtualMachineBootOptionsBootableDiskDevice"><deviceKey>2000</deviceKey></bootOrder>
</val></propSet>
</objects>
</returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"#;

fn vm() -> Vm {
    let (vms, token) = parse_vms(VMS).expect("parsed");
    assert_eq!(token.as_deref(), Some("t-1"));
    vms.into_iter().next().expect("one VM")
}

#[test]
fn a_vm_is_read_with_its_devices_boot_order_and_record() {
    let vm = vm();
    assert_eq!(vm.moref, Some(MoRef::new("VirtualMachine", "vm-42")));
    assert_eq!((vm.name.as_str(), vm.id().as_str()), ("web-1", "5029-aaaa"));
    assert_eq!((vm.power.as_str(), vm.num_cpu.as_str()), ("poweredOn", "2"));
    assert_eq!(vm.extra(keys::TOKEN), Some("u1/1/1"));
    // The disk the boot order names, not the first one in device order.
    let disk = vm.boot_disk().cloned().expect("boot disk");
    assert_eq!(
        (
            disk.key,
            disk.controller_key,
            disk.unit_number,
            disk.capacity_kb
        ),
        (2000, 1000, Some(0), Some(10485760))
    );
    assert_eq!(disk.file.as_deref(), Some("[ds1] web-1/web-1.vmdk"));
    assert_eq!(vm.disks.len(), 2);
    let cdrom = vm.cdrom.clone().expect("cdrom");
    assert_eq!(
        (cdrom.key, cdrom.controller_key, cdrom.unit_number),
        (3002, 200, Some(0))
    );
    assert_eq!(cdrom.iso.as_deref(), Some("[ds1] old.iso"));
    assert_eq!(vm.boot, [BootDev::Net(4000), BootDev::Disk(2000)]);
    assert!(!attached(&vm, "[ds1] old.iso"), "not connected at power-on");
}

#[test]
fn attach_puts_the_cdrom_first_and_keeps_what_it_replaces() {
    let vm = vm();
    let m = MoRef::new("VirtualMachine", "vm-42");
    let guestinfo: BTreeMap<String, String> =
        [("guestinfo.userdata".to_string(), "I2Nsb3Vk".to_string())].into();
    let body = attach(
        &vm,
        &m,
        ("u1/2/1", "debian-12", "[ds1] new & shiny.iso"),
        "http://c/cb/k.s",
        &guestinfo,
    )
    .expect("body");
    assert!(
        body.contains(
            "<key>guestinfo.userdata</key><value xsi:type=\"xsd:string\">I2Nsb3Vk</value>"
        ),
        "the configuration goes with the installer: {body}"
    );
    assert!(
        body.contains("<fileName>[ds1] new &amp; shiny.iso</fileName>"),
        "{body}"
    );
    assert!(body.contains("<startConnected>true</startConnected>"));
    let cd = body.find("BootableCdromDevice").expect("cdrom boot");
    let net = body.find("BootableEthernetDevice").expect("then net");
    assert!(cd < net);
    assert!(body.contains("<key>osprov.previousBoot</key><value xsi:type=\"xsd:string\">net:4000,disk:2000</value>"), "{body}");
    assert!(body.contains(
        "<key>osprov.previousIso</key><value xsi:type=\"xsd:string\">[ds1] old.iso</value>"
    ));
    // Schema order: deviceChange, extraConfig, bootOptions.
    let (d, e, b) = (
        body.find("<deviceChange>"),
        body.find("<extraConfig>"),
        body.find("<bootOptions>"),
    );
    assert!(d < e && e < b, "{body}");
    let mut no_cdrom = vm.clone();
    no_cdrom.cdrom = None;
    assert!(attach(
        &no_cdrom,
        &m,
        ("t", "o", "[d] i.iso"),
        "u",
        &BTreeMap::new()
    )
    .unwrap_err()
    .contains("no CD-ROM"));
}

#[test]
fn detach_restores_the_previous_iso_and_boot_order() {
    let mut vm = vm();
    vm.extra
        .insert(keys::PREVIOUS_ISO.into(), "[ds1] old.iso".into());
    vm.extra
        .insert(keys::PREVIOUS_BOOT.into(), "net:4000,disk:2000".into());
    let m = MoRef::new("VirtualMachine", "vm-42");
    let body = detach(&vm, &m, "done");
    assert!(body.contains("<fileName>[ds1] old.iso</fileName>"));
    assert!(body.contains("<startConnected>false</startConnected>"));
    assert!(!body.contains("BootableCdromDevice"), "{body}");
    assert!(body
        .contains("<key>guestinfo.osprov.callback</key><value xsi:type=\"xsd:string\"></value>"));
    vm.extra.remove(keys::PREVIOUS_ISO);
    vm.extra.remove(keys::PREVIOUS_BOOT);
    let body = detach(&vm, &m, "failed");
    assert!(body.contains("VirtualCdromRemoteAtapiBackingInfo"));
    assert!(body.contains("BootableDiskDevice\"><deviceKey>2000"));
}

#[test]
fn boot_orders_round_trip_through_text() {
    let order = vec![
        BootDev::Cdrom,
        BootDev::Disk(2000),
        BootDev::Net(4000),
        BootDev::Floppy,
    ];
    assert_eq!(boot_from_string(&boot_to_string(&order)), order);
    assert!(boot_from_string("").is_empty());
    assert_eq!(boot_from_string("disk:x,usb,cdrom"), [BootDev::Cdrom]);
}

#[test]
fn updates_apply_to_known_vms_and_name_the_others() {
    let text = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>3</version><filterSet><filter type="PropertyFilter">f1</filter><objectSet><kind>modify</kind><obj type="VirtualMachine">vm-42</obj><changeSet><name>runtime.powerState</name><op>assign</op><val>poweredOff</val></changeSet></objectSet><objectSet><kind>enter</kind><obj type="VirtualMachine">vm-7</obj></objectSet><objectSet><kind>leave</kind><obj type="VirtualMachine">vm-2</obj></objectSet></filterSet></returnval></WaitForUpdatesExResponse></Body></Envelope>"#;
    let mut known = std::collections::HashMap::new();
    let v = vm();
    let m42 = MoRef::new("VirtualMachine", "vm-42");
    known.insert(m42.clone(), v.clone());
    known.insert(MoRef::new("VirtualMachine", "vm-2"), v);
    let u = apply_updates(text, &mut known).expect("parsed");
    assert_eq!(u.version.as_deref(), Some("3"));
    assert_eq!(u.applied, std::slice::from_ref(&m42));
    assert_eq!(u.unknown, [MoRef::new("VirtualMachine", "vm-7")]);
    assert_eq!(u.left, [MoRef::new("VirtualMachine", "vm-2")]);
    assert_eq!(known[&m42].power, "poweredOff");
    assert_eq!(known[&m42].name, "web-1", "other properties kept");
    assert_eq!(known.len(), 1);
    let empty = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><WaitForUpdatesExResponse xmlns="urn:vim25"></WaitForUpdatesExResponse></Body></Envelope>"#;
    assert_eq!(
        apply_updates(empty, &mut known).expect("parsed"),
        Updates::default()
    );
}
