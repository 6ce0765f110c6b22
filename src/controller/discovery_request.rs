//! Discoveries asked for through the `osprov.io/discover` annotation of an OSDispatcher (what
//! `osprov discover` and `osprov os list` set). The decision is a pure function of the
//! annotation, the value already answered in status, the ask in progress and when the session's
//! last successful discovery *started* (one already running when the ask came in does not
//! answer it); the dispatcher controller performs it.
use k8s_openapi::jiff::Timestamp;

/// What the dispatcher controller does about the annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Nothing asked, or already answered.
    Nothing,
    /// A new value: start a discovery now and remember when.
    Trigger,
    /// The discovery started for this value has not finished yet.
    Waiting,
    /// A discovery that started after the ask has finished: record the value in status.
    Answer(String),
}

/// `wanted`: the annotation; `answered`: `status.lastDiscoveryRequest`; `pending`: the value a
/// discovery was asked for and when; `last_started`: when the session's last successful
/// discovery started.
pub fn decide(
    wanted: Option<&str>,
    answered: Option<&str>,
    pending: Option<(&str, Timestamp)>,
    last_started: Option<Timestamp>,
) -> Ask {
    let Some(wanted) = wanted else {
        return Ask::Nothing;
    };
    if answered == Some(wanted) {
        return Ask::Nothing;
    }
    match pending {
        Some((value, at)) if value == wanted => match last_started {
            Some(done) if done >= at => Ask::Answer(wanted.to_string()),
            _ => Ask::Waiting,
        },
        _ => Ask::Trigger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("timestamp")
    }

    #[test]
    fn every_case() {
        assert_eq!(decide(None, None, None, Some(t(5))), Ask::Nothing);
        assert_eq!(decide(Some("a"), Some("a"), None, None), Ask::Nothing);
        assert_eq!(decide(Some("a"), None, None, Some(t(5))), Ask::Trigger);
        assert_eq!(
            decide(Some("b"), Some("a"), Some(("a", t(1))), Some(t(9))),
            Ask::Trigger
        );
        assert_eq!(
            decide(Some("a"), None, Some(("a", t(10))), Some(t(5))),
            Ask::Waiting
        );
        assert_eq!(
            decide(Some("a"), None, Some(("a", t(10))), None),
            Ask::Waiting
        );
        assert_eq!(
            decide(Some("a"), None, Some(("a", t(10))), Some(t(10))),
            Ask::Answer("a".into())
        );
    }
}
