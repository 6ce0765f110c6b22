//! A thin facade over the structural-schema module (`schema.rs`, written separately).
//!
//! The request pipeline only needs four operations (prune, default, validate, and the schema for
//! server-side apply); keeping them behind this facade isolates the rest of the server from the
//! schema module's exact types and converts its causes into Status causes, in kube-apiserver's
//! way: a string value reports only its first failing keyword (maxLength, minLength, pattern),
//! and when a blocking cause (wrong type, required, unsupported, too long, too many) keeps the
//! CEL rules from being evaluated, a `<nil>` cause says so (apiextensions' `hasBlockingErr`).
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

use super::error::StatusCause;
use super::schema::StructuralSchema;
use super::ssa;

#[derive(Debug)]
pub struct CrdSchema {
    inner: StructuralSchema,
    /// The schema has `x-kubernetes-validations` somewhere.
    has_rules: bool,
}

fn has_rules(p: &JSONSchemaProps) -> bool {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    p.x_kubernetes_validations
        .as_ref()
        .is_some_and(|v| !v.is_empty())
        || p.properties.iter().flatten().any(|(_, c)| has_rules(c))
        || matches!(&p.additional_properties, Some(JSONSchemaPropsOrBool::Schema(c)) if has_rules(c))
        || match &p.items {
            Some(JSONSchemaPropsOrArray::Schema(c)) => has_rules(c),
            Some(JSONSchemaPropsOrArray::Schemas(cs)) => cs.iter().any(has_rules),
            None => false,
        }
}

/// Which keyword of a string value a cause reports (0 = maxLength, 1 = minLength, 2 = pattern).
fn string_keyword(c: &StatusCause) -> Option<u8> {
    if c.reason == "FieldValueTooLong" {
        Some(0)
    } else if c.reason != "FieldValueInvalid" {
        None
    } else if c.message.ends_with("chars long") {
        Some(1)
    } else if c.message.contains(" in body should match '") {
        Some(2)
    } else {
        None
    }
}

const BLOCKING: [&str; 5] = [
    "FieldValueTypeInvalid",
    "FieldValueRequired",
    "FieldValueNotSupported",
    "FieldValueTooLong",
    "FieldValueTooMany",
];

const NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

impl CrdSchema {
    pub fn new(props: &JSONSchemaProps) -> Result<Self, String> {
        Ok(CrdSchema {
            inner: StructuralSchema::new(props).map_err(|e| e.to_string())?,
            has_rules: has_rules(props),
        })
    }
    /// Drops unknown fields; returns their paths (for fieldValidation=Strict/Warn).
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        self.inner.prune(obj)
    }
    pub fn apply_defaults(&self, obj: &mut Value) {
        self.inner.apply_defaults(obj)
    }
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<StatusCause> {
        let all: Vec<StatusCause> = self
            .inner
            .validate(obj, old)
            .into_iter()
            .map(|c| StatusCause {
                reason: c.reason,
                field: c.field,
                message: c.message,
            })
            .collect();
        // Only the first failing string keyword of a field.
        let mut out: Vec<StatusCause> = Vec::new();
        for c in all {
            let Some(k) = string_keyword(&c) else {
                out.push(c);
                continue;
            };
            match out
                .iter()
                .position(|o| o.field == c.field && string_keyword(o).is_some())
            {
                Some(i) if string_keyword(&out[i]).is_some_and(|o| k < o) => out[i] = c,
                Some(_) => {}
                None => out.push(c),
            }
        }
        let blocked = out.iter().any(|c| BLOCKING.contains(&c.reason.as_str()));
        if blocked && !out.iter().any(|c| c.field == "<nil>") {
            out.extend(self.rules_not_checked());
        }
        out
    }
    /// Whether one of `causes` keeps the CEL rules from running (a type, a required value, an
    /// unsupported value, a length or count over its limit), metadata's included.
    pub fn blocks_rules(causes: &[StatusCause]) -> bool {
        causes.iter().any(|c| BLOCKING.contains(&c.reason.as_str()))
    }
    /// The cause kube-apiserver adds when a blocking error kept the CEL rules from running.
    pub fn rules_not_checked(&self) -> Option<StatusCause> {
        self.has_rules.then(|| StatusCause {
            reason: "FieldValueInvalid".into(),
            field: "<nil>".into(),
            message: format!("Invalid value: null: {NOT_CHECKED}"),
        })
    }
    pub fn structural(&self) -> &StructuralSchema {
        &self.inner
    }
}

/// Result of a server-side apply.
pub enum Applied {
    Object(Value),
    Conflicts(Vec<ssa::Conflict>),
}

/// Server-side apply of `applied` onto `live` by `manager` (C3).
pub fn ssa_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    schema: Option<&CrdSchema>,
    now: &str,
) -> Result<Applied, String> {
    let structural = schema.map(CrdSchema::structural);
    match ssa::apply(live, applied, manager, force, subresource, structural, now) {
        Ok(ssa::ApplyOutcome::Applied(v)) => Ok(Applied::Object(v)),
        Ok(ssa::ApplyOutcome::Conflict(c)) => Ok(Applied::Conflicts(c)),
        Err(e) => Err(e.to_string()),
    }
}

/// The 409 message for apply conflicts, in kube-apiserver's words.
pub fn conflicts_message(conflicts: &[ssa::Conflict]) -> String {
    ssa::conflicts_message(conflicts)
}

/// Records a non-apply write of `manager` in `new`'s managedFields.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    schema: Option<&CrdSchema>,
    now: &str,
) {
    ssa::record_update_with(
        old,
        new,
        manager,
        subresource,
        schema.map(CrdSchema::structural),
        now,
    );
}
