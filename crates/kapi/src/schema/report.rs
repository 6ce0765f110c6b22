//! How a validation failure is reported, as kube-apiserver's `field.Error` does: the error type
//! ([`Kind`]) with its cause reason and leading words, the cause itself ([`cause`]), and Go's
//! rendering of the offending value ([`show`]). Shared by keyword validation (`validate.rs`) and
//! CEL rules (`cel.rs`), which otherwise would depend on each other.

use serde_json::Value;

use super::Cause;

/// `field.ErrorType` of kube-apiserver: cause type and the error body's leading words.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Invalid,
    TypeInvalid,
    Required,
    NotSupported,
    TooLong,
    TooMany,
    Forbidden,
    Duplicate,
}

impl Kind {
    fn reason(self) -> &'static str {
        match self {
            Kind::Invalid => "FieldValueInvalid",
            Kind::TypeInvalid => "FieldValueTypeInvalid",
            Kind::Required => "FieldValueRequired",
            Kind::NotSupported => "FieldValueNotSupported",
            Kind::TooLong => "FieldValueTooLong",
            Kind::TooMany => "FieldValueTooMany",
            Kind::Forbidden => "FieldValueForbidden",
            Kind::Duplicate => "FieldValueDuplicate",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Kind::Invalid | Kind::TypeInvalid => "Invalid value",
            Kind::Required => "Required value",
            Kind::NotSupported => "Unsupported value",
            Kind::TooLong => "Too long",
            Kind::TooMany => "Too many",
            Kind::Forbidden => "Forbidden",
            Kind::Duplicate => "Duplicate value",
        }
    }
}

/// Builds a cause like kube-apiserver's `field.Error.ErrorBody()`: required, forbidden and
/// too-long errors omit the value.
pub(crate) fn cause(kind: Kind, field: &str, value: Option<&str>, detail: &str) -> Cause {
    let mut message = kind.words().to_string();
    if let (Some(v), false) = (
        value,
        matches!(kind, Kind::Required | Kind::Forbidden | Kind::TooLong),
    ) {
        message.push_str(": ");
        message.push_str(v);
    }
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(detail);
    }
    Cause {
        reason: kind.reason().to_string(),
        field: field.to_string(),
        message,
    }
}

/// Go's `%v`/`%q` rendering of a JSON value as `field.Error` prints it.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => show_num(f),
            _ => n.to_string(),
        },
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{}", show(v)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// Go's `%v` of a float64: integral values without a fraction.
pub(crate) fn show_num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}
