//! Label keys and values, validated as kube-apiserver validates `metadata.labels` of every kind:
//! a key is an optional DNS-1123 subdomain prefix (at most 253 bytes) and `/`, then a name part of
//! at most 63 bytes of alphanumerics, `-`, `_` and `.` that starts and ends alphanumeric; a value
//! is empty or such a name part. Each bad key or value is one `FieldValueInvalid` cause on
//! `metadata.labels`, worded as kube-apiserver words it.
//!
//! Hand-written: the rules are a few character classes, and no crate of our dependency set
//! carries Kubernetes' qualified-name validation.
use super::error::StatusCause;
use serde_json::Value;

const NAME_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and \
must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', \
regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric \
characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
'MyValue',  or 'my_value',  or '12345', regex used for validation is \
'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const PREFIX_RULE: &str = "prefix part a lowercase RFC 1123 subdomain must consist of lower case \
alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. \
'example.com', regex used for validation is \
'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// ObjectMeta's fields of a fixed JSON type, with the Go type kube-apiserver decodes them into.
const TYPED: &[(&str, &str)] = &[
    ("name", "string"),
    ("generateName", "string"),
    ("namespace", "string"),
    ("resourceVersion", "string"),
    ("uid", "types.UID"),
    ("labels", "map[string]string"),
    ("annotations", "map[string]string"),
    ("finalizers", "[]string"),
    ("ownerReferences", "[]v1.OwnerReference"),
    ("generation", "int64"),
    ("creationTimestamp", "string"),
    ("deletionTimestamp", "string"),
    ("deletionGracePeriodSeconds", "int64"),
    ("managedFields", "[]v1.ManagedFieldsEntry"),
];

/// A JSON value's type as Go's decoder names it in its errors.
pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// The first ObjectMeta field of `obj` whose JSON type cannot be decoded (what kube-apiserver
/// refuses with 400 before anything else), as Go's decoder words it: `json: cannot unmarshal …`.
pub fn type_error(obj: &Value) -> Option<String> {
    let meta = obj.get("metadata")?.as_object()?;
    for (field, go) in TYPED {
        let Some(v) = meta.get(*field).filter(|v| !v.is_null()) else {
            continue;
        };
        let bad: Option<(&Value, &str)> = match *go {
            "map[string]string" => match v.as_object() {
                None => Some((v, go)),
                Some(m) => m
                    .values()
                    .find(|x| !x.is_string() && !x.is_null())
                    .map(|x| (x, "string")),
            },
            // A null element decodes as "".
            "[]string" => match v.as_array() {
                None => Some((v, go)),
                Some(a) => a
                    .iter()
                    .find(|x| !x.is_string() && !x.is_null())
                    .map(|x| (x, "string")),
            },
            "[]v1.OwnerReference" | "[]v1.ManagedFieldsEntry" => match v.as_array() {
                None => Some((v, go)),
                Some(a) => a
                    .iter()
                    .find(|x| !x.is_object())
                    .map(|x| (x, go.trim_start_matches("[]"))),
            },
            "int64" => (v.as_i64().is_none()).then_some((v, go)),
            _ => (!v.is_string()).then_some((v, go)),
        };
        if let Some((value, of)) = bad {
            return Some(format!(
                "json: cannot unmarshal {} into Go struct field ObjectMeta.{field} of type {of}",
                json_type(value)
            ));
        }
    }
    None
}

/// Null values of `metadata.labels` and `metadata.annotations` become `""`, as Go decodes a null
/// into a `map[string]string`.
pub fn null_values_to_empty(obj: &mut Value) {
    for field in ["labels", "annotations"] {
        if let Some(m) = obj
            .get_mut("metadata")
            .and_then(|m| m.get_mut(field))
            .and_then(Value::as_object_mut)
        {
            for v in m.values_mut().filter(|v| v.is_null()) {
                *v = Value::String(String::new());
            }
        }
    }
}

/// The most bytes all annotations of one object may hold, keys and values together.
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// Finalizer names Kubernetes itself uses without a domain.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// The causes for `obj`'s `metadata.labels`, `metadata.annotations` and `metadata.finalizers`
/// (none when they are valid or absent). A built-in kind also refuses a finalizer that is
/// neither one of Kubernetes' own nor domain-qualified; a custom resource only gets a warning
/// for it from kube-apiserver, which the embedded API does not send.
pub fn errors(obj: &Value, builtin: bool) -> Vec<StatusCause> {
    let meta = obj.get("metadata");
    let field = |name: &str| meta.and_then(|m| m.get(name));
    let mut out = Vec::new();
    for (key, value) in field("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for message in key_errors(key) {
            out.push(invalid("metadata.labels", key, &message));
        }
        if let Some(v) = value.as_str() {
            for message in value_errors(v) {
                out.push(invalid("metadata.labels", v, &message));
            }
        }
    }
    if let Some(annotations) = field("annotations").and_then(Value::as_object) {
        let mut size = 0;
        for (key, value) in annotations {
            for message in key_errors(&key.to_lowercase()) {
                out.push(invalid("metadata.annotations", key, &message));
            }
            size += key.len() + value.as_str().map_or(0, str::len);
        }
        if size > ANNOTATIONS_MAX {
            out.push(StatusCause {
                reason: "FieldValueTooLong".into(),
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than {ANNOTATIONS_MAX} bytes"),
            });
        }
    }
    let finalizers = field("finalizers").and_then(Value::as_array);
    for (i, f) in finalizers.into_iter().flatten().enumerate() {
        let f = f.as_str().unwrap_or_default();
        for message in key_errors(f) {
            out.push(invalid("metadata.finalizers", f, &message));
        }
        if builtin && !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
            out.push(invalid(
                &format!("metadata.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    out
}

fn invalid(field: &str, what: &str, message: &str) -> StatusCause {
    StatusCause {
        reason: "FieldValueInvalid".into(),
        field: field.into(),
        message: format!("Invalid value: \"{what}\": {message}"),
    }
}

/// A name part: alphanumerics at both ends, `-`, `_`, `.` inside.
fn is_name_part(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !s.is_empty()
        && s.chars().all(ok)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    })
}

fn key_errors(key: &str) -> Vec<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyName',  or \
                 'my.name',  or '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain \
                 prefix and '/' (e.g. 'example.com/MyName')"
                    .into(),
            ]
        }
    };
    let mut out = Vec::new();
    match prefix {
        Some("") => out.push("prefix part must be non-empty".into()),
        Some(p) if p.len() > 253 => out.push("prefix part must be no more than 253 bytes".into()),
        Some(p) if !is_dns_subdomain(p) => out.push(PREFIX_RULE.into()),
        Some(_) | None => {}
    }
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 bytes".into());
    }
    if !name.is_empty() && !is_name_part(name) {
        out.push(NAME_RULE.into());
    }
    out
}

fn value_errors(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    if value.len() > 63 {
        out.push("must be no more than 63 bytes".into());
    }
    if !value.is_empty() && !is_name_part(value) {
        out.push(VALUE_RULE.into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(labels: Value) -> usize {
        errors(&json!({"metadata": {"labels": labels}}), false).len()
    }

    #[test]
    fn annotations_and_finalizers_are_checked_too() {
        let fields = |meta: Value, builtin: bool| -> Vec<String> {
            errors(&json!({ "metadata": meta }), builtin)
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        assert_eq!(
            fields(json!({"annotations": {"Example.com/A": "x"}}), true),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(json!({"annotations": {"a b": "x"}}), true),
            ["metadata.annotations"]
        );
        let big = json!({"annotations": {"k": "x".repeat(ANNOTATIONS_MAX)}});
        assert_eq!(fields(big, false), ["metadata.annotations"]);
        let finalizers = json!({"finalizers": ["kubernetes", "example.com/f", "mine", "a b"]});
        assert_eq!(
            fields(finalizers.clone(), true),
            [
                "metadata.finalizers[2]",
                "metadata.finalizers",
                "metadata.finalizers[3]"
            ]
        );
        assert_eq!(fields(finalizers, false), ["metadata.finalizers"]);
    }

    #[test]
    fn valid_keys_and_values_pass() {
        assert_eq!(
            count(json!({"app": "web", "osprov.io/host": "h-1", "a.b_c-d": "", "k8s.io/x": "A.b"})),
            0
        );
    }

    #[test]
    fn wrongly_typed_metadata_is_named_as_go_names_it() {
        let e = |m: Value| type_error(&json!({"metadata": m}));
        assert_eq!(e(json!({"name": "a", "labels": {"k": "v"}})), None);
        assert_eq!(
            e(json!({"labels": {"k": 5}})).as_deref(),
            Some("json: cannot unmarshal number into Go struct field ObjectMeta.labels of type string")
        );
        assert!(e(json!({"annotations": []})).is_some_and(|m| m.contains("map[string]string")));
        assert!(e(json!({"finalizers": [1]})).is_some());
        assert!(e(json!({"name": 1})).is_some());
        assert!(e(json!({"generation": "1"})).is_some());
    }

    #[test]
    fn each_rule_is_one_cause() {
        assert_eq!(count(json!({"bad key": "v"})), 1);
        assert_eq!(count(json!({"k": "v".repeat(64)})), 1);
        assert_eq!(count(json!({"k": "a/b"})), 1);
        assert_eq!(count(json!({"Bad_Prefix/k": "v"})), 1);
        assert_eq!(count(json!({"/k": "v"})), 1);
        assert_eq!(count(json!({"a/b/c": "v"})), 1);
        assert_eq!(count(json!({"k".repeat(64): "v"})), 1);
        assert_eq!(count(json!({"-k": "-v"})), 2);
    }
}
