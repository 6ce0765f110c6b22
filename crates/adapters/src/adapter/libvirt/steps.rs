//! The image strategy as a step machine: given what libvirt shows now, the one next step of an
//! operation. Pure, so the order that makes a restart safe is unit-tested without libvirt.
//!
//! The operation's progress lives in libvirt itself, never only in osprov's memory: the token is
//! in the domain's metadata record before anything changes, the fresh disk is a volume whose name
//! derives from the token, and the record names the volume it replaces. Whatever step a
//! controller died in, the next one looks at the domain and the pool and goes on from there:
//! a clone that exists is never made again, a disk already switched is not switched again.
//!
//! With configuration the operation also has a **seed** (a NoCloud config drive the new disk's
//! first boot reads, as cloud images do): it is attached before that boot, and the operation ends
//! only when the booted OS has reported to its callback URL (or the callback timeout passed);
//! then the seed comes off and its volume is deleted. Provisioned means booted here too.
use super::xml::{Progress, Record};
use crate::adapter::store::OutcomeKind;

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
    /// The operation's seed, when it has one.
    pub seed: Option<Seed>,
}

/// What libvirt and the operation record show of an operation's seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    /// A CD-ROM of the domain's definition holds it.
    pub attached: bool,
    /// What the booted OS reported (a record gone reads as `Cancelled`).
    pub outcome: Option<OutcomeKind>,
    /// No report within the callback timeout.
    pub timed_out: bool,
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
    /// Attach the seed (before the new disk's first boot).
    AttachSeed,
    /// Wait for the booted OS's report.
    Wait,
    /// Record a failed outcome: no report within the callback timeout.
    RecordTimeout,
    /// Take the seed off the domain (live and in its definition).
    DetachSeed,
    /// Record the operation's end (deleting the seed's volume first, if there is one).
    MarkFinished(OutcomeKind),
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
        (true, active, _) => match o.seed {
            None if active => Step::MarkFinished(OutcomeKind::Succeeded),
            None => Step::Start,
            Some(seed) => seeded(seed, active),
        },
    }
}

/// On the new disk, with a seed: boot it with the seed, wait for the report, take the seed off.
fn seeded(seed: Seed, active: bool) -> Step {
    match (seed.outcome, seed.timed_out, seed.attached, active) {
        (Some(_), _, true, _) => Step::DetachSeed,
        (Some(kind), _, false, _) => Step::MarkFinished(kind),
        (None, true, _, _) => Step::RecordTimeout,
        // Started without its seed (the definition changed under osprov): stop, attach, start.
        (None, false, false, true) => Step::PowerOff,
        (None, false, false, false) => Step::AttachSeed,
        (None, false, true, false) => Step::Start,
        (None, false, true, true) => Step::Wait,
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
            seed: None,
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
                seed: None,
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
                Step::MarkFinished(_) => lv.rec.progress = Some(Progress::Done),
                Step::Finished => break,
                other => panic!("{other:?} without a seed"),
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
                Step::MarkFinished(OutcomeKind::Succeeded),
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
                seed: None,
            };
            assert_eq!(next_step(&o), Step::Finished);
        }
    }

    /// A seeded run: libvirt, the seed's place and the report, stepped until finished.
    fn run_seeded(
        mut lv: Libvirt,
        mut seed: Seed,
        report_after_start: Option<OutcomeKind>,
    ) -> (Vec<Step>, Vec<(Libvirt, Seed)>) {
        let target = target();
        let (mut steps, mut seen) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            seen.push((lv.clone(), seed));
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
                seed: Some(seed),
            };
            let step = next_step(&o);
            steps.push(step);
            let previous = lv.rec.previous.clone();
            match step {
                Step::PowerOff => lv.active = false,
                Step::Clone => lv.volumes.push(target.clone()),
                Step::SwitchDisk => lv.disk = target.clone(),
                Step::DeletePrevious => lv.volumes.retain(|v| Some(v) != previous.as_ref()),
                Step::AttachSeed => seed.attached = true,
                Step::Start => {
                    lv.active = true;
                    seed.outcome = report_after_start;
                }
                // A worker returns here; the report (or the clock) resumes it.
                Step::Wait => seed.timed_out = true,
                Step::RecordTimeout => seed.outcome = Some(OutcomeKind::Failed),
                Step::DetachSeed => seed.attached = false,
                Step::MarkFinished(kind) => {
                    lv.rec.progress = Some(match kind {
                        OutcomeKind::Succeeded => Progress::Done,
                        _ => Progress::Failed,
                    })
                }
                Step::Finished => break,
            }
        }
        (steps, seen)
    }

    fn no_seed_yet() -> Seed {
        Seed {
            attached: false,
            outcome: None,
            timed_out: false,
        }
    }

    #[test]
    fn a_seeded_operation_boots_once_with_its_seed_and_ends_only_on_the_report() {
        let (steps, seen) = run_seeded(fresh(true), no_seed_yet(), Some(OutcomeKind::Succeeded));
        assert_eq!(
            steps,
            [
                Step::PowerOff,
                Step::Clone,
                Step::SwitchDisk,
                Step::DeletePrevious,
                Step::AttachSeed,
                Step::Start,
                Step::DetachSeed,
                Step::MarkFinished(OutcomeKind::Succeeded),
                Step::Finished
            ]
        );
        // Resumed from any state a restart can find, nothing is repeated.
        for (k, (lv, seed)) in seen.into_iter().enumerate() {
            let (rest, _) = run_seeded(lv, seed, Some(OutcomeKind::Succeeded));
            assert_eq!(rest, steps[k..], "resumed after {k} steps");
        }
    }

    #[test]
    fn a_seeded_operation_without_a_report_waits_then_fails_on_the_timeout() {
        let (steps, _) = run_seeded(fresh(false), no_seed_yet(), None);
        assert_eq!(
            steps[steps.len() - 6..],
            [
                Step::Start,
                Step::Wait,
                Step::RecordTimeout,
                Step::DetachSeed,
                Step::MarkFinished(OutcomeKind::Failed),
                Step::Finished
            ]
        );
        assert_eq!(steps.iter().filter(|s| **s == Step::Start).count(), 1);
    }

    #[test]
    fn a_domain_started_without_its_seed_is_stopped_and_started_with_it() {
        let o = |active| seeded(no_seed_yet(), active);
        assert_eq!(o(true), Step::PowerOff);
        assert_eq!(o(false), Step::AttachSeed);
    }

    #[test]
    fn the_target_volume_is_named_after_the_token() {
        let a = target();
        assert!(a.starts_with("vm1-osprov-") && a.ends_with(".qcow2"), "{a}");
        assert_ne!(a, target_volume("vm1", "u1/1/2", "debian-12.qcow2"));
        assert!(!target_volume("vm1", "t", "raw-image").contains('.'));
    }
}
