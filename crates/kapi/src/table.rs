//! Server-side printing: `meta.k8s.io/v1` Table output (E4) from a CRD's additionalPrinterColumns
//! (or fixed columns for the built-in kinds), plus the small JSONPath subset printer columns use.
//!
//! The JSONPath evaluator is hand-written: printer columns only use `.a.b`, `[n]`, `[*]` and
//! `[?(@.k=="v")]`, and crates implementing RFC 9535 do not accept Kubernetes' `{...}`-less form.
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::resources::{Builtin, PrinterColumn, ResourceInfo};

fn col(name: &str, type_: &str, format: &str, description: &str, json_path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: format.into(),
        description: description.into(),
        priority: 0,
        json_path: json_path.into(),
    }
}

/// The columns of a kind, Name first.
pub fn columns(info: &ResourceInfo) -> Vec<PrinterColumn> {
    let mut cols = vec![col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        ".metadata.name",
    )];
    let age = col(
        "Age",
        "date",
        "",
        "CreationTimestamp of the object.",
        ".metadata.creationTimestamp",
    );
    match info.builtin {
        Builtin::Custom if info.printer_columns.is_empty() => cols.push(age),
        Builtin::Custom => cols.extend(info.printer_columns.iter().cloned()),
        Builtin::Namespace => {
            cols.push(col(
                "Status",
                "string",
                "",
                "The phase of the namespace.",
                ".status.phase",
            ));
            cols.push(age);
        }
        Builtin::Secret => {
            cols.push(col(
                "Type",
                "string",
                "",
                "The type of the secret.",
                ".type",
            ));
            cols.push(col(
                "Data",
                "string",
                "",
                "The number of data items.",
                "#data",
            ));
            cols.push(age);
        }
        Builtin::Lease => {
            cols.push(col(
                "Holder",
                "string",
                "",
                "The holder of the lease.",
                ".spec.holderIdentity",
            ));
            cols.push(age);
        }
        Builtin::CoreEvent | Builtin::EventsV1 => {
            cols = vec![
                col(
                    "Last Seen",
                    "string",
                    "",
                    "Time of the last occurrence.",
                    "#lastseen",
                ),
                col("Type", "string", "", "Type of the event.", ".type"),
                col("Reason", "string", "", "Reason of the event.", ".reason"),
                col(
                    "Object",
                    "string",
                    "",
                    "The object the event is about.",
                    "#object",
                ),
                wide(col(
                    "Subobject",
                    "string",
                    "",
                    "The part of the object the event is about.",
                    "#subobject",
                )),
                wide(col(
                    "Source",
                    "string",
                    "",
                    "The component that reported the event.",
                    "#source",
                )),
                col("Message", "string", "", "The event message.", "#message"),
                wide(col(
                    "First Seen",
                    "string",
                    "",
                    "Time of the first occurrence.",
                    "#firstseen",
                )),
                wide(col(
                    "Count",
                    "string",
                    "",
                    "How often the event occurred.",
                    "#count",
                )),
                wide(col(
                    "Name",
                    "string",
                    "name",
                    "Name of the event.",
                    ".metadata.name",
                )),
            ];
        }
    }
    cols
}

/// `HumanDuration` of apimachinery.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else {
        let y = d / 365;
        if y < 8 && d % 365 != 0 {
            format!("{y}y{}d", d % 365)
        } else {
            format!("{y}y")
        }
    }
}

fn since(ts: &str) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration((Utc::now() - t.with_timezone(&Utc)).num_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

/// Evaluates a printer-column JSONPath; multiple results are joined with ",".
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(field)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = cur.into_iter().flat_map(|v| index(v, inner)).collect();
        } else {
            return Vec::new();
        }
    }
    cur
}

fn index<'a>(v: &'a Value, inner: &str) -> Vec<&'a Value> {
    let Some(arr) = v.as_array() else {
        return if inner == "*" {
            v.as_object()
                .map(|o| o.values().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
    };
    if inner == "*" {
        return arr.iter().collect();
    }
    if let Ok(i) = inner.parse::<i64>() {
        let i = if i < 0 { arr.len() as i64 + i } else { i };
        return arr.get(i as usize).into_iter().collect();
    }
    if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
        if let Some((field, want)) = filter.split_once("==") {
            let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
            let field = field.trim();
            return arr
                .iter()
                .filter(|e| {
                    json_path(e, &format!(".{field}"))
                        .first()
                        .is_some_and(|v| match v {
                            Value::String(s) => s == want,
                            other => {
                                let text = other.to_string();
                                text == want
                            }
                        })
                })
                .collect();
        }
    }
    Vec::new()
}

/// A column `kubectl get -o wide` shows (priority 1).
fn wide(mut c: PrinterColumn) -> PrinterColumn {
    c.priority = 1;
    c
}

/// The string at the first of `pointers` that holds one.
fn first_str<'a>(obj: &'a Value, pointers: &[&str]) -> Option<&'a str> {
    pointers
        .iter()
        .find_map(|p| obj.pointer(p).and_then(Value::as_str))
}

fn cell(obj: &Value, c: &PrinterColumn) -> Value {
    match c.json_path.as_str() {
        "#subobject" => {
            return json!(
                first_str(obj, &["/involvedObject/fieldPath", "/regarding/fieldPath"])
                    .unwrap_or_default()
            )
        }
        "#source" => {
            // kubectl's: the source's component and host, else the reporting controller and
            // instance.
            let nonempty = |p: &[&str]| first_str(obj, p).filter(|s| !s.is_empty());
            let component = nonempty(&["/source/component", "/deprecatedSource/component"])
                .or_else(|| nonempty(&["/reportingComponent", "/reportingController"]))
                .unwrap_or_default();
            let host = nonempty(&["/source/host", "/deprecatedSource/host"])
                .or_else(|| nonempty(&["/reportingInstance"]))
                .unwrap_or_default();
            return json!(match host {
                "" => component.to_string(),
                h => format!("{component}, {h}"),
            });
        }
        "#firstseen" => {
            let ts = first_str(
                obj,
                &["/firstTimestamp", "/deprecatedFirstTimestamp", "/eventTime"],
            );
            return json!(ts.map(since).unwrap_or_else(|| "<unknown>".into()));
        }
        "#count" => {
            // kubectl's: the series' count, else the count, where 0 means once.
            let n = ["/series/count", "/count", "/deprecatedCount"]
                .iter()
                .find_map(|p| obj.pointer(p).and_then(Value::as_i64).filter(|n| *n != 0))
                .unwrap_or(1);
            return json!(n);
        }
        "#data" => {
            return json!(obj
                .get("data")
                .and_then(Value::as_object)
                .map(|o| o.len())
                .unwrap_or(0))
        }
        "#object" => {
            let r = obj.get("involvedObject").or_else(|| obj.get("regarding"));
            let kind = r
                .and_then(|r| r.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_lowercase();
            let name = r
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return json!(format!("{kind}/{name}"));
        }
        "#message" => {
            return obj
                .get("message")
                .or_else(|| obj.get("note"))
                .cloned()
                .unwrap_or(json!(""))
        }
        "#lastseen" => {
            let ts = ["lastTimestamp", "deprecatedLastTimestamp", "eventTime"]
                .iter()
                .find_map(|f| obj.get(*f).and_then(Value::as_str))
                .or_else(|| {
                    obj.pointer("/series/lastObservedTime")
                        .and_then(Value::as_str)
                });
            return json!(ts.map(since).unwrap_or_else(|| "<unknown>".into()));
        }
        _ => {}
    }
    let found = json_path(obj, &c.json_path);
    if found.is_empty() {
        return Value::Null;
    }
    if c.type_ == "date" {
        return json!(found[0].as_str().map(since).unwrap_or_default());
    }
    if found.len() == 1 {
        return match found[0] {
            Value::Object(_) | Value::Array(_) => json!(found[0].to_string()),
            v => v.clone(),
        };
    }
    let parts: Vec<String> = found
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        })
        .collect();
    json!(parts.join(","))
}

pub fn column_definitions(info: &ResourceInfo) -> Vec<Value> {
    columns(info)
        .iter()
        .map(|c| {
            // A custom resource's printer column keeps its declared type; the built-in kinds'
            // creation-time columns are strings (kube-apiserver's own table convertors).
            let type_ = match (c.type_.as_str(), info.builtin) {
                ("date", b) if b != Builtin::Custom => "string",
                (t, _) => t,
            };
            json!({"name": c.name, "type": type_,
                   "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect()
}

pub fn row(info: &ResourceInfo, obj: &Value, include_object: &str) -> Value {
    // A built-in kind's printer reads Go fields: an absent string is "", not null.
    let builtin = info.builtin != Builtin::Custom;
    let cells: Vec<Value> = columns(info)
        .iter()
        .map(|c| match cell(obj, c) {
            Value::Null if builtin && c.type_ == "string" => json!(""),
            v => v,
        })
        .collect();
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))}),
    };
    json!({"cells": cells, "object": object})
}

pub fn table(
    info: &ResourceInfo,
    objs: &[Value],
    rv: &str,
    cont: Option<&str>,
    include_object: &str,
) -> Value {
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(info),
        "rows": objs.iter().map(|o| row(info, o, include_object)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"B\")].status"),
            vec![&json!("False")]
        );
        assert_eq!(json_path(&o, ".status.conditions[*].type").len(), 2);
        assert_eq!(
            json_path(&o, ".status.conditions[0].type"),
            vec![&json!("A")]
        );
        assert!(json_path(&o, ".spec.x").is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
