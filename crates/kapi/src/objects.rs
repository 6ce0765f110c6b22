//! Object-level rules shared by every write: metadata normalisation, name and ownerReference
//! validation, generation tracking, and the per-kind behaviour of the built-in kinds (Secret
//! `stringData`, Namespace phase, the two Event views of one store).
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::error::StatusCause;
use super::resources::{Builtin, ResourceInfo};

pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The metadata map, created if missing; `None` only when `obj` is not an object.
pub fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_terminating(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|v| !v.is_null())
}

/// Go's `omitempty` on ObjectMeta: empty lists/maps and nulls are not stored or served.
pub fn normalize_meta(obj: &mut Value) {
    let Some(m) = meta_mut(obj) else { return };
    m.retain(|_, v| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    });
}

/// ObjectMeta's fields; anything else in `metadata` is unknown to kube-apiserver's typed decoder.
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Drops unknown `metadata` fields; returns their paths (`metadata.x`) for fieldValidation.
pub fn prune_meta(obj: &mut Value) -> Vec<String> {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let unknown: Vec<String> = m
        .keys()
        .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
        .cloned()
        .collect();
    for k in &unknown {
        m.remove(k);
    }
    unknown
        .into_iter()
        .map(|k| format!("metadata.{k}"))
        .collect()
}

/// A random suffix for `generateName`, from the alphabet Kubernetes uses.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// RFC 1123 subdomain (names of most kinds) or label (namespaces).
pub fn name_errors(name: &str, label: bool) -> Option<String> {
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.'));
    // Every dot-separated label of a subdomain starts and ends alphanumeric (`a..b` does not).
    let ok_ends = name.split('.').all(|part| {
        part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    });
    if name.len() <= max && ok_chars && ok_ends {
        return None;
    }
    Some(if label {
        format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")
    } else {
        format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    })
}

/// ownerReferences: apiVersion (its version), kind, name and uid not empty; at most one
/// controller (C5).
pub fn owner_reference_errors(obj: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let Some(refs) = meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
    else {
        return out;
    };
    let mut controllers = 0;
    // kube-apiserver names the fields without the entry's index, each an invalid empty value
    // (a null entry decodes as an empty reference); the version is apiVersion's part after `/`.
    for r in refs {
        let text = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
        let version = text("apiVersion").rsplit('/').next().unwrap_or_default();
        for (f, empty) in [
            ("apiVersion", version.is_empty()),
            ("kind", text("kind").is_empty()),
            ("name", text("name").is_empty()),
            ("uid", text("uid").is_empty()),
        ] {
            if empty {
                let what = if f == "apiVersion" { "version" } else { f };
                out.push(StatusCause {
                    reason: "FieldValueInvalid".into(),
                    field: format!("metadata.ownerReferences.{f}"),
                    message: format!("Invalid value: \"\": {what} must not be empty"),
                });
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        out.push(StatusCause {
            reason: "FieldValueInvalid".into(),
            field: "metadata.ownerReferences".into(),
            message: "Invalid value: \"\": Only one reference can have Controller set to true"
                .into(),
        });
    }
    out
}

/// Everything outside metadata (and status when it is a subresource), for generation (A4).
pub fn spec_part(obj: &Value, drop_status: bool) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    m.remove("metadata");
    m.remove("apiVersion");
    m.remove("kind");
    if drop_status {
        m.remove("status");
    }
    m
}

/// Equal apart from resourceVersion and the times of managedFields entries (a no-op write, A2).
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = meta_mut(&mut v) {
            m.remove("resourceVersion");
            // A new manager's entry is a change (an apply that takes ownership of values
            // already there is written); an entry's time alone is not.
            if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
                for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Per-kind preparation of a built-in object before it is stored.
pub fn prepare_builtin(
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    if info.builtin != Builtin::Secret {
        return causes;
    }
    // A null data value decodes as empty bytes, an array of byte values as those bytes.
    if let Some(Value::Object(data)) = obj.get_mut("data") {
        use base64::Engine;
        for v in data.values_mut() {
            let bytes: Option<Vec<u8>> = match v {
                Value::Null => Some(Vec::new()),
                Value::Array(a) => a
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect(),
                _ => None,
            };
            if let Some(bytes) = bytes {
                *v = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        use base64::Engine;
        let data = obj
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| json!({})));
        if let Some(Value::Object(data)) = data {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
    if obj.get("type").is_none_or(|t| t.is_null() || t == "") {
        obj["type"] = json!("Opaque");
    }
    if let Some(Value::Object(data)) = obj.get("data") {
        use base64::Engine;
        for (k, v) in data {
            let ok = v
                .as_str()
                .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                causes.push(StatusCause {
                    reason: "FieldValueInvalid".into(),
                    field: format!("data[{k}]"),
                    message: "Invalid value: \"<secret contents redacted>\": must be base64".into(),
                });
            }
        }
    }
    if let Some(old) = old {
        if old.get("type") != obj.get("type") {
            causes.push(StatusCause {
                reason: "FieldValueInvalid".into(),
                field: "type".into(),
                message: "Invalid value: \"\": field is immutable".into(),
            });
        }
    }
    causes
}

const EVENT_RENAMES: [(&str, &str); 8] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// events.k8s.io/v1 Event → the core/v1 storage form.
pub fn event_to_core(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        for (from, to) in EVENT_RENAMES {
            if let Some(v) = o.remove(from) {
                o.insert(to.into(), v);
            }
        }
        o.insert("apiVersion".into(), json!("v1"));
        o.insert("kind".into(), json!("Event"));
    }
    obj
}

/// The Go zero values a stored core/v1 Event always serializes (fields without `omitempty`).
pub fn event_zero_values(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        for (f, zero) in [
            ("involvedObject", json!({})),
            ("source", json!({})),
            ("firstTimestamp", Value::Null),
            ("lastTimestamp", Value::Null),
            ("eventTime", Value::Null),
            ("reportingComponent", json!("")),
            ("reportingInstance", json!("")),
        ] {
            o.entry(f).or_insert(zero);
        }
    }
}

/// The core/v1 storage form → an events.k8s.io/v1 Event.
pub fn event_from_core(mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        for (to, from) in EVENT_RENAMES {
            if let Some(v) = o.remove(from) {
                o.insert(to.into(), v);
            }
        }
        // events.k8s.io/v1 omits these when empty.
        for f in ["reportingController", "reportingInstance"] {
            if o.get(f).is_some_and(|v| v == "") {
                o.remove(f);
            }
        }
        o.insert("apiVersion".into(), json!("events.k8s.io/v1"));
        o.insert("kind".into(), json!("Event"));
    }
    obj
}

/// Field paths a kind can be selected by (B4).
pub fn selectable_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match info.builtin {
        Builtin::CoreEvent => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source.component",
            "type",
        ],
        Builtin::EventsV1 => &[
            "metadata.name",
            "metadata.namespace",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "reason",
            "reportingController",
            "type",
        ],
        Builtin::Secret => &["metadata.name", "metadata.namespace", "type"],
        Builtin::Namespace => &["metadata.name", "status.phase"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_views_round_trip() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "a"},
            "regarding": {"kind": "X", "name": "n"}, "note": "hi", "reportingController": "c",
            "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:00.000000Z"}});
        let core = event_to_core(e.clone());
        assert_eq!(core["involvedObject"]["name"], "n");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "c");
        assert!(core.get("source").is_none());
        let back = event_from_core(core);
        assert_eq!(back["regarding"], e["regarding"]);
        assert_eq!(back["series"], e["series"]);
    }

    #[test]
    fn names() {
        assert!(name_errors("a-b.c", false).is_none());
        assert!(name_errors("A", false).is_some());
        assert!(name_errors("a.b", true).is_some());
    }
}
