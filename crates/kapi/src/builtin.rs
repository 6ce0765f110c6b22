//! Decoding and validation of the built-in kinds, as kube-apiserver's typed decoders and
//! strategies do it: a body that does not decode into the Go type (a string where an int32
//! belongs, data that is not base64) is a 400 "cannot be handled as a …"; then the kind's own
//! rules (Secret keys and `immutable`, Lease durations, Event required fields) are 422 causes.
//! The typed decode uses k8s-openapi's types, which mirror the Go types field for field.
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, StatusCause};
use super::objects::{meta_mut, meta_str};
use super::resources::{Builtin, ResourceInfo};

/// Builds a cause with kube-apiserver's reason for the message's prefix.
fn cause(field: &str, message: String) -> StatusCause {
    let reason = if message.starts_with("Required value") {
        "FieldValueRequired"
    } else if message.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if message.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else {
        "FieldValueInvalid"
    };
    StatusCause {
        reason: reason.into(),
        field: field.into(),
        message,
    }
}

fn decode<T: serde::de::DeserializeOwned>(info: &ResourceInfo, obj: &Value) -> ApiResult<()> {
    // `stringData` is write-only and merged into `data` before this check.
    serde_json::from_value::<T>(obj.clone())
        .map(|_| ())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                info.kind, info.version, info.kind
            ))
        })
}

/// The storage-form object `obj` of a built-in kind decodes as its Go type and passes the kind's
/// validation; `old` is the stored object on update. Custom kinds pass unchecked.
pub fn validate(
    info: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
) -> ApiResult<Vec<StatusCause>> {
    match info.builtin {
        Builtin::Custom => Ok(Vec::new()),
        Builtin::Secret => {
            decode::<Secret>(info, obj)?;
            Ok(secret(obj, old))
        }
        Builtin::Lease => {
            decode::<Lease>(info, obj)?;
            Ok(lease(obj))
        }
        Builtin::CoreEvent | Builtin::EventsV1 => {
            decode::<Event>(info, obj)?;
            let v1 = info.builtin == Builtin::EventsV1;
            let mut causes = event(obj, v1, old.is_some());
            if let (true, Some(old)) = (v1, old) {
                causes.extend(event_immutable(obj, old));
                // An update through events.k8s.io/v1 needs a reason (seen on kube-apiserver).
                if obj
                    .get("reason")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(cause("reason", "Required value".into()));
                }
            }
            Ok(causes)
        }
        Builtin::Namespace => {
            decode::<Namespace>(info, obj)?;
            Ok(Vec::new())
        }
    }
}

fn config_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn secret(obj: &Value, old: Option<&Value>) -> Vec<StatusCause> {
    let mut out = Vec::new();
    if let Some(data) = obj.get("data").and_then(Value::as_object) {
        for k in data.keys().filter(|k| !config_key_ok(k)) {
            out.push(cause(
                &format!("data[{k}]"),
                format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
            ));
        }
    }
    if let Some(old) = old {
        if old.get("immutable") == Some(&json!(true)) {
            if old.get("data") != obj.get("data") {
                out.push(cause(
                    "data",
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
            if obj.get("immutable") != Some(&json!(true)) {
                out.push(cause(
                    "immutable",
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
    }
    out
}

fn lease(obj: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let spec = obj.get("spec");
    for f in ["leaseDurationSeconds", "leaseTransitions"] {
        let Some(n) = spec.and_then(|s| s.get(f)).and_then(Value::as_i64) else {
            continue;
        };
        let (bad, words) = if f == "leaseDurationSeconds" {
            (n <= 0, "must be greater than 0")
        } else {
            (n < 0, "must be greater than or equal to 0")
        };
        if bad {
            out.push(cause(
                &format!("spec.{f}"),
                format!("Invalid value: {n}: {words}"),
            ));
        }
    }
    out
}

/// What an update through events.k8s.io/v1 may not change (fields named in the stored, core
/// form, as kube-apiserver names them).
fn event_immutable(obj: &Value, old: &Value) -> Vec<StatusCause> {
    [
        "action",
        "eventTime",
        "involvedObject",
        "message",
        "reason",
        "related",
        "reportingComponent",
        "reportingInstance",
        "type",
    ]
    .into_iter()
    .filter(|f| obj.get(*f).filter(|v| !v.is_null()) != old.get(*f).filter(|v| !v.is_null()))
    .map(|f| cause(f, "Invalid value: field is immutable".into()))
    .collect()
}

/// kube-apiserver's ValidateEvent (core form): the involved object's namespace must be the
/// event's; events.k8s.io/v1 writes must also carry eventTime, and the type must be
/// Normal or Warning when set (always, for events.k8s.io/v1).
fn event(obj: &Value, v1: bool, updating: bool) -> Vec<StatusCause> {
    let mut out = Vec::new();
    let ns = meta_str(obj, "namespace").unwrap_or_default();
    let involved_ns = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A core Event about a cluster-scoped object (no namespace) lives in "default" (or none).
    let cluster_scoped_ok = !v1 && involved_ns.is_empty() && matches!(ns, "" | "default");
    if !cluster_scoped_ok && involved_ns != ns {
        out.push(cause(
            "involvedObject.namespace",
            format!("Invalid value: {involved_ns:?}: does not match event.namespace"),
        ));
    }
    // An events.k8s.io series counts at least two occurrences and says when it last saw one.
    if let Some(series) = obj.get("series").filter(|s| v1 && s.is_object()) {
        let count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
        if count < 2 {
            out.push(cause(
                "series.count",
                format!("Invalid value: {count}: should be at least 2"),
            ));
        }
        if series.get("lastObservedTime").is_none_or(Value::is_null) {
            out.push(cause("series.lastObservedTime", "Required value".into()));
        }
    }
    let no_time = obj.get("eventTime").is_none_or(Value::is_null);
    if v1 && no_time && !updating {
        out.push(cause("eventTime", "Required value".into()));
    }
    let type_ = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    if (v1 || !type_.is_empty()) && !matches!(type_, "Normal" | "Warning") {
        out.push(cause(
            "type",
            format!("Invalid value: {type_:?}: has invalid value: {type_}"),
        ));
    }
    // A created events.k8s.io Event needs a reason; kube-apiserver checks it only once the time
    // and type are right (seen).
    let reason = obj
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if v1 && !updating && out.is_empty() && !no_time && reason.is_empty() {
        out.push(cause("reason", "Required value".into()));
    }
    out
}

/// Defaults kube-apiserver sets on a built-in object before its fields are tracked: the
/// `kubernetes.io/metadata.name` label of a Namespace, a Lease's (empty) spec.
pub fn default(info: &ResourceInfo, obj: &mut Value) {
    // A Lease's spec is a Go struct, never absent.
    if info.builtin == Builtin::Lease {
        if let Some(o) = obj.as_object_mut() {
            if o.get("spec").is_none_or(Value::is_null) {
                o.insert("spec".into(), json!({}));
            }
        }
        return;
    }
    if info.builtin != Builtin::Namespace {
        return;
    }
    let Some(name) = meta_str(obj, "name").map(String::from) else {
        return;
    };
    if let Some(m) = meta_mut(obj) {
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
}

/// What a Namespace gets after its fields are tracked (the strategy's PrepareForCreate and
/// PrepareForUpdate): on create the `kubernetes` finalizer and phase Active; on update the old
/// spec finalizers, which only `/finalize` changes (the status is kept as for every kind with a
/// status subresource).
pub fn prepare_namespace(info: &ResourceInfo, obj: &mut Value, old: Option<&Value>) {
    if info.builtin != Builtin::Namespace {
        return;
    }
    let Some(o) = obj.as_object_mut() else { return };
    match old {
        None => {
            o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
        }
        Some(old) => {
            match old.get("spec") {
                Some(v) => o.insert("spec".into(), v.clone()),
                None => o.remove("spec"),
            };
        }
    }
    if obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({"phase": "Active"});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys() {
        assert!(config_key_ok("a.b-c_D"));
        assert!(!config_key_ok("bad key"));
        assert!(!config_key_ok(".."));
    }
}
