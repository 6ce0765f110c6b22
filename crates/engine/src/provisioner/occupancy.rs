//! Who holds which host, who waits for it, and how many reprovision slots are in use.
//!
//! Kept in memory by the controller and seeded from the request store at start-up, so limits are
//! enforced *before* the backend is called: [`Occupancy::try_claim`] checks and takes a slot in one
//! step under the caller's lock. Oldest open request first (creationTimestamp, then name) per host.
use super::keys::{DispKey, HostKey};
use super::plan;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    uid: String,
    name: String,
    dispatcher: DispKey,
}

type QueueEntry = (Timestamp, String, String);

/// The reservation book.
#[derive(Debug, Default)]
pub struct Occupancy {
    holders: HashMap<HostKey, Holder>,
    held_by_uid: HashMap<String, HostKey>,
    per_dispatcher: HashMap<DispKey, u32>,
    total: u32,
    waiting: HashMap<HostKey, BTreeSet<QueueEntry>>,
    open_by_uid: HashMap<String, (HostKey, QueueEntry)>,
}

/// Limits checked by [`Occupancy::try_claim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub dispatcher: Option<u32>,
    pub global: Option<u32>,
}

impl Occupancy {
    /// Record that a request is open (not finished, not deleted) and wants `host`.
    pub fn note_open(&mut self, uid: &str, name: &str, host: &HostKey, created: Timestamp) {
        let entry = (created, name.to_string(), uid.to_string());
        if let Some((old_host, old_entry)) = self.open_by_uid.get(uid) {
            if old_host == host && *old_entry == entry {
                return;
            }
            let (old_host, old_entry) = (old_host.clone(), old_entry.clone());
            self.remove_waiting(&old_host, &old_entry);
        }
        self.waiting
            .entry(host.clone())
            .or_default()
            .insert(entry.clone());
        self.open_by_uid
            .insert(uid.to_string(), (host.clone(), entry));
    }

    fn remove_waiting(&mut self, host: &HostKey, entry: &QueueEntry) {
        if let Some(set) = self.waiting.get_mut(host) {
            set.remove(entry);
            if set.is_empty() {
                self.waiting.remove(host);
            }
        }
    }

    /// Record that a request finished or went away: it no longer waits, and its slot is freed.
    /// Returns the host it held or waited for, so the caller can wake the next in line.
    pub fn note_closed(&mut self, uid: &str) -> Option<HostKey> {
        let waited = self.open_by_uid.remove(uid).map(|(host, entry)| {
            self.remove_waiting(&host, &entry);
            host
        });
        self.release(uid).or(waited)
    }

    /// Take the host and a slot for `uid` when free and within limits. Idempotent for a holder.
    pub fn try_claim(
        &mut self,
        uid: &str,
        name: &str,
        host: &HostKey,
        dispatcher: &DispKey,
        limits: Limits,
    ) -> bool {
        match self.holders.get(host) {
            Some(h) if h.uid == uid => return true,
            Some(_) => return false,
            None => {}
        }
        let active = self.per_dispatcher.get(dispatcher).copied().unwrap_or(0);
        if limits.dispatcher.is_some_and(|l| active >= l)
            || limits.global.is_some_and(|l| self.total >= l)
        {
            return false;
        }
        self.holders.insert(
            host.clone(),
            Holder {
                uid: uid.into(),
                name: name.into(),
                dispatcher: dispatcher.clone(),
            },
        );
        self.held_by_uid.insert(uid.to_string(), host.clone());
        *self.per_dispatcher.entry(dispatcher.clone()).or_default() += 1;
        self.total += 1;
        true
    }

    /// Free the slot `uid` holds, if any.
    pub fn release(&mut self, uid: &str) -> Option<HostKey> {
        let host = self.held_by_uid.remove(uid)?;
        if let Some(holder) = self.holders.remove(&host) {
            if let Some(n) = self.per_dispatcher.get_mut(&holder.dispatcher) {
                *n = n.saturating_sub(1);
            }
            self.total = self.total.saturating_sub(1);
        }
        Some(host)
    }

    /// The name of the request holding `host`.
    pub fn holder(&self, host: &HostKey) -> Option<&str> {
        self.holders.get(host).map(|h| h.name.as_str())
    }

    /// Slots in use through `dispatcher`.
    pub fn active(&self, dispatcher: &DispKey) -> u32 {
        self.per_dispatcher.get(dispatcher).copied().unwrap_or(0)
    }

    /// Slots in use overall.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Open requests waiting for `host`, oldest first, as (name, uid).
    pub fn waiting_for(&self, host: &HostKey) -> Vec<(String, String)> {
        self.waiting
            .get(host)
            .map(|s| s.iter().map(|(_, n, u)| (n.clone(), u.clone())).collect())
            .unwrap_or_default()
    }

    /// The planner's view for request `uid` on `host` through `dispatcher`.
    pub fn view(
        &self,
        uid: &str,
        host: &HostKey,
        dispatcher: Option<&DispKey>,
        limits: Limits,
    ) -> plan::Occupancy {
        let held_by_other = self
            .holders
            .get(host)
            .filter(|h| h.uid != uid)
            .map(|h| h.name.clone());
        let mine = self.open_by_uid.get(uid).map(|(_, e)| e.clone());
        let older_waiting = self.waiting.get(host).and_then(|set| {
            let first = set.iter().find(|(_, _, u)| u != uid)?;
            match &mine {
                Some(me) if first < me => Some(first.1.clone()),
                Some(_) => None,
                None => Some(first.1.clone()),
            }
        });
        plan::Occupancy {
            held_by_other,
            older_waiting,
            dispatcher_active: dispatcher.map(|d| self.active(d)).unwrap_or(0),
            dispatcher_limit: limits.dispatcher,
            global_active: self.total,
            global_limit: limits.global,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    fn hk(h: &str) -> HostKey {
        HostKey {
            namespace: "ns".into(),
            host: h.into(),
        }
    }
    fn dk() -> DispKey {
        DispKey {
            namespace: "ns".into(),
            name: "d".into(),
        }
    }

    #[test]
    fn oldest_open_request_goes_first() {
        let mut o = Occupancy::default();
        o.note_open("u2", "b", &hk("h"), t(20));
        o.note_open("u1", "a", &hk("h"), t(10));
        o.note_open("u3", "c", &hk("h"), t(10));
        let l = Limits::default();
        assert_eq!(o.view("u1", &hk("h"), Some(&dk()), l).older_waiting, None);
        assert_eq!(
            o.view("u2", &hk("h"), Some(&dk()), l)
                .older_waiting
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            o.view("u3", &hk("h"), Some(&dk()), l)
                .older_waiting
                .as_deref(),
            Some("a"),
            "same time: name order"
        );
        assert!(o.try_claim("u1", "a", &hk("h"), &dk(), l));
        assert!(!o.try_claim("u2", "b", &hk("h"), &dk(), l));
        assert_eq!(
            o.view("u2", &hk("h"), Some(&dk()), l)
                .held_by_other
                .as_deref(),
            Some("a")
        );
        assert_eq!(o.note_closed("u1"), Some(hk("h")));
        assert_eq!(o.view("u3", &hk("h"), Some(&dk()), l).older_waiting, None);
        assert_eq!(
            o.waiting_for(&hk("h")),
            vec![
                ("c".to_string(), "u3".to_string()),
                ("b".to_string(), "u2".to_string())
            ]
        );
    }

    #[test]
    fn limits_are_enforced_at_claim() {
        let mut o = Occupancy::default();
        let l = Limits {
            dispatcher: Some(2),
            global: Some(3),
        };
        assert!(o.try_claim("u1", "a", &hk("h1"), &dk(), l));
        assert!(
            o.try_claim("u1", "a", &hk("h1"), &dk(), l),
            "idempotent for the holder"
        );
        assert!(o.try_claim("u2", "b", &hk("h2"), &dk(), l));
        assert!(
            !o.try_claim("u3", "c", &hk("h3"), &dk(), l),
            "dispatcher full"
        );
        let other = DispKey {
            namespace: "ns".into(),
            name: "e".into(),
        };
        assert!(o.try_claim("u4", "d", &hk("h4"), &other, l));
        assert!(!o.try_claim("u5", "e", &hk("h5"), &other, l), "global full");
        assert_eq!((o.active(&dk()), o.total()), (2, 3));
        o.release("u1");
        o.release("u1");
        assert_eq!((o.active(&dk()), o.total()), (1, 2));
        assert!(o.try_claim("u3", "c", &hk("h3"), &dk(), l));
    }
}
