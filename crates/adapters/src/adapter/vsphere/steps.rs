//! The `iso` strategy on vSphere as a step machine: given what vCenter and the operation record
//! show, the one next step. Pure, so the order that keeps "one reset per request" across restarts
//! is unit-tested without a vCenter.
//!
//! The VM's extraConfig holds the token, the OS and the progress, written in the same
//! reconfigure that attaches the installer (one vCenter task: both happen or neither). The
//! operation's Secret holds the callback secret, the outcome, and `resetRequestedAt`, written
//! *before* the reset is sent: a token whose record says so is never reset again. A controller
//! that dies between the two leaves a VM that may not have reset; the callback timeout then fails
//! the request with a clear message instead of a second install.
use crate::adapter::store::OutcomeKind;

/// What vCenter and the operation record show of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The VM's extraConfig carries this token.
    pub recorded: bool,
    /// ... with a finished progress (`done`, `failed`, `cancelled`).
    pub finished: bool,
    /// The VM's CD-ROM holds this operation's ISO, connected at power-on.
    pub attached: bool,
    pub reset_requested: bool,
    pub outcome: Option<OutcomeKind>,
    /// No outcome and the callback timeout has passed since the reset was requested.
    pub timed_out: bool,
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// One reconfigure: record the token, connect the ISO, CD-ROM first, callback URL.
    Attach,
    /// Record "reset requested", then reset (or power on) the VM.
    Reset,
    /// The installer runs; wait for its callback.
    Wait,
    /// Record the timeout as the outcome.
    RecordTimeout,
    /// One reconfigure: restore the CD-ROM and boot order, record how it ended.
    Detach(OutcomeKind),
    /// Nothing left to do.
    Finished,
}

pub fn next_step(o: &Observed) -> Step {
    if o.finished {
        return Step::Finished;
    }
    if let Some(outcome) = o.outcome {
        return if o.recorded {
            Step::Detach(outcome)
        } else {
            Step::Finished
        };
    }
    if o.timed_out {
        return Step::RecordTimeout;
    }
    match (o.reset_requested, o.recorded && o.attached) {
        (false, false) => Step::Attach,
        (false, true) => Step::Reset,
        (true, _) => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Observed {
        Observed {
            recorded: false,
            finished: false,
            attached: false,
            reset_requested: false,
            outcome: None,
            timed_out: false,
        }
    }

    /// Run until the machine waits or finishes, counting resets.
    fn run(mut o: Observed) -> (Vec<Step>, Vec<Observed>, u32) {
        let (mut steps, mut seen, mut resets) = (Vec::new(), Vec::new(), 0);
        for _ in 0..10 {
            seen.push(o.clone());
            let s = next_step(&o);
            steps.push(s);
            match s {
                Step::Attach => (o.recorded, o.attached) = (true, true),
                Step::Reset => {
                    o.reset_requested = true;
                    resets += 1;
                }
                Step::RecordTimeout => o.outcome = Some(OutcomeKind::Failed),
                Step::Detach(_) => (o.attached, o.finished) = (false, true),
                Step::Wait | Step::Finished => break,
            }
        }
        (steps, seen, resets)
    }

    #[test]
    fn attach_then_one_reset_then_wait() {
        let (steps, _, resets) = run(fresh());
        assert_eq!(steps, [Step::Attach, Step::Reset, Step::Wait]);
        assert_eq!(resets, 1);
    }

    #[test]
    fn resuming_anywhere_never_resets_twice() {
        let (all, seen, _) = run(fresh());
        for (k, state) in seen.into_iter().enumerate() {
            let already = u32::from(state.reset_requested);
            let (rest, _, resets) = run(state);
            assert_eq!(rest, all[k..], "resumed after {k}");
            assert_eq!(resets + already, 1, "resumed after {k}");
        }
    }

    #[test]
    fn an_outcome_detaches_once_and_finishes() {
        for kind in [
            OutcomeKind::Succeeded,
            OutcomeKind::Failed,
            OutcomeKind::Cancelled,
        ] {
            let o = Observed {
                recorded: true,
                attached: true,
                reset_requested: true,
                outcome: Some(kind),
                ..fresh()
            };
            assert_eq!(run(o).0, [Step::Detach(kind), Step::Finished]);
            let never_attached = Observed {
                outcome: Some(kind),
                ..fresh()
            };
            assert_eq!(next_step(&never_attached), Step::Finished);
        }
    }

    #[test]
    fn a_silent_installer_times_out_then_detaches() {
        let o = Observed {
            recorded: true,
            attached: true,
            reset_requested: true,
            timed_out: true,
            ..fresh()
        };
        assert_eq!(
            run(o).0,
            [
                Step::RecordTimeout,
                Step::Detach(OutcomeKind::Failed),
                Step::Finished
            ]
        );
    }
}
