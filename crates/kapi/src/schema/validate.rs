//! Keyword validation of a custom resource against its compiled schema, reporting failures the
//! way kube-apiserver does: the openapi validator's detail message (`spec.os in body should match
//! '^[a-z]+$'`) wrapped in a `field.Error` body (`Invalid value: "Foo": …`), with the matching
//! cause type (`FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, …).
//! Hand-written because those exact words and field paths are part of the API contract.

use std::collections::HashSet;

use serde_json::Value;

use super::report::{cause, show, show_num, Kind};
use super::{cel, child_path, Cause, ListType, Node};

/// A value outside the node's enum: `FieldValueNotSupported` listing the allowed values.
fn check_enum(node: &Node, path: &str, v: &Value, out: &mut Vec<Cause>) {
    let Some(allowed) = &node.enum_ else { return };
    if allowed.contains(v) {
        return;
    }
    let list: Vec<String> = allowed
        .iter()
        .map(|a| match a {
            Value::String(s) => format!("{s:?}"),
            other => format!("{:?}", other.to_string()),
        })
        .collect();
    let detail = format!("supported values: {}", list.join(", "));
    out.push(cause(Kind::NotSupported, path, Some(&show(v)), &detail));
}

/// The openapi validator's name for the JSON type of a value.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => is_integer(v),
        _ => true,
    }
}

pub(super) fn validate_root(root: &Node, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    validate(root, obj, old, "", true, out);
}

/// Validates `v` against `node` at `path`; `old` is the correlated old value, if any.
pub(super) fn validate(
    node: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    is_root: bool,
    out: &mut Vec<Cause>,
) {
    let name = if path.is_empty() { "body" } else { path };
    if v.is_null() {
        if node.nullable {
            return;
        }
        if let Some(t) = &node.type_ {
            let detail = format!("{name} in body must be of type {t}: \"null\"");
            out.push(cause(Kind::TypeInvalid, path, Some("\"null\""), &detail));
            return;
        }
    }
    if node.int_or_string {
        if !(is_integer(v) || v.is_string()) {
            let actual = type_name(v);
            let detail = format!("{name} in body must be of type integer,string: {actual:?}");
            out.push(cause(
                Kind::TypeInvalid,
                path,
                Some(&format!("{actual:?}")),
                &detail,
            ));
            return;
        }
    } else if let Some(t) = &node.type_ {
        if !type_matches(t, v) {
            let actual = type_name(v);
            let detail = format!("{name} in body must be of type {t}: {actual:?}");
            out.push(cause(
                Kind::TypeInvalid,
                path,
                Some(&format!("{actual:?}")),
                &detail,
            ));
            // kube-openapi's validator checks the enum of a wrongly typed value too.
            check_enum(node, path, v, out);
            return;
        }
    }
    let invalid = |out: &mut Vec<Cause>, detail: String| {
        out.push(cause(Kind::Invalid, path, Some(&show(v)), &detail));
    };
    if let (Some(f), Value::String(s)) = (&node.format, v) {
        if !format_ok(f, s) {
            invalid(out, format!("{name} in body must be of type {f}: {s:?}"));
        }
    }
    check_enum(node, path, v, out);
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if let Some(min) = node.minimum {
                if node.exclusive_minimum && f <= min {
                    invalid(
                        out,
                        format!("{name} in body should be greater than {}", show_num(min)),
                    );
                } else if f < min {
                    invalid(
                        out,
                        format!(
                            "{name} in body should be greater than or equal to {}",
                            show_num(min)
                        ),
                    );
                }
            }
            if let Some(max) = node.maximum {
                if node.exclusive_maximum && f >= max {
                    invalid(
                        out,
                        format!("{name} in body should be less than {}", show_num(max)),
                    );
                } else if f > max {
                    invalid(
                        out,
                        format!(
                            "{name} in body should be less than or equal to {}",
                            show_num(max)
                        ),
                    );
                }
            }
            if let Some(m) = node.multiple_of.filter(|m| *m > 0.0) {
                let q = f / m;
                if (q - q.round()).abs() > 1e-9 {
                    invalid(
                        out,
                        format!("{name} in body should be a multiple of {}", show_num(m)),
                    );
                }
            }
        }
        Value::String(s) => {
            let len = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
            if let Some(min) = node.min_length.filter(|m| len < *m) {
                invalid(
                    out,
                    format!("{name} in body should be at least {min} chars long"),
                );
            }
            if let Some(max) = node.max_length.filter(|m| len > *m) {
                let unit = if max == 1 { "byte" } else { "bytes" };
                out.push(cause(
                    Kind::TooLong,
                    path,
                    None,
                    &format!("may not be more than {max} {unit}"),
                ));
            }
            if let Some((pat, re)) = &node.pattern {
                if !re.is_match(s) {
                    invalid(out, format!("{name} in body should match '{pat}'"));
                }
            }
        }
        Value::Array(items) => validate_array(node, items, old, path, name, out),
        Value::Object(map) => {
            let n = i64::try_from(map.len()).unwrap_or(i64::MAX);
            if let Some(min) = node.min_properties.filter(|m| n < *m) {
                invalid(
                    out,
                    format!("{name} in body should have at least {min} properties"),
                );
            }
            if let Some(max) = node.max_properties.filter(|m| n > *m) {
                let unit = if max == 1 { "item" } else { "items" };
                out.push(cause(
                    Kind::TooMany,
                    path,
                    Some(&n.to_string()),
                    &format!("must have at most {max} {unit}"),
                ));
            }
            for req in &node.required {
                if !map.contains_key(req) {
                    out.push(cause(Kind::Required, &child_path(path, req), None, ""));
                }
            }
            let old_map = old.and_then(Value::as_object);
            for (k, child) in map {
                if is_root && k == "metadata" {
                    continue;
                }
                let sub = node.properties.get(k).or(node.additional.as_deref());
                if let Some(sub) = sub {
                    let old_child = old_map.and_then(|m| m.get(k));
                    validate(sub, child, old_child, &child_path(path, k), false, out);
                }
            }
        }
        _ => {}
    }
    validate_combinators(node, v, old, path, name, out);
    cel::eval_rules(node, v, old, path, is_root, out);
}

fn validate_array(
    node: &Node,
    items: &[Value],
    old: Option<&Value>,
    path: &str,
    name: &str,
    out: &mut Vec<Cause>,
) {
    let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let arr = Value::Array(items.to_vec());
    if let Some(min) = node.min_items.filter(|m| n < *m) {
        out.push(cause(
            Kind::Invalid,
            path,
            Some(&show(&arr)),
            &format!("{name} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = node.max_items.filter(|m| n > *m) {
        let unit = if max == 1 { "item" } else { "items" };
        out.push(cause(
            Kind::TooMany,
            path,
            Some(&n.to_string()),
            &format!("must have at most {max} {unit}"),
        ));
    }
    if node.unique_items {
        let distinct: HashSet<String> = items.iter().map(Value::to_string).collect();
        if distinct.len() != items.len() {
            out.push(cause(
                Kind::Invalid,
                path,
                Some(&show(&arr)),
                &format!("{name} in body shouldn't contain duplicates"),
            ));
        }
    }
    let old_items = old.and_then(Value::as_array);
    match &node.list_type {
        ListType::Set => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    out.push(cause(
                        Kind::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(&show(item)),
                        "",
                    ));
                }
            }
        }
        ListType::Map(keys) => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key = map_key(keys, item);
                if !seen.insert(Value::Object(key.clone()).to_string()) {
                    out.push(cause(
                        Kind::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(&show(&Value::Object(key))),
                        "",
                    ));
                }
            }
        }
        ListType::Atomic => {}
    }
    if let Some(item_schema) = &node.items {
        for (i, item) in items.iter().enumerate() {
            // Only items of list-type=map lists correlate with old items (by key).
            let old_item = match (&node.list_type, old_items) {
                (ListType::Map(keys), Some(olds)) => {
                    let key = map_key(keys, item);
                    olds.iter().find(|o| map_key(keys, o) == key)
                }
                _ => None,
            };
            validate(
                item_schema,
                item,
                old_item,
                &format!("{path}[{i}]"),
                false,
                out,
            );
        }
    }
}

/// The values of a list-map item's key fields (absent keys are left out).
pub(crate) fn map_key(keys: &[String], item: &Value) -> serde_json::Map<String, Value> {
    keys.iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

fn validate_combinators(
    node: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    name: &str,
    out: &mut Vec<Cause>,
) {
    for sub in &node.all_of {
        validate(sub, v, old, path, false, out);
    }
    let passes = |sub: &Node| {
        let mut errs = Vec::new();
        validate(sub, v, old, path, false, &mut errs);
        errs.is_empty()
    };
    if !node.any_of.is_empty() && !node.any_of.iter().any(passes) {
        out.push(cause(
            Kind::Invalid,
            path,
            Some(&show(v)),
            &format!("{name} in body must validate at least one schema (anyOf)"),
        ));
    }
    if !node.one_of.is_empty() && node.one_of.iter().filter(|s| passes(s)).count() != 1 {
        out.push(cause(
            Kind::Invalid,
            path,
            Some(&show(v)),
            &format!("{name} in body must validate one and only one schema (oneOf)"),
        ));
    }
    if let Some(not) = &node.not {
        if passes(not) {
            out.push(cause(
                Kind::Invalid,
                path,
                Some(&show(v)),
                &format!("{name} in body must not validate the schema (not)"),
            ));
        }
    }
}

/// The string formats kube-apiserver checks; unknown formats pass.
fn format_ok(format: &str, s: &str) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let re = |pat: &str| regex::Regex::new(pat).is_ok_and(|r| r.is_match(s));
    match format {
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            }
        }),
        "uuid" => re(r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "date-time" | "datetime" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "hostname" => s.len() <= 255 && s.split('.').all(re_label),
        "email" => re(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
        "mac" => re(r"(?i)^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$"),
        "uri" => re(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S*$"),
        "duration" => re(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d|w)\s*)+$"),
        _ => true,
    }
}

fn re_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}
