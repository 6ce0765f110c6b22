//! The image strategy as a step machine: given what libvirt shows now, the one next step of an
//! operation. Pure, so the order that makes a restart safe is unit-tested without libvirt.
//!
//! The operation's progress lives in libvirt itself, never only in osprov's memory: the token is
//! in the domain's metadata record before anything changes, the fresh disk is a volume whose name
//! derives from the token, and the record names the volume it replaces. Whatever step a
//! controller died in, the next one looks at the domain and the pool and goes on from there:
//! a clone that exists is never made again, a disk already switched is not switched again.
use super::xml::{Progress, Record};

/// What libvirt shows of one operation's domain and volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    /// The domain's record (for this operation's token).
    pub record: &'a Record,
    pub active: bool,
    /// The volume the root disk uses now.
    pub disk_volume: &'a str,
    /// The volume this operation clones the image into.
    pub target_volume: &'a str,
    pub target_exists: bool,
    /// The replaced volume (the record's `previous`) still exists.
    pub previous_exists: bool,
}

/// The next step of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Power the domain off (hard: the disk is about to be replaced anyway).
    PowerOff,
    /// Clone the image volume into the target volume.
    Clone,
    /// Point the root disk at the target volume (redefine the domain).
    SwitchDisk,
    /// Delete the replaced volume.
    DeletePrevious,
    /// Start the domain.
    Start,
    /// Record the operation as done.
    MarkDone,
    /// Nothing left to do.
    Finished,
}

/// The one next step.
pub fn next_step(o: &Observed<'_>) -> Step {
    if o.record.progress.is_some_and(Progress::is_finished) {
        return Step::Finished;
    }
    let on_target = o.disk_volume == o.target_volume;
    match (on_target, o.active, o.target_exists) {
        (false, true, _) => Step::PowerOff,
        (false, false, false) => Step::Clone,
        (false, false, true) => Step::SwitchDisk,
        (true, _, _)
            if o.previous_exists && o.record.previous.as_deref() != Some(o.target_volume) =>
        {
            Step::DeletePrevious
        }
        (true, false, _) => Step::Start,
        (true, true, _) => Step::MarkDone,
    }
}

/// The volume an operation clones into: `<domain>-osprov-<hash of token><extension of the image>`,
/// so it is found again by name after a restart.
pub fn target_volume(domain: &str, token: &str, image_volume: &str) -> String {
    let ext = image_volume
        .rfind('.')
        .map(|i| &image_volume[i..])
        .filter(|e| e.len() > 1 && !e.contains('/'))
        .unwrap_or("");
    format!("{domain}-osprov-{}{ext}", crate::ident::short_hash(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            os: Some("debian-12".into()),
            token: Some("u1/1/1".into()),
            progress: Some(Progress::Recorded),
            previous: Some("vm1.qcow2".into()),
            message: None,
            installer: None,
        }
    }

    /// What libvirt holds: the record, power, the root disk and the pool's volumes.
    #[derive(Clone, Debug)]
    struct Libvirt {
        rec: Record,
        active: bool,
        disk: String,
        volumes: Vec<String>,
    }

    fn target() -> String {
        target_volume("vm1", "u1/1/1", "debian-12.qcow2")
    }

    fn fresh(active: bool) -> Libvirt {
        Libvirt {
            rec: record(),
            active,
            disk: "vm1.qcow2".into(),
            volumes: vec!["vm1.qcow2".into(), "other-vm.qcow2".into()],
        }
    }

    /// Run the machine until it finishes; the steps taken and every state seen before a step.
    fn run(mut lv: Libvirt) -> (Vec<Step>, Vec<Libvirt>, Libvirt) {
        let target = target();
        let (mut steps, mut seen) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            seen.push(lv.clone());
            let o = Observed {
                record: &lv.rec,
                active: lv.active,
                disk_volume: &lv.disk,
                target_volume: &target,
                target_exists: lv.volumes.contains(&target),
                previous_exists: lv
                    .volumes
                    .iter()
                    .any(|v| Some(v.as_str()) == lv.rec.previous.as_deref()),
            };
            let step = next_step(&o);
            steps.push(step);
            let previous = lv.rec.previous.clone();
            match step {
                Step::PowerOff => lv.active = false,
                Step::Clone => lv.volumes.push(target.clone()),
                Step::SwitchDisk => lv.disk = target.clone(),
                Step::DeletePrevious => lv.volumes.retain(|v| Some(v) != previous.as_ref()),
                Step::Start => lv.active = true,
                Step::MarkDone => lv.rec.progress = Some(Progress::Done),
                Step::Finished => break,
            }
        }
        (steps, seen, lv)
    }

    #[test]
    fn a_running_domain_is_stopped_cloned_switched_cleaned_started_and_marked() {
        let (steps, _, end) = run(fresh(true));
        assert_eq!(
            steps,
            [
                Step::PowerOff,
                Step::Clone,
                Step::SwitchDisk,
                Step::DeletePrevious,
                Step::Start,
                Step::MarkDone,
                Step::Finished
            ]
        );
        assert_eq!(end.volumes, ["other-vm.qcow2".to_string(), target()]);
        assert_eq!((end.disk, end.active), (target(), true));
        assert_eq!(run(fresh(false)).0[0], Step::Clone);
    }

    #[test]
    fn resuming_from_any_state_a_restart_can_find_repeats_nothing() {
        let (all, seen, end) = run(fresh(true));
        for (k, state) in seen.into_iter().enumerate() {
            let (rest, _, resumed_end) = run(state);
            assert_eq!(rest, all[k..], "resumed after {k} steps");
            assert_eq!(resumed_end.volumes, end.volumes);
        }
    }

    #[test]
    fn a_finished_record_has_no_next_step() {
        for p in [Progress::Done, Progress::Failed, Progress::Cancelled] {
            let rec = Record {
                progress: Some(p),
                ..record()
            };
            let o = Observed {
                record: &rec,
                active: false,
                disk_volume: "vm1.qcow2",
                target_volume: "x",
                target_exists: false,
                previous_exists: true,
            };
            assert_eq!(next_step(&o), Step::Finished);
        }
    }

    #[test]
    fn the_target_volume_is_named_after_the_token() {
        let a = target();
        assert!(a.starts_with("vm1-osprov-") && a.ends_with(".qcow2"), "{a}");
        assert_ne!(a, target_volume("vm1", "u1/1/2", "debian-12.qcow2"));
        assert!(!target_volume("vm1", "t", "raw-image").contains('.'));
    }
}
