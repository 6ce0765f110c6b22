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
    pub fn open(dir: &Path) -> Result<Self, ApiServerError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("osprov-api.redb"))?;
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
