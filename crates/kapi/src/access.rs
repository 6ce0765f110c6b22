//! The access record: per client user agent, the set of (verb, group, resource, subresource)
//! served. Exposed at `GET /debug/osprov/access` and optionally written to a file, so the Helm
//! chart's RBAC rules can be compared with what the controller really uses.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{json, Value};

type Entry = (String, String, String, String);

pub struct Access {
    seen: Mutex<BTreeMap<String, BTreeSet<Entry>>>,
    file: Option<PathBuf>,
    /// Serialises file writes, so the newest record is the one left on disk.
    writing: Mutex<()>,
}

impl Access {
    pub fn new(file: Option<PathBuf>) -> Self {
        Access {
            seen: Mutex::new(BTreeMap::new()),
            file,
            writing: Mutex::new(()),
        }
    }

    pub fn record(&self, user_agent: &str, verb: &str, group: &str, resource: &str, sub: &str) {
        let entry = (
            verb.to_string(),
            group.to_string(),
            resource.to_string(),
            sub.to_string(),
        );
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.entry(user_agent.to_string())
                .or_default()
                .insert(entry)
        };
        if changed {
            if let Some(path) = &self.file {
                // Written aside and renamed over the file: a reader never sees half a record.
                let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
                let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
                let aside = path.with_extension("partial");
                if let Err(e) =
                    std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, path))
                {
                    tracing::warn!(error = %e, path = %path.display(), "writing the access record failed");
                }
            }
        }
    }

    /// `{"<user agent>": [{"verb","group","resource","subresource"}...]}`.
    pub fn to_json(&self) -> Value {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = serde_json::Map::new();
        for (ua, entries) in seen.iter() {
            let list: Vec<Value> = entries
                .iter()
                .map(|(verb, group, resource, sub)| {
                    json!({"verb": verb, "group": group, "resource": resource, "subresource": sub})
                })
                .collect();
            out.insert(ua.clone(), Value::Array(list));
        }
        Value::Object(out)
    }
}
