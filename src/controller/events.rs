//! Kubernetes Events for the controller's objects, published as `events.k8s.io/v1`.
//!
//! Why not kube-runtime's `Recorder`: to count repeats into a `series` it keeps every published
//! Event, in full, for six minutes, and sweeps that whole map on every publish. With 10,000
//! requests each changing phase three or four times, that map was the largest part of the
//! controller's heap (about 70 MiB in the scale benchmark) and the sweep made each publish
//! O(events). Here a repeat is recognised by a 64-bit hash of what makes two events the same
//! (type, action, reason, note, regarding object, reporter), and only what a series update needs
//! (the Event's name and namespace, the count, the time it last occurred) is kept, for a
//! bounded number of recent keys ([`SeriesCache`], two generations, O(1) per publish).
//!
//! The note is part of the key because `events.k8s.io/v1` treats `note` as immutable: a series
//! update cannot change it, so a repeat with another note is published as a new Event rather
//! than counted under a note that no longer says what happened.
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use tracing::debug;

/// How long after its last occurrence an Event can still be continued as a series.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// How many distinct recent events are remembered for series (two generations of half each).
const SERIES_KEYS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to publish about an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub type_: EventType,
    /// What happened, in CamelCase (for requests: the phase reached).
    pub action: String,
    /// Why, in CamelCase (for requests: the status reason).
    pub reason: String,
    /// Human-readable detail.
    pub note: String,
}

/// Who publishes: `reportingController` and `reportingInstance`.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

/// What a series update needs to know about an Event already published.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub name: String,
    pub namespace: String,
    /// When it was last published or counted.
    pub last: Timestamp,
    pub count: i32,
}

/// Recently published events by key: a bounded map in two generations. Inserting into a full
/// current generation retires it to "previous" (dropping the older previous), so at most
/// `capacity` keys are held and every operation is O(1).
#[derive(Debug)]
pub struct SeriesCache {
    capacity: usize,
    current: HashMap<u64, Seen>,
    previous: HashMap<u64, Seen>,
}

impl SeriesCache {
    pub fn new(capacity: usize) -> Self {
        SeriesCache {
            capacity: capacity.max(2),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// The Event to continue for `key` at `now`, if it last occurred within the series window,
    /// with the repeat counted. The count is kept only once [`SeriesCache::insert`] is called
    /// with it (after the API accepted the update): the entry is taken out meanwhile.
    pub fn repeat(&mut self, key: u64, now: Timestamp) -> Option<Seen> {
        let seen = match self.current.remove(&key) {
            Some(s) => s,
            None => self.previous.remove(&key)?,
        };
        if seen.last + SERIES_WINDOW <= now {
            return None;
        }
        Some(Seen {
            count: seen.count.saturating_add(1),
            last: now,
            ..seen
        })
    }

    /// Remember a newly published Event.
    pub fn insert(&mut self, key: u64, seen: Seen) {
        if self.current.len() >= self.capacity / 2 && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, seen);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The series key of an event about `regarding`, published by `reporter`.
pub fn series_key(reporter: &Reporter, regarding: &ObjectReference, note: &Note) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reporter.controller.hash(&mut h);
    reporter.instance.hash(&mut h);
    regarding.api_version.hash(&mut h);
    regarding.kind.hash(&mut h);
    regarding.namespace.hash(&mut h);
    regarding.name.hash(&mut h);
    regarding.uid.hash(&mut h);
    note.hash(&mut h);
    h.finish()
}

/// A new Event object for `note` about `regarding` (named like client-go: `<object>.<hex time>`).
pub fn new_event(
    reporter: &Reporter,
    regarding: &ObjectReference,
    note: &Note,
    now: Timestamp,
) -> Event {
    let object = regarding.name.as_deref().unwrap_or(&reporter.controller);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace_of(regarding)),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(note.action.clone()),
        reason: Some(note.reason.clone()),
        note: Some(truncate(&note.note, NOTE_MAX).to_string()),
        type_: Some(note.type_.as_str().to_string()),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Default::default()
    }
}

/// The longest `note` events.k8s.io/v1 accepts, in bytes.
const NOTE_MAX: usize = 1024;

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Events about cluster-scoped objects go to `default`, as client-go does.
fn namespace_of(regarding: &ObjectReference) -> String {
    regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// Publishes Events, continuing recent identical ones as a series.
pub struct Publisher {
    client: Client,
    reporter: Reporter,
    recent: Mutex<SeriesCache>,
}

impl Publisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Publisher {
            client,
            reporter,
            recent: Mutex::new(SeriesCache::new(SERIES_KEYS)),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, SeriesCache> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish `note` about `regarding`: a new Event, or a `series` update of the same Event
    /// published within the last six minutes.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        note: &Note,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(&self.reporter, regarding, note);
        let repeat = self.recent().repeat(key, now);
        if let Some(seen) = repeat {
            let events: Api<Event> = Api::namespaced(self.client.clone(), &seen.namespace);
            let patch = Event {
                series: Some(EventSeries {
                    count: seen.count,
                    last_observed_time: MicroTime(now),
                }),
                ..Default::default()
            };
            match events
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.recent().insert(key, seen);
                    return Ok(());
                }
                // Deleted meanwhile (TTL, an admin), or the update failed: publish it anew
                // rather than lose it.
                Err(e) => debug!(error = %e, event = %seen.name, "series update failed"),
            }
        }
        let event = new_event(&self.reporter, regarding, note, now);
        let namespace = namespace_of(regarding);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = events.create(&PostParams::default(), &event).await?;
        self.recent().insert(
            key,
            Seen {
                name: created.metadata.name.unwrap_or_default(),
                namespace,
                last: now,
                count: 1,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, last: Timestamp) -> Seen {
        Seen {
            name: name.into(),
            namespace: "default".into(),
            last,
            count: 1,
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_up() {
        let mut c = SeriesCache::new(8);
        let t0 = Timestamp::now();
        assert_eq!(c.repeat(1, t0), None);
        c.insert(1, seen("a", t0));
        let r = c
            .repeat(1, t0 + SignedDuration::from_secs(5))
            .expect("repeat");
        assert_eq!((r.name.as_str(), r.count), ("a", 2));
        c.insert(1, r);
        let r = c
            .repeat(1, t0 + SignedDuration::from_secs(6))
            .expect("repeat");
        assert_eq!(r.count, 3);
    }

    #[test]
    fn the_window_runs_from_the_last_occurrence() {
        let mut c = SeriesCache::new(8);
        let t0 = Timestamp::now();
        c.insert(1, seen("a", t0));
        // Repeating every five minutes keeps one series going past the first six minutes.
        let mut t = t0;
        for count in 2..=4 {
            t += SignedDuration::from_mins(5);
            let r = c.repeat(1, t).expect("repeat");
            assert_eq!(r.count, count);
            c.insert(1, r);
        }
        assert_eq!(c.repeat(1, t + SERIES_WINDOW), None);
        // And it is forgotten.
        assert!(c.is_empty());
    }

    #[test]
    fn a_repeat_not_confirmed_is_not_counted() {
        let mut c = SeriesCache::new(8);
        let t0 = Timestamp::now();
        c.insert(1, seen("a", t0));
        // The update failed and the event was published anew: the new Event starts at 1.
        assert_eq!(c.repeat(1, t0).map(|s| s.count), Some(2));
        assert_eq!(c.repeat(1, t0), None);
    }

    #[test]
    fn notes_are_cut_to_what_the_api_accepts() {
        assert_eq!(truncate("short", NOTE_MAX), "short");
        let long = "é".repeat(600); // 1200 bytes
        let cut = truncate(&long, NOTE_MAX);
        assert!(cut.len() <= NOTE_MAX && cut.len() >= NOTE_MAX - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = SeriesCache::new(10);
        let t0 = Timestamp::now();
        for k in 0..1000u64 {
            c.insert(k, seen("x", t0));
            assert!(c.len() <= 10, "{} keys held", c.len());
        }
        // The most recent keys are still known, the oldest are not.
        assert!(c.repeat(999, t0).is_some());
        assert!(c.repeat(0, t0).is_none());
    }

    #[test]
    fn a_repeat_keeps_a_key_from_the_previous_generation() {
        let mut c = SeriesCache::new(4);
        let t0 = Timestamp::now();
        c.insert(1, seen("a", t0));
        c.insert(2, seen("b", t0));
        c.insert(3, seen("c", t0)); // retires {1, 2}
        let r = c.repeat(1, t0).expect("repeat");
        c.insert(1, r); // back into the current generation
        c.insert(4, seen("d", t0)); // retires {3, 1}
        c.insert(5, seen("e", t0));
        assert!(c.repeat(1, t0).is_some());
        assert!(c.repeat(2, t0).is_none());
    }

    #[test]
    fn the_key_separates_what_makes_events_different() {
        let reporter = Reporter {
            controller: "osprov-osp".into(),
            instance: "a".into(),
        };
        let regarding = ObjectReference {
            kind: Some("OSProvisioningRequest".into()),
            name: Some("r".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let note = Note {
            type_: EventType::Normal,
            action: "Provisioning".into(),
            reason: "Dispatched".into(),
            note: "started".into(),
        };
        let k = series_key(&reporter, &regarding, &note);
        assert_eq!(k, series_key(&reporter, &regarding, &note.clone()));
        let other_note = Note {
            note: "started again".into(),
            ..note.clone()
        };
        assert_ne!(k, series_key(&reporter, &regarding, &other_note));
        let other_object = ObjectReference {
            uid: Some("u2".into()),
            ..regarding.clone()
        };
        assert_ne!(k, series_key(&reporter, &other_object, &note));
        let ev = new_event(&reporter, &regarding, &note, Timestamp::now());
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        assert!(ev
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("r.")));
    }
}
