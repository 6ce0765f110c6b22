//! What of an answer is compared.
//!
//! - The HTTP status code, always.
//! - A `Status` body: `status`, `code`, `reason`, `details.{name, group, kind}` and the causes as
//!   `(reason, field)` pairs (a sorted set:
//!   kube-apiserver sometimes reports one cause twice, from two validators). Messages are NOT compared: they are for people, kube-rs and
//!   kubectl branch on code/reason/causes only, and matching kube-apiserver's wording byte for
//!   byte would be brittle; they are printed beside a difference to help reading it.
//! - An object: everything except `uid`, `resourceVersion`, `creationTimestamp`, the time of
//!   `managedFields` entries (which are then ordered by operation, manager and subresource, as
//!   the time that orders them is gone) and `deletionTimestamp`'s value (kept as `<set>`); a `generateName`
//!   name keeps its prefix and loses its random suffix.
//! - A list: `kind`, `apiVersion`, the items as objects, whether `continue` is set and
//!   `remainingItemCount`.
//! - A watch: the sequence of event types and objects, BOOKMARKs excluded (their timing differs).
//! - A Table: everything but the column descriptions (documentation text) and the relative
//!   times in date columns, its rows' objects as objects.
//!
//! The test namespace (different on each backend) is replaced by `NS` in every string first.
use serde_json::{json, Map, Value};

/// Replaces the namespace name in every string of `v`.
fn rename(v: &mut Value, ns: &str) {
    match v {
        Value::String(s) if s.contains(ns) => *s = s.replace(ns, "NS"),
        Value::Array(a) => a.iter_mut().for_each(|x| rename(x, ns)),
        Value::Object(o) => o.values_mut().for_each(|x| rename(x, ns)),
        _ => {}
    }
}

fn status(v: &Value) -> Value {
    let mut out = Map::new();
    for f in ["status", "code", "reason"] {
        if let Some(x) = v.get(f) {
            out.insert(f.into(), x.clone());
        }
    }
    if let Some(d) = v.get("details").and_then(Value::as_object) {
        let mut details = Map::new();
        for f in ["name", "group", "kind"] {
            if let Some(x) = d.get(f).filter(|x| *x != "") {
                details.insert(f.into(), x.clone());
            }
        }
        let mut causes: Vec<Value> = d
            .get("causes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                json!([
                    c.get("reason").cloned().unwrap_or(Value::Null),
                    c.get("field").cloned().unwrap_or(Value::Null)
                ])
            })
            .collect();
        causes.sort_by_key(|c| c.to_string());
        causes.dedup();
        if !causes.is_empty() {
            details.insert("causes".into(), Value::Array(causes));
        }
        if !details.is_empty() {
            out.insert("details".into(), Value::Object(details));
        }
    }
    Value::Object(out)
}

fn object(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["uid", "resourceVersion", "creationTimestamp", "selfLink"] {
            m.remove(f);
        }
        if m.contains_key("deletionTimestamp") {
            m.insert("deletionTimestamp".into(), json!("<set>"));
        }
        if let (Some(prefix), Some(name)) = (
            m.get("generateName").and_then(Value::as_str),
            m.get("name").and_then(Value::as_str),
        ) {
            if name.starts_with(prefix) {
                let n = format!("{prefix}<suffix>");
                m.insert("name".into(), json!(n));
            }
        }
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf.iter_mut().filter_map(Value::as_object_mut) {
                e.remove("time");
            }
            // Both servers sort entries by operation, time (seconds), manager: without the
            // time, the order within one operation is by manager and subresource.
            let key = |e: &Value| {
                ["operation", "manager", "subresource"]
                    .map(|f| e.get(f).and_then(Value::as_str).unwrap_or("").to_string())
            };
            mf.sort_by_key(key);
        }
    }
    v
}

fn list(v: &Value) -> Value {
    let mut out = Map::new();
    for f in ["kind", "apiVersion"] {
        if let Some(x) = v.get(f) {
            out.insert(f.into(), x.clone());
        }
    }
    let mut meta = Map::new();
    if v.pointer("/metadata/continue").is_some_and(|c| c != "") {
        meta.insert("continue".into(), json!("<set>"));
    }
    if let Some(r) = v.pointer("/metadata/remainingItemCount") {
        meta.insert("remainingItemCount".into(), r.clone());
    }
    if v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("resourceVersion".into(), json!("<missing>"));
    }
    out.insert("metadata".into(), Value::Object(meta));
    let items: Vec<Value> = v
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(object)
        .collect();
    out.insert("items".into(), Value::Array(items));
    Value::Object(out)
}

/// A Table: the column descriptions are for people (kube-apiserver copies the OpenAPI field
/// documentation into them), and each row's object is compared as an object.
fn table(v: &Value) -> Value {
    let mut v = v.clone();
    // Relative times ("5s") depend on when each server answered.
    let mut times = Vec::new();
    if let Some(Value::Array(cols)) = v.get_mut("columnDefinitions") {
        for (i, c) in cols.iter_mut().filter_map(Value::as_object_mut).enumerate() {
            c.remove("description");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if c.get("type") == Some(&json!("date"))
                || matches!(name, "Age" | "Last Seen" | "First Seen")
            {
                times.push(i);
            }
        }
    }
    if let Some(Value::Array(rows)) = v.get_mut("rows") {
        for r in rows.iter_mut() {
            if let Some(o) = r.get("object").map(object) {
                r["object"] = o;
            }
            if let Some(Value::Array(cells)) = r.get_mut("cells") {
                for &i in &times {
                    if let Some(c) = cells.get_mut(i).filter(|c| c.is_string()) {
                        *c = json!("<time>");
                    }
                }
            }
        }
    }
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn body(v: &Value) -> Value {
    match v.get("kind").and_then(Value::as_str) {
        Some("Status") => status(v),
        Some("Table") => table(v),
        Some(k) if k.ends_with("List") && v.get("items").is_some() => list(v),
        Some(_) => object(v),
        None => v.clone(),
    }
}

fn watch(events: &[Value]) -> Value {
    Value::Array(
        events
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) != Some("BOOKMARK"))
            .map(|e| json!({"type": e.get("type"), "object": e.get("object").map(body)}))
            .collect(),
    )
}

/// The comparable form of an answer: `{"code": …, "body": …}`.
pub fn normalise(code: u16, raw: &Value, is_watch: bool, ns: &str) -> Value {
    let mut raw = raw.clone();
    rename(&mut raw, ns);
    let body = match (&raw, is_watch && code == 200) {
        (Value::Array(events), true) => watch(events),
        (v, _) => body(v),
    };
    json!({"code": code, "body": body})
}

/// `v` as compact JSON (or `(absent)`), cut after `width` characters.
pub fn compact(v: Option<&Value>, width: usize) -> String {
    let s = v.map_or("(absent)".to_string(), Value::to_string);
    match s.char_indices().nth(width) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The paths where `a` (embedded) and `b` (real) differ, with both values cut at `width`.
pub fn diff(a: &Value, b: &Value, path: &str, width: usize, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(p, q, &format!("{path}/{k}"), width, out),
                    (p, q) => out.push(format!(
                        "{path}/{k}: embedded {} | real {}",
                        compact(p, width),
                        compact(q, width)
                    )),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}/{i}"), width, out);
            }
        }
        _ if a != b => out.push(format!(
            "{path}: embedded {} | real {}",
            compact(Some(a), width),
            compact(Some(b), width)
        )),
        _ => {}
    }
}
