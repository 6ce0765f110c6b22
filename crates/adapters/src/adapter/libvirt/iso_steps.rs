//! The `iso` strategy as a step machine: given what libvirt and the operation record show now, the
//! one next step. Pure, so the order that keeps "one power cycle per request" across restarts is
//! unit-tested without libvirt.
//!
//! Progress lives outside osprov's memory: what attaching changed (the undo), the domain id when
//! the power cycle was decided (`resetFrom`) and "started" are in the domain's metadata record;
//! the installer's outcome and the timeout clock are in the operation's Secret. `started` is
//! written *before* the domain is started, and a token whose record says so is never started
//! again: a controller that dies between the two leaves a domain that stays off, which the
//! callback timeout turns into a clear failure instead of a second install.
//!
//! An installer may report itself, or write the OS and power the machine off, leaving the report
//! to the installed OS's first boot (as cloud-init's `phone_home` does): once the domain id of the
//! installer's run is recorded (`run`), a domain that is off again has finished installing, so
//! osprov restores the definition and starts the installed OS, once (`installedBoot` is recorded
//! before the start), and waits for the report. A start recorded with no run id (the controller
//! died before the domain started) still waits for the timeout: that domain never ran the
//! installer.
use crate::adapter::store::OutcomeKind;

/// What libvirt and the operation record show of one `iso` operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The domain record says the operation finished.
    pub finished: bool,
    /// The domain's persistent CD-ROM holds this operation's ISO.
    pub attached: bool,
    pub active: bool,
    /// The running domain's id (libvirt gives each start a new one).
    pub id: Option<u32>,
    /// The domain id when the power cycle was decided (`off` when it was not running).
    pub reset_from: Option<String>,
    /// The start with the installer was recorded.
    pub started: bool,
    /// The domain id of the installer's run was recorded.
    pub run: bool,
    /// The start of the installed OS was recorded.
    pub installed_boot: bool,
    /// The installer's outcome (or a recorded timeout or cancel).
    pub outcome: Option<OutcomeKind>,
    /// No outcome and the callback timeout has passed since the power cycle.
    pub timed_out: bool,
}

/// The next step of an `iso` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Record the undo, then redefine the domain with the ISO, boot order and callback URL.
    Attach,
    /// Record the power cycle (timeout clock, `resetFrom`) before doing it.
    RecordReset,
    /// Power the running domain off (it must boot the new definition).
    PowerOff,
    /// Record `started`, then start the domain.
    Start,
    /// The domain was started by someone else after the power-off: record `started` only.
    AdoptStart,
    /// The installer runs: record its run's domain id.
    RecordRun,
    /// The installer powered the domain off: record `installedBoot`, restore the definition and
    /// start the installed OS.
    BootInstalled,
    /// The installer runs; wait for its callback.
    Wait,
    /// Record the timeout as the outcome.
    RecordTimeout,
    /// Eject the ISO from the running domain and restore the definition (a running domain whose
    /// medium will not come out is powered off and started again from the restored definition).
    Detach,
    /// Record the outcome on the domain.
    MarkFinished(OutcomeKind),
    /// Nothing left to do.
    Finished,
}

/// The one next step.
pub fn next_step(o: &Observed) -> Step {
    if o.finished {
        return Step::Finished;
    }
    if let Some(outcome) = o.outcome {
        return if o.attached {
            Step::Detach
        } else {
            Step::MarkFinished(outcome)
        };
    }
    if o.timed_out {
        return Step::RecordTimeout;
    }
    let Some(from) = o.reset_from.as_deref() else {
        return if o.attached {
            Step::RecordReset
        } else {
            Step::Attach
        };
    };
    if o.started {
        return match (o.active, o.run, o.installed_boot) {
            (true, false, _) => Step::RecordRun,
            (false, true, false) => Step::BootInstalled,
            (true, true, _) | (false, false, _) | (false, true, true) => Step::Wait,
        };
    }
    let same_run = o.id.is_some_and(|id| id.to_string() == from);
    match (o.active, same_run) {
        (true, true) => Step::PowerOff,
        (false, _) => Step::Start,
        (true, false) => Step::AdoptStart,
    }
}

/// What `resetFrom` records for a domain: its id, or `off`.
pub fn reset_from(active: bool, id: Option<u32>) -> String {
    match (active, id) {
        (true, Some(id)) => id.to_string(),
        _ => "off".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Domain and record, as a test world.
    #[derive(Clone, Debug)]
    struct World {
        o: Observed,
        next_id: u32,
        starts: u32,
    }

    fn world(active: bool) -> World {
        World {
            o: Observed {
                finished: false,
                attached: false,
                active,
                id: active.then_some(3),
                reset_from: None,
                started: false,
                run: false,
                installed_boot: false,
                outcome: None,
                timed_out: false,
            },
            next_id: 4,
            starts: 0,
        }
    }

    /// Run until the machine waits or finishes; the steps taken and every state before a step.
    fn run(mut w: World) -> (Vec<Step>, Vec<World>, World) {
        let (mut steps, mut seen) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            seen.push(w.clone());
            let step = next_step(&w.o);
            steps.push(step);
            match step {
                Step::Attach => w.o.attached = true,
                Step::RecordReset => w.o.reset_from = Some(reset_from(w.o.active, w.o.id)),
                Step::PowerOff => (w.o.active, w.o.id) = (false, None),
                Step::Start => {
                    w.o.started = true;
                    (w.o.active, w.o.id) = (true, Some(w.next_id));
                    w.next_id += 1;
                    w.starts += 1;
                }
                Step::AdoptStart => w.o.started = true,
                Step::RecordRun => w.o.run = true,
                Step::BootInstalled => {
                    w.o.installed_boot = true;
                    w.o.attached = false;
                    (w.o.active, w.o.id) = (true, Some(w.next_id));
                    w.next_id += 1;
                    w.starts += 1;
                }
                Step::RecordTimeout => w.o.outcome = Some(OutcomeKind::Failed),
                Step::Detach => w.o.attached = false,
                Step::MarkFinished(_) => w.o.finished = true,
                Step::Wait | Step::Finished => break,
            }
        }
        (steps, seen, w)
    }

    #[test]
    fn a_running_domain_is_attached_power_cycled_once_and_waits() {
        let (steps, _, end) = run(world(true));
        assert_eq!(
            steps,
            [
                Step::Attach,
                Step::RecordReset,
                Step::PowerOff,
                Step::Start,
                Step::RecordRun,
                Step::Wait
            ]
        );
        assert_eq!((end.starts, end.o.active), (1, true));
        let (steps, _, _) = run(world(false));
        assert_eq!(
            steps,
            [
                Step::Attach,
                Step::RecordReset,
                Step::Start,
                Step::RecordRun,
                Step::Wait
            ]
        );
    }

    #[test]
    fn resuming_from_any_state_never_starts_twice() {
        let (all, seen, _) = run(world(true));
        for (k, state) in seen.into_iter().enumerate() {
            let before = state.starts;
            let (rest, _, end) = run(state);
            assert_eq!(rest, all[k..], "resumed after {k} steps");
            assert_eq!(end.starts, 1.max(before), "resumed after {k} steps");
        }
    }

    #[test]
    fn a_start_recorded_but_lost_waits_for_the_timeout_instead_of_starting_again() {
        let mut w = world(true);
        w.o.attached = true;
        w.o.reset_from = Some("3".into());
        (w.o.active, w.o.id, w.o.started) = (false, None, true);
        assert_eq!(next_step(&w.o), Step::Wait);
        w.o.timed_out = true;
        let (steps, _, end) = run(w);
        assert_eq!(
            steps,
            [
                Step::RecordTimeout,
                Step::Detach,
                Step::MarkFinished(OutcomeKind::Failed),
                Step::Finished
            ]
        );
        assert_eq!(end.starts, 0);
    }

    #[test]
    fn an_installer_that_powers_off_gets_the_installed_os_started_once() {
        let (_, _, mut w) = run(world(true));
        // The installer wrote the disk and powered off.
        (w.o.active, w.o.id) = (false, None);
        let (steps, seen, end) = run(w);
        assert_eq!(steps, [Step::BootInstalled, Step::Wait]);
        assert_eq!((end.starts, end.o.attached, end.o.active), (2, false, true));
        // Resumed at any point, never a third start; the installed OS off again just waits.
        for state in seen {
            let (_, _, e) = run(state);
            assert_eq!(e.starts, 2);
        }
        let mut off = end.clone();
        (off.o.active, off.o.id) = (false, None);
        assert_eq!(next_step(&off.o), Step::Wait);
        // Its report ends the operation; nothing is attached any more.
        off.o.outcome = Some(OutcomeKind::Succeeded);
        let (steps, _, _) = run(off);
        assert_eq!(
            steps,
            [Step::MarkFinished(OutcomeKind::Succeeded), Step::Finished]
        );
    }

    #[test]
    fn a_domain_restarted_by_someone_else_is_adopted_not_restarted() {
        let mut w = world(true);
        w.o.attached = true;
        w.o.reset_from = Some("3".into());
        w.o.id = Some(9);
        assert_eq!(next_step(&w.o), Step::AdoptStart);
    }

    #[test]
    fn an_outcome_detaches_then_finishes_whatever_the_progress() {
        for kind in [
            OutcomeKind::Succeeded,
            OutcomeKind::Failed,
            OutcomeKind::Cancelled,
        ] {
            let (all, seen, _) = run(world(true));
            assert_eq!(all.last(), Some(&Step::Wait));
            for mut state in seen {
                state.o.outcome = Some(kind);
                let (steps, _, end) = run(state.clone());
                let expected: Vec<Step> = if state.o.attached {
                    vec![Step::Detach, Step::MarkFinished(kind), Step::Finished]
                } else {
                    vec![Step::MarkFinished(kind), Step::Finished]
                };
                assert_eq!(steps, expected);
                assert!(!end.o.attached);
            }
        }
    }

    #[test]
    fn reset_from_names_the_run_or_off() {
        assert_eq!(reset_from(true, Some(12)), "12");
        assert_eq!(reset_from(false, None), "off");
    }
}
