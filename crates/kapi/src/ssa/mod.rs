//! Server-side apply and field ownership (`metadata.managedFields`), a faithful subset of
//! kube-apiserver's field manager (sigs.k8s.io/structured-merge-diff), which has no Rust port.
//!
//! * [`apply`]: merges the applier's partial object into the live one (lists and maps by
//!   `x-kubernetes-list-type` / `x-kubernetes-map-type`, see `merge.rs`), removes fields the
//!   manager applied last time and no longer applies unless another manager owns them, reports
//!   conflicts (another manager owns a field whose value changes) unless forced, in which case
//!   ownership moves, and records the applier's set with operation `Apply`.
//! * [`record_update`]: for PUT/PATCH/POST, the fields that changed become owned by the writer
//!   (operation `Update`) and leave everybody else's sets; removed fields leave all sets.
//!
//! As in kube-apiserver: manager identity is (manager, operation, subresource) plus apiVersion for
//! `Update`; `apiVersion`, `kind`, `metadata.{name,namespace,uid,resourceVersion,generation,
//! creationTimestamp,selfLink,managedFields}` are never tracked; empty entries are dropped;
//! entries are sorted by operation, time, manager; an entry's time only changes when the write
//! changes something; a live object with no managedFields gets a `before-first-apply` owner of
//! all its fields on the first apply, and an update of an object without managedFields is not
//! tracked; a non-empty `managedFields` sent with an update replaces the stored one.
//!
//! Removing a field the applier gave up leaves an emptied parent list or object as `[]`/`{}`
//! (current structured-merge-diff; older releases turned it into `null`, kubernetes#117447).
//! [`record_update`] has no schema (lists atomic); [`record_update_with`] takes one and should
//! be used for custom resources so that list-map items are tracked per key, as with applies.
//!
//! Left out: multiple API versions (no conversion of field sets), unions, the cap on the number
//! of update managers, `last-applied-configuration` upgrade, and ResetFields: on a main-endpoint
//! apply to a kind with a status subresource the caller removes `.status` from `applied` first.

mod fieldset;
mod merge;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;

use serde_json::{json, Map, Value};

pub use fieldset::{display_path, FieldSet};

use crate::schema::{MergeInfo, StructuralSchema};

/// Errors of server-side apply (malformed input; never a conflict).
#[derive(Debug, thiserror::Error)]
pub enum SsaError {
    #[error("applied configuration must be a JSON object")]
    NotAnObject,
    #[error("invalid managedFields: {0}")]
    BadFieldsV1(String),
    #[error("associative list item is missing key {key:?}: {item}")]
    MissingKey { key: String, item: String },
    #[error("duplicate entries for key {0} in an associative list")]
    DuplicateKey(String),
}

/// Outcome of a server-side apply.
#[derive(Debug)]
pub enum ApplyOutcome {
    Applied(Value),
    Conflict(Vec<Conflict>),
}

/// A field another manager owns and this apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name.
    pub manager: String,
    /// The field in structured-merge-diff notation, e.g. `.spec.os`.
    pub field: String,
    /// The apiVersion of the other manager's entry (kube-apiserver prints it: `using v1`).
    pub api_version: String,
    /// The other manager's subresource, if any.
    pub subresource: Option<String>,
}

impl Conflict {
    /// The manager as kube-apiserver prints it: `"kubectl" using v1`, or
    /// `"ctrl" with subresource "status" using v1`.
    fn who(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if !self.api_version.is_empty() {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    /// The cause message kube-apiserver puts in the 409's details
    /// (`conflict with "kubectl" using v1`; the cause's field is [`Conflict::field`] and its
    /// reason `FieldManagerConflict`).
    pub fn message(&self) -> String {
        format!("conflict with {}", self.who())
    }
}

/// The Status message of a 409 for these conflicts, as kube-apiserver words it:
/// `Apply failed with 1 conflict: conflict with "a" using v1: .spec.os`.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: {}: {}", c.message(), c.field);
    }
    let mut managers: Vec<String> = conflicts.iter().map(Conflict::who).collect();
    managers.sort_unstable();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.who() == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// One managedFields entry, decoded.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn same_identity(
        &self,
        manager: &str,
        operation: &str,
        api_version: &str,
        sub: Option<&str>,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == sub
            && (operation == "Apply" || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn decode_entries(obj: Option<&Value>) -> Result<Vec<Entry>, SsaError> {
    let list = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .map(|e| {
            Ok(Entry {
                manager: str_field(e, "manager").unwrap_or_default(),
                operation: str_field(e, "operation").unwrap_or_else(|| "Update".into()),
                api_version: str_field(e, "apiVersion").unwrap_or_default(),
                subresource: str_field(e, "subresource").filter(|s| !s.is_empty()),
                time: str_field(e, "time"),
                set: match e.get("fieldsV1") {
                    Some(f) => FieldSet::from_fields_v1(f)?,
                    None => FieldSet::default(),
                },
            })
        })
        .collect()
}

/// Writes the entries (empty ones dropped, kube-apiserver's order) into `obj`.
fn encode_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let list: Vec<Value> = entries.iter().map(Entry::to_json).collect();
    if let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
    {
        if let Some(meta) = meta.as_object_mut() {
            if list.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert("managedFields".into(), Value::Array(list));
            }
        }
    }
}

/// A copy of `obj` without `metadata.managedFields`.
fn without_managed_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    o
}

/// Removes the paths kube-apiserver never tracks.
fn strip(set: &FieldSet) -> FieldSet {
    let mut strip = FieldSet::default();
    strip.insert(&["f:apiVersion".into()]);
    strip.insert(&["f:kind".into()]);
    strip.insert(&["f:metadata".into()]);
    for f in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        strip.insert(&["f:metadata".into(), format!("f:{f}")]);
    }
    set.difference(&strip)
}

fn merge_info(schema: Option<&StructuralSchema>, obj: &Value) -> MergeInfo {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    schema.map_or_else(|| MergeInfo::builtin_root(kind), |s| s.merge_info().clone())
}

fn api_version_of(a: &Value, b: Option<&Value>) -> String {
    str_field(a, "apiVersion")
        .or_else(|| b.and_then(|b| str_field(b, "apiVersion")))
        .unwrap_or_default()
}

/// Server-side apply of `applied` (the user's partial object) by `manager` onto `live`
/// (None = create). See the module doc for the rules.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    schema: Option<&StructuralSchema>,
    now: &str,
) -> Result<ApplyOutcome, SsaError> {
    if !applied.is_object() {
        return Err(SsaError::NotAnObject);
    }
    let mi = merge_info(schema, applied);
    let api_version = api_version_of(applied, live);
    let status_only = subresource == Some("status");
    let mut config = without_managed_fields(applied);
    if status_only {
        let mut c = Map::new();
        for k in ["apiVersion", "kind"] {
            if let Some(v) = applied.get(k) {
                c.insert(k.into(), v.clone());
            }
        }
        if let Some(s) = applied.get("status") {
            c.insert("status".into(), s.clone());
        }
        config = Value::Object(c);
    }
    let live_clean = live.map_or_else(|| json!({}), without_managed_fields);
    let mut entries = decode_entries(live)?;
    if live.is_some() && entries.is_empty() {
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: "Update".into(),
            api_version: api_version.clone(),
            subresource: None,
            time: None,
            set: strip(&fieldset::to_field_set(&live_clean, &mi)?),
        });
    }
    let mut applied_set = strip(&fieldset::to_field_set(&config, &mi)?);
    if status_only {
        applied_set = applied_set.only("f:status");
    }
    let merged = merge::merge(Some(&live_clean), &config, &mi)?;

    let own = entries
        .iter()
        .position(|e| e.same_identity(manager, "Apply", &api_version, subresource));
    let last_set = own.map(|i| entries[i].set.clone()).unwrap_or_default();
    let others: Vec<usize> = (0..entries.len()).filter(|i| Some(*i) != own).collect();
    let still_owned = others
        .iter()
        .fold(applied_set.clone(), |acc, i| acc.union(&entries[*i].set));
    let to_remove = last_set.difference(&still_owned);
    let mut result = merged;
    merge::remove_paths(&mut result, &to_remove, Some(&still_owned), &mi)?;

    let cmp = fieldset::compare(&live_clean, &result, &mi)?;
    let changed = strip(&cmp.added.union(&cmp.modified));
    let mut conflicts = Vec::new();
    for i in &others {
        for p in entries[*i].set.intersection(&changed).paths() {
            conflicts.push(Conflict {
                manager: entries[*i].manager.clone(),
                field: display_path(&p),
                api_version: entries[*i].api_version.clone(),
                subresource: entries[*i].subresource.clone(),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
        conflicts.dedup();
        return Ok(ApplyOutcome::Conflict(conflicts));
    }
    for i in &others {
        let e = &mut entries[*i];
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    let object_changed = result != live_clean;
    match own {
        Some(i) => {
            let e = &mut entries[i];
            if object_changed || e.set != applied_set || e.api_version != api_version {
                e.time = Some(now.to_string());
            }
            e.set = applied_set;
            e.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            subresource: subresource.map(str::to_string),
            time: Some(now.to_string()),
            set: applied_set,
        }),
    }
    encode_entries(&mut result, entries);
    Ok(ApplyOutcome::Applied(result))
}

/// Records an ordinary (non-apply) write by `manager` (operation "Update") without a schema:
/// lists are atomic, maps granular. Prefer [`record_update_with`] for custom resources.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    record_update_with(old, new, manager, subresource, None, now);
}

/// Records an ordinary write by `manager` (operation "Update"): the fields that changed between
/// `old` and `new` become owned by `manager` and leave the other managers' sets; removed fields
/// leave all sets. Uses the schema's list/map types when given. A malformed stored managedFields
/// is replaced by the writer's entry (kube-apiserver resets undecodable managedFields).
pub fn record_update_with(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    schema: Option<&StructuralSchema>,
    now: &str,
) {
    let mi = merge_info(schema, new);
    // A non-empty managedFields sent with a main-resource write replaces the stored one;
    // subresource writes always keep the stored one.
    let sent = match subresource {
        None => decode_entries(Some(new)).unwrap_or_default(),
        Some(_) => Vec::new(),
    };
    let mut entries = if sent.is_empty() {
        decode_entries(old).unwrap_or_default()
    } else {
        sent
    };
    if old.is_some() && entries.is_empty() {
        // Objects whose managedFields were cleared stay untracked until the next apply.
        encode_entries(new, entries);
        return;
    }
    let api_version = api_version_of(new, old);
    let old_clean = old.map_or_else(|| json!({}), without_managed_fields);
    let new_clean = without_managed_fields(new);
    let cmp = match fieldset::compare(&old_clean, &new_clean, &mi) {
        Ok(c) => c,
        Err(_) => match fieldset::compare(&old_clean, &new_clean, &MergeInfo::untyped_root()) {
            Ok(c) => c,
            Err(_) => return,
        },
    };
    let changed = strip(&cmp.added.union(&cmp.modified));
    let removed = strip(&cmp.removed);
    let own = entries
        .iter()
        .position(|e| e.same_identity(manager, "Update", &api_version, subresource));
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != own {
            e.set = e.set.difference(&changed).difference(&removed);
        }
    }
    match own {
        Some(i) => {
            let e = &mut entries[i];
            e.set = e.set.difference(&removed).union(&changed);
            if !changed.is_empty() {
                e.time = Some(now.to_string());
            }
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            subresource: subresource.map(str::to_string),
            time: Some(now.to_string()),
            set: changed,
        }),
        None => {}
    }
    encode_entries(new, entries);
}
