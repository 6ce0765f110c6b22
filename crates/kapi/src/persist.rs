//! Durable storage of the embedded API in a redb database (`<data_dir>/osprov-api.redb`).
//!
//! Two tables: `objects` maps a storage key to the object's JSON exactly as served (uid and
//! resourceVersion included), `meta` holds the global revision counter. The store calls
//! `write_batch` for each group commit, in revision order, so the database always holds a prefix of
//! the revision history and a restart resumes the counter where it stopped (A1).
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

use super::error::ApiServerError;
use super::key::Key;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

pub struct Persist {
    db: Database,
}

fn db_key(k: &Key) -> String {
    format!("{}\u{1}{}\u{1}{}", k.0, k.1, k.2)
}

fn parse_key(s: &str) -> Option<Key> {
    let mut it = s.split('\u{1}');
    Some((
        it.next()?.to_string(),
        it.next()?.to_string(),
        it.next()?.to_string(),
    ))
}

impl Persist {
    /// Open (or create) the database in `dir`. It holds every Secret in plain text, so the
    /// directory is made 0700 and the file 0600 (existing ones are narrowed to that too).
    pub fn open(dir: &Path) -> Result<Self, ApiServerError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let file = dir.join("osprov-api.redb");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&file)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        let db = Database::create(file)?;
        {
            let txn = db.begin_write()?;
            txn.open_table(OBJECTS)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        Ok(Persist { db })
    }

    /// Everything stored, and the revision counter.
    pub fn load(&self) -> Result<(u64, Vec<(Key, Value)>), ApiServerError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let revision = meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
        let objects = txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for entry in objects.iter()? {
            let (k, v) = entry?;
            let key = parse_key(k.value())
                .ok_or_else(|| ApiServerError::Data(format!("bad key {:?}", k.value())))?;
            let value: Value = serde_json::from_slice(v.value())
                .map_err(|e| ApiServerError::Data(e.to_string()))?;
            out.push((key, value));
        }
        Ok((revision, out))
    }

    /// Stores (or, with `None`, removes) objects together with the new revision counter, in one
    /// durable transaction.
    pub fn write_batch(
        &self,
        items: &[(&Key, Option<&Value>)],
        revision: u64,
    ) -> Result<(), ApiServerError> {
        let txn = self.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            for (key, value) in items {
                let k = db_key(key);
                match value {
                    Some(v) => {
                        let bytes = serde_json::to_vec(v)
                            .map_err(|e| ApiServerError::Data(e.to_string()))?;
                        objects.insert(k.as_str(), bytes.as_slice())?;
                    }
                    None => {
                        objects.remove(k.as_str())?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(REVISION, revision)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn the_data_dir_and_its_database_are_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        // A directory made before with the usual umask is narrowed too.
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(Persist::open(&dir).expect("open"));
        assert_eq!(mode(&dir), 0o700, "data dir");
        assert_eq!(mode(&dir.join("osprov-api.redb")), 0o600, "database file");
        // Reopening keeps the data and the modes.
        drop(Persist::open(&dir).expect("reopen"));
        assert_eq!(mode(&dir.join("osprov-api.redb")), 0o600);
    }
}
