//! The `template` strategy's paths and bodies, and its step machine resumed from every state.
use super::*;
use crate::adapter::vsphere::model::Disk;

fn vm() -> Vm {
    Vm {
        name: "web-1".into(),
        power: "poweredOn".into(),
        disks: vec![Disk {
            key: 2000,
            controller_key: 1000,
            unit_number: Some(0),
            file: Some("[ds1] web-1/web-1.vmdk".into()),
            capacity_kb: Some(1024),
        }],
        boot: vec![BootDev::Net(4000), BootDev::Disk(2000)],
        ..Default::default()
    }
}

const TOKEN: &str = "8d3e-Ab/2/1";

#[test]
fn the_copy_goes_beside_the_boot_disk_named_after_the_token() {
    assert_eq!(
        target_file(&vm(), TOKEN).as_deref(),
        Ok("[ds1] web-1/osprov-8d3e-ab-2-1.vmdk")
    );
    let mut top = vm();
    top.disks[0].file = Some("[ds1] web-1.vmdk".into());
    assert_eq!(
        target_file(&top, TOKEN).as_deref(),
        Ok("[ds1] osprov-8d3e-ab-2-1.vmdk")
    );
    let mut diskless = vm();
    diskless.disks.clear();
    assert!(target_file(&diskless, TOKEN)
        .unwrap_err()
        .contains("no file-backed disk"));
    let mut odd = vm();
    odd.disks[0].file = Some("/vmfs/web-1.vmdk".into());
    assert!(target_file(&odd, TOKEN)
        .unwrap_err()
        .contains("not a datastore path"));
}

#[test]
fn the_swap_removes_the_old_disk_and_adds_the_copy_on_its_slot_in_one_task() {
    let mut v = vm();
    v.extra.insert(keys::DISK_CAPACITY.into(), "4096".into());
    let vmref = MoRef::new("VirtualMachine", "vm-42");
    let body = swap(&v, &vmref, "[ds1] web-1/osprov-x.vmdk").expect("body");
    let remove = body.find("<operation>remove</operation>").expect("remove");
    let add = body.find("<operation>add</operation>").expect("add");
    assert!(remove < add, "the slot is freed before it is taken: {body}");
    assert!(body.contains(
        "<fileOperation>destroy</fileOperation><device xsi:type=\"VirtualDisk\"><key>2000</key>"
    ));
    assert!(body.contains("<fileName>[ds1] web-1/osprov-x.vmdk</fileName>"));
    assert_eq!(
        body.matches("<controllerKey>1000</controllerKey>").count(),
        2
    );
    assert_eq!(body.matches("<unitNumber>0</unitNumber>").count(), 2);
    assert!(body.contains("<capacityInKB>4096</capacityInKB>"));
    assert!(body.starts_with("<ReconfigVM_Task"));
}

#[test]
fn a_stale_boot_entry_is_pointed_at_the_new_disk() {
    let mut v = vm();
    assert!(!boot_stale(&v));
    v.disks[0].key = 2001;
    v.disks[0].file = Some("[ds1] web-1/osprov-x.vmdk".into());
    assert!(boot_stale(&v));
    let body = fix_boot(
        &v,
        &MoRef::new("VirtualMachine", "vm-42"),
        "[ds1] web-1/osprov-x.vmdk",
    )
    .expect("body");
    assert!(body.contains("<deviceKey>4000</deviceKey>"), "{body}");
    assert!(body.contains("<deviceKey>2001</deviceKey>"), "{body}");
    assert!(!body.contains("2000"), "{body}");
    assert!(fix_boot(
        &v,
        &MoRef::new("VirtualMachine", "vm-42"),
        "[ds1] other.vmdk"
    )
    .is_err());
}

#[test]
fn the_record_keeps_the_power_state_and_the_copy_overwrites_a_partial_one() {
    let guestinfo = [("guestinfo.metadata".to_string(), "aWQ6IHg=".to_string())].into();
    let body = record(
        &vm(),
        &MoRef::new("VirtualMachine", "vm-42"),
        (TOKEN, "ubuntu", "[ds1] web-1/osprov-x.vmdk"),
        2048,
        &guestinfo,
    );
    for (k, v) in [
        ("guestinfo.metadata", "aWQ6IHg="),
        ("osprov.token", TOKEN),
        ("osprov.progress", "recorded"),
        ("osprov.disk", "[ds1] web-1/osprov-x.vmdk"),
        ("osprov.diskCapacityKB", "2048"),
        ("osprov.previousPower", "poweredOn"),
    ] {
        assert!(
            body.contains(&format!(
                "<key>{k}</key><value xsi:type=\"xsd:string\">{v}</value>"
            )),
            "{k} in {body}"
        );
    }
    let dc = MoRef::new("Datacenter", "datacenter-2");
    let vdm = MoRef::new("VirtualDiskManager", "VirtualDiskManager");
    let c = copy(&vdm, &dc, "[ds1] t/t.vmdk", "[ds1] web-1/osprov-x.vmdk");
    assert!(c.contains("<sourceDatacenter type=\"Datacenter\">datacenter-2</sourceDatacenter>"));
    assert!(c.contains("<destDatacenter type=\"Datacenter\">datacenter-2</destDatacenter>"));
    assert!(c.contains("<force>true</force>"));
    assert!(delete(&vdm, &dc, "[ds1] a&b.vmdk").contains("<name>[ds1] a&amp;b.vmdk</name>"));
}

fn fresh() -> Observed {
    Observed {
        recorded: false,
        finished: false,
        copied: false,
        swapped: false,
        boot_stale: false,
        running: true,
        outcome: None,
    }
}

/// Run until finished, as a vCenter that does what it is asked; the steps, the states seen and
/// how many swaps happened.
fn run(mut o: Observed, names_old_disk: bool) -> (Vec<Step>, Vec<Observed>, u32) {
    let (mut steps, mut seen, mut swaps) = (Vec::new(), Vec::new(), 0);
    for _ in 0..20 {
        seen.push(o.clone());
        let s = next_step(&o);
        steps.push(s);
        match s {
            Step::Record => o.recorded = true,
            Step::Copy => o.copied = true,
            Step::PowerOff => o.running = false,
            Step::Swap => {
                (o.swapped, o.boot_stale) = (true, names_old_disk);
                swaps += 1;
            }
            Step::FixBoot => o.boot_stale = false,
            Step::PowerOn => o.running = true,
            Step::RecordSuccess => o.outcome = Some(OutcomeKind::Succeeded),
            Step::MarkDone(_) | Step::Abandon(_) => o.finished = true,
            Step::Finished => break,
        }
    }
    (steps, seen, swaps)
}

#[test]
fn record_copy_power_off_swap_fix_boot_power_on_done() {
    let (steps, _, swaps) = run(fresh(), true);
    assert_eq!(
        steps,
        [
            Step::Record,
            Step::Copy,
            Step::PowerOff,
            Step::Swap,
            Step::FixBoot,
            Step::PowerOn,
            Step::RecordSuccess,
            Step::MarkDone(OutcomeKind::Succeeded),
            Step::Finished
        ]
    );
    assert_eq!(swaps, 1);
    let off = Observed {
        running: false,
        ..fresh()
    };
    assert!(!run(off, false).0.contains(&Step::PowerOff));
}

#[test]
fn resuming_anywhere_never_swaps_twice() {
    let (all, seen, _) = run(fresh(), true);
    for (k, state) in seen.into_iter().enumerate() {
        let already = u32::from(state.swapped);
        let (rest, _, swaps) = run(state, true);
        assert_eq!(rest, all[k..], "resumed after {k}");
        assert_eq!(swaps + already, 1, "resumed after {k}");
    }
}

#[test]
fn an_outcome_before_the_swap_abandons_and_after_it_runs_to_the_end() {
    for kind in [OutcomeKind::Failed, OutcomeKind::Cancelled] {
        let before = Observed {
            recorded: true,
            copied: true,
            outcome: Some(kind),
            ..fresh()
        };
        assert_eq!(run(before, false).0, [Step::Abandon(kind), Step::Finished]);
        let unrecorded = Observed {
            outcome: Some(kind),
            ..fresh()
        };
        assert_eq!(next_step(&unrecorded), Step::Finished);
    }
    // The request was deleted after the swap: the VM still boots its new disk.
    let gone = Observed {
        recorded: true,
        copied: true,
        swapped: true,
        running: false,
        outcome: Some(OutcomeKind::Cancelled),
        ..fresh()
    };
    assert_eq!(
        run(gone, false).0,
        [
            Step::PowerOn,
            Step::MarkDone(OutcomeKind::Succeeded),
            Step::Finished
        ]
    );
    // vCenter refused the power-on after the swap: the failure is recorded, nothing repeats.
    let refused = Observed {
        recorded: true,
        copied: true,
        swapped: true,
        running: false,
        outcome: Some(OutcomeKind::Failed),
        ..fresh()
    };
    let (steps, _, swaps) = run(refused, false);
    assert_eq!(steps, [Step::MarkDone(OutcomeKind::Failed), Step::Finished]);
    assert_eq!(swaps, 0);
}
