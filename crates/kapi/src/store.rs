//! The object store: one global revision, MVCC snapshots, bounded watch history and fan-out.
//!
//! Objects live in a persistent ordered map (`imbl::OrdMap`), so a list takes an O(1) snapshot and
//! every page of a paged list is served from the same snapshot (B3). Every write takes the next
//! global revision under one lock, is written through to redb when persistence is on, appended to
//! a bounded history (so a watch can resume from a recent revision, and an older one gets 410, B7)
//! and published on a broadcast channel. A watcher that falls behind the channel is dropped with an
//! Expired error rather than slowing writers down.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use imbl::OrdMap;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::error::{ApiError, ApiResult, ApiServerError};
use super::persist::Persist;

/// (storage key, namespace, name); cluster-scoped objects use "" as namespace.
pub use super::key::Key;
pub type Objects = OrdMap<Key, Arc<Value>>;
/// Kept changes since a revision and a live receiver for the ones after.
pub type Resume = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed write, as kept in the history and sent to watchers.
#[derive(Debug)]
pub struct Change {
    pub rev: u64,
    pub kind: ChangeType,
    pub key: Key,
    /// New state; for a deletion the final state carrying the deletion's revision (B6).
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Change {
    /// The object serialized once and shared by every watcher of the storage form.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
            .clone()
    }
}

/// What a write expects to find (optimistic concurrency).
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Create: nothing may be stored under the key.
    Absent,
    /// Update/delete: the stored object must have this resourceVersion.
    Revision(u64),
}

pub enum Precondition {
    Exists,
    Missing,
    Stale,
    /// The persistent store refused the write.
    Failed(String),
}

struct Inner {
    revision: u64,
    objects: Objects,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Every change with a revision greater than this is in `history`.
    compacted: u64,
    /// Snapshots kept for continue tokens, newest last.
    snapshots: VecDeque<(u64, Objects)>,
    /// Changes applied in memory but not yet durable (persistence on).
    pending: Vec<Arc<Change>>,
}

impl Inner {
    /// Appends a change to the history and sends it to watchers.
    fn publish(&mut self, tx: &broadcast::Sender<Arc<Change>>, change: Arc<Change>) {
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rev;
            }
        }
        // No receivers is fine.
        let _ = tx.send(change);
    }
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    persist: Option<Persist>,
    /// Serialises group commits; holds the highest durable revision.
    flush_lock: Mutex<u64>,
    /// Set when a commit to disk failed; all later writes fail with it.
    failed: Mutex<Option<String>>,
}

/// Snapshots kept for continue tokens (structurally shared, so cheap); a token whose snapshot is
/// gone gets 410 Expired and the client relists.
const KEPT_SNAPSHOTS: usize = 64;

pub fn object_revision(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    pub fn open(
        persist: Option<Persist>,
        history_cap: usize,
        channel_cap: usize,
    ) -> Result<Self, ApiServerError> {
        let mut revision = 0;
        let mut objects = OrdMap::new();
        if let Some(p) = &persist {
            let (rev, items) = p.load()?;
            revision = rev;
            for (k, v) in items {
                revision = revision.max(object_revision(&v));
                objects.insert(k, Arc::new(v));
            }
        }
        let (tx, _) = broadcast::channel(channel_cap.max(16));
        Ok(Store {
            inner: Mutex::new(Inner {
                revision,
                objects,
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                compacted: revision,
                snapshots: VecDeque::new(),
                pending: Vec::new(),
            }),
            tx,
            persist,
            flush_lock: Mutex::new(revision),
            failed: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes go to disk (and block for the group commit).
    pub fn persistent(&self) -> bool {
        self.persist.is_some()
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.lock().objects.get(key).cloned()
    }

    /// A consistent snapshot of all objects and its revision.
    pub fn snapshot(&self) -> (u64, Objects) {
        let g = self.lock();
        (g.revision, g.objects.clone())
    }

    /// Rewrites loaded objects in place before serving (defaults of the current schemas, D2);
    /// takes no revision and writes nothing to disk, like defaulting on read.
    pub fn fix_up_loaded(&self, f: impl Fn(&Key, &mut Value)) {
        let mut g = self.lock();
        let keys: Vec<Key> = g.objects.keys().cloned().collect();
        for k in keys {
            if let Some(obj) = g.objects.get(&k) {
                let mut v = (**obj).clone();
                f(&k, &mut v);
                if v != **obj {
                    g.objects.insert(k, Arc::new(v));
                }
            }
        }
    }

    /// Keeps `objects` (taken at `rev`) for continue tokens.
    pub fn keep_snapshot(&self, rev: u64, objects: &Objects) {
        let mut g = self.lock();
        if g.snapshots.iter().any(|(r, _)| *r == rev) {
            return;
        }
        g.snapshots.push_back((rev, objects.clone()));
        while g.snapshots.len() > KEPT_SNAPSHOTS {
            g.snapshots.pop_front();
        }
    }

    pub fn snapshot_at(&self, rev: u64) -> Option<Objects> {
        let g = self.lock();
        if g.revision == rev {
            return Some(g.objects.clone());
        }
        g.snapshots
            .iter()
            .find(|(r, _)| *r == rev)
            .map(|(_, o)| o.clone())
    }

    /// Commits a write if `expect` holds. `value: None` deletes; the stored (or, for a deletion, the
    /// final) object gets the new resourceVersion.
    pub fn commit(
        &self,
        key: &Key,
        expect: Expect,
        value: Option<Value>,
    ) -> Result<Arc<Change>, Precondition> {
        let delete = value.is_none();
        self.write(key, expect, value, delete)
    }

    /// Deletes with `final_state` (e.g. finalizers just removed) as what DELETED carries.
    pub fn delete_with(
        &self,
        key: &Key,
        expect: Expect,
        final_state: Value,
    ) -> Result<Arc<Change>, Precondition> {
        self.write(key, expect, Some(final_state), true)
    }

    fn write(
        &self,
        key: &Key,
        expect: Expect,
        value: Option<Value>,
        delete: bool,
    ) -> Result<Arc<Change>, Precondition> {
        if let Some(e) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(Precondition::Failed(e));
        }
        let change = {
            let mut g = self.lock();
            let current = g.objects.get(key).cloned();
            match (expect, &current) {
                (Expect::Absent, Some(_)) => return Err(Precondition::Exists),
                (Expect::Revision(_), None) => return Err(Precondition::Missing),
                (Expect::Revision(rv), Some(cur)) if object_revision(cur) != rv => {
                    return Err(Precondition::Stale)
                }
                _ => {}
            }
            let rev = g.revision + 1;
            let (kind, mut obj) = match value {
                Some(v) if delete => (ChangeType::Deleted, v),
                Some(v) if current.is_some() => (ChangeType::Modified, v),
                Some(v) => (ChangeType::Added, v),
                None => match &current {
                    Some(cur) => (ChangeType::Deleted, (**cur).clone()),
                    None => return Err(Precondition::Missing),
                },
            };
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), json!(rev.to_string()));
            }
            g.revision = rev;
            let obj = Arc::new(obj);
            if kind == ChangeType::Deleted {
                g.objects.remove(key);
            } else {
                g.objects.insert(key.clone(), obj.clone());
            }
            let change = Arc::new(Change {
                rev,
                kind,
                key: key.clone(),
                object: obj,
                prev: current,
                json: OnceLock::new(),
            });
            if self.persist.is_none() {
                g.publish(&self.tx, change.clone());
                return Ok(change);
            }
            g.pending.push(change.clone());
            change
        };
        self.flush(change.rev)?;
        Ok(change)
    }

    /// Group commit: makes every pending change up to at least `rev` durable in one redb
    /// transaction, then publishes them (history and watchers) in revision order. Writers wait
    /// here until their change is durable, so an acknowledged write is never lost and watchers
    /// never see a change a crash could take back. A failed commit stops all further writes.
    fn flush(&self, rev: u64) -> Result<(), Precondition> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let mut durable = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        if *durable >= rev {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.lock().pending);
        let Some(last) = batch.last().map(|c| c.rev) else {
            return Ok(());
        };
        let items: Vec<(&Key, Option<&Value>)> = batch
            .iter()
            .map(|c| {
                (
                    &c.key,
                    (c.kind != ChangeType::Deleted).then_some(&*c.object),
                )
            })
            .collect();
        if let Err(e) = p.write_batch(&items, last) {
            tracing::error!(error = %e, "persisting writes failed; refusing further writes");
            let msg = format!("the persistent store failed: {e}");
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
            return Err(Precondition::Failed(msg));
        }
        let mut g = self.lock();
        for c in batch {
            g.publish(&self.tx, c);
        }
        *durable = last;
        Ok(())
    }

    /// Starts a watch after `rev`: the kept changes since then and a live receiver, atomically.
    pub fn watch_from(&self, rev: u64) -> ApiResult<Resume> {
        let g = self.lock();
        if rev < g.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {rev} ({})",
                g.compacted + 1
            )));
        }
        // A revision this store never reached comes from another incarnation (e.g. a wiped or
        // in-memory store after a restart): resuming would silently skip changes, so relist.
        if rev > g.revision {
            return Err(ApiError::gone(format!(
                "resource version {rev} is newer than this server's ({}); relist",
                g.revision
            )));
        }
        let past = g.history.iter().filter(|c| c.rev > rev).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// A snapshot plus a live receiver for changes after it, atomically.
    pub fn snapshot_and_subscribe(&self) -> (u64, Objects, broadcast::Receiver<Arc<Change>>) {
        let g = self.lock();
        (g.revision, g.objects.clone(), self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> Key {
        ("things.x.io".into(), "default".into(), n.into())
    }

    fn obj(n: &str) -> Value {
        json!({"metadata": {"name": n}})
    }

    #[test]
    fn revisions_history_and_expiry() {
        let s = Store::open(None, 3, 16).unwrap();
        let a = s
            .commit(&key("a"), Expect::Absent, Some(obj("a")))
            .ok()
            .unwrap();
        assert_eq!(a.rev, 1);
        assert_eq!(object_revision(&a.object), 1);
        assert!(matches!(
            s.commit(&key("a"), Expect::Absent, Some(obj("a"))),
            Err(Precondition::Exists)
        ));
        assert!(matches!(
            s.commit(&key("a"), Expect::Revision(7), Some(obj("a"))),
            Err(Precondition::Stale)
        ));
        for i in 0..5 {
            s.commit(&key(&format!("b{i}")), Expect::Absent, Some(obj("b")))
                .ok()
                .unwrap();
        }
        // History keeps 3 changes: revisions 4..=6; resuming from 3 works, from 2 is expired.
        assert_eq!(s.watch_from(3).ok().unwrap().0.len(), 3);
        assert_eq!(s.watch_from(2).err().unwrap().code, 410);
        assert_eq!(s.watch_from(99).err().unwrap().code, 410);
        let d = s.commit(&key("a"), Expect::Revision(1), None).ok().unwrap();
        assert_eq!(d.kind, ChangeType::Deleted);
        assert_eq!(object_revision(&d.object), 7);
        assert!(s.get(&key("a")).is_none());
    }

    #[tokio::test]
    async fn a_slow_watcher_never_blocks_writers() {
        let s = Store::open(None, 10, 16).unwrap();
        let (_, mut rx) = s.watch_from(0).ok().unwrap();
        let start = std::time::Instant::now();
        for i in 0..1000 {
            s.commit(&key(&format!("o{i}")), Expect::Absent, Some(obj("o")))
                .ok()
                .unwrap();
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // The watcher that never read has lagged; the watch code turns this into a 410 ERROR.
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[test]
    fn group_commit_is_durable_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(Some(Persist::open(dir.path()).unwrap()), 100, 1024).unwrap());
        let mut rx = store.watch_from(0).ok().unwrap().1;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.commit(&key(&format!("t{t}-{i}")), Expect::Absent, Some(obj("x")))
                            .ok()
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Watchers got every change once, in revision order.
        for want in 1..=100 {
            assert_eq!(rx.try_recv().unwrap().rev, want);
        }
        drop(store);
        let reopened = Store::open(Some(Persist::open(dir.path()).unwrap()), 100, 1024).unwrap();
        assert_eq!(reopened.revision(), 100);
        assert_eq!(reopened.snapshot().1.len(), 100);
    }
}
