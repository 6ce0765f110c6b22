//! A thin facade over the structural-schema module (`schema.rs`, written separately).
//!
//! The request pipeline only needs four operations (prune, default, validate, and the schema for
//! server-side apply); keeping them behind this facade isolates the rest of the server from the
//! schema module's exact types and converts its causes into Status causes.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

use super::error::StatusCause;
use super::schema::StructuralSchema;
use super::ssa;

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
