//! Structural schema handling for custom resources: pruning, defaulting, validation and the
//! list/map merge information server-side apply needs.
//!
//! A CRD version's `openAPIV3Schema` (k8s-openapi's `JSONSchemaProps`) is compiled once into a
//! tree of [`Node`]s (regexes and CEL programs included) by [`StructuralSchema::new`]; the
//! server then calls [`StructuralSchema::prune`], [`StructuralSchema::apply_defaults`] and
//! [`StructuralSchema::validate`] on every write, in that order, as kube-apiserver does.
//!
//! Why hand-written: no crate implements Kubernetes' *structural* pruning and defaulting rules
//! (root `apiVersion`/`kind`/`metadata`, `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-embedded-resource`, non-nullable nulls) over k8s-openapi's `JSONSchemaProps`,
//! and generic JSON-Schema validators report errors in their own words, while clients and tests
//! compare against kube-apiserver's `field.Error` wording (`Invalid value: …`, `Unsupported
//! value: …`, `Required value`). Regexes use the `regex` crate and CEL uses the `cel` crate.
//!
//! Layout: this file holds the public types, compilation, pruning and defaulting;
//! `validate.rs` the keyword validation; `cel.rs` the `x-kubernetes-validations` rules;
//! `merge.rs` the [`MergeInfo`] tree for server-side apply.
//!
//! Left out (faithful subset): `metadata` is neither pruned nor validated here (the server
//! validates ObjectMeta itself); `$ref`, `patternProperties`, `dependencies` and
//! `additionalItems` are ignored (structural schemas forbid them); CEL cost limits,
//! `optionalOldSelf` and the Kubernetes CEL libraries beyond cel's standard and string
//! extensions (quantity, url, ip, `format`-typed timestamps) are not provided.

mod cel;
mod merge;
mod report;
#[cfg(test)]
pub(crate) mod tests;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

pub use merge::{ListType, MergeInfo};

/// One field-level validation failure, as kube-apiserver reports it in Status.details.causes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cause {
    /// "FieldValueInvalid" | "FieldValueRequired" | "FieldValueNotSupported" | "FieldValueTooLong"
    /// | "FieldValueTooMany" | "FieldValueTypeInvalid" | "FieldValueForbidden" | "FieldValueDuplicate"
    pub reason: String,
    /// e.g. "spec.host", "spec.images[2].url"
    pub field: String,
    /// e.g. `Invalid value: "foo": spec.os in body should match '^[a-z]+$'`
    pub message: String,
}

/// Errors compiling a schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: invalid pattern {pattern:?}: {source}")]
    Pattern {
        path: String,
        pattern: String,
        source: regex::Error,
    },
    #[error("{path}: x-kubernetes-validations[{index}]: compilation failed: {message}")]
    Cel {
        path: String,
        index: usize,
        message: String,
    },
    #[error("{path}: items must be a single schema (tuple items are not structural)")]
    TupleItems { path: String },
    #[error("{path}: x-kubernetes-list-type map requires x-kubernetes-list-map-keys")]
    MissingListMapKeys { path: String },
    #[error("{path}: unsupported x-kubernetes-list-type {value:?}")]
    ListType { path: String, value: String },
}

/// A compiled schema node (one `JSONSchemaProps`).
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) type_: Option<String>,
    pub(crate) format: Option<String>,
    pub(crate) nullable: bool,
    pub(crate) int_or_string: bool,
    pub(crate) preserve_unknown: bool,
    pub(crate) embedded_resource: bool,
    pub(crate) properties: BTreeMap<String, Node>,
    /// `additionalProperties` as a schema; `additionalProperties: true` counts as an empty schema.
    pub(crate) additional: Option<Box<Node>>,
    pub(crate) items: Option<Box<Node>>,
    pub(crate) default: Option<Value>,
    pub(crate) enum_: Option<Vec<Value>>,
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_minimum: bool,
    pub(crate) exclusive_maximum: bool,
    pub(crate) multiple_of: Option<f64>,
    pub(crate) min_length: Option<i64>,
    pub(crate) max_length: Option<i64>,
    pub(crate) pattern: Option<(String, regex::Regex)>,
    pub(crate) min_items: Option<i64>,
    pub(crate) max_items: Option<i64>,
    pub(crate) unique_items: bool,
    pub(crate) min_properties: Option<i64>,
    pub(crate) max_properties: Option<i64>,
    pub(crate) required: Vec<String>,
    pub(crate) list_type: ListType,
    pub(crate) map_atomic: bool,
    pub(crate) all_of: Vec<Node>,
    pub(crate) any_of: Vec<Node>,
    pub(crate) one_of: Vec<Node>,
    pub(crate) not: Option<Box<Node>>,
    pub(crate) rules: Vec<cel::Rule>,
}

/// A compiled structural schema of one CRD version (the `openAPIV3Schema`).
pub struct StructuralSchema {
    root: Node,
    merge: MergeInfo,
}

impl std::fmt::Debug for StructuralSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuralSchema").finish_non_exhaustive()
    }
}

impl StructuralSchema {
    /// Compiles `props` (regexes and CEL programs once).
    pub fn new(props: &JSONSchemaProps) -> Result<Self, SchemaError> {
        let root = compile(props, "openAPIV3Schema")?;
        let merge = MergeInfo::from_node(&root, true);
        Ok(Self { root, merge })
    }

    /// Drops fields not in the schema (except under `x-kubernetes-preserve-unknown-fields`, and
    /// `apiVersion`/`kind`/`metadata` at the root and in embedded resources). Returns the paths
    /// of dropped fields in kube-apiserver's form (`spec.foo`, `spec.items[0].bar`), which the
    /// server reports as `unknown field "spec.foo"` for fieldValidation=Strict/Warn.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut dropped = Vec::new();
        prune_node(&self.root, obj, "", true, &mut dropped);
        dropped
    }

    /// Applies `default`s: a missing property (or a `null` one that is not nullable) whose schema
    /// has a default gets a copy of it; defaulting recurses into existing (and defaulted) values,
    /// never creating a missing parent that has no default itself. Non-nullable `null`s without a
    /// default are removed, as kube-apiserver does before defaulting.
    pub fn apply_defaults(&self, obj: &mut Value) {
        default_node(&self.root, obj, true);
    }

    /// Validates the whole object except `metadata` (keywords and CEL rules). `old` is the stored
    /// object on update (None on create); CEL transition rules (`oldSelf`) run only where the old
    /// value exists.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate::validate_root(&self.root, obj, old, &mut causes);
        causes
    }

    /// List-type / map-type / list-map-keys information for server-side apply.
    pub fn merge_info(&self) -> &MergeInfo {
        &self.merge
    }
}

fn compile(p: &JSONSchemaProps, path: &str) -> Result<Node, SchemaError> {
    let mut properties = BTreeMap::new();
    for (k, v) in p.properties.iter().flatten() {
        properties.insert(k.clone(), compile(v, &format!("{path}.properties[{k}]"))?);
    }
    let additional = match &p.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(Box::new(compile(
            s,
            &format!("{path}.additionalProperties"),
        )?)),
        Some(JSONSchemaPropsOrBool::Bool(true)) => Some(Box::default()),
        _ => None,
    };
    let items = match &p.items {
        Some(JSONSchemaPropsOrArray::Schema(s)) => {
            Some(Box::new(compile(s, &format!("{path}.items"))?))
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            return Err(SchemaError::TupleItems { path: path.into() })
        }
        None => None,
    };
    let pattern = match &p.pattern {
        Some(pat) => Some((
            pat.clone(),
            regex::Regex::new(pat).map_err(|source| SchemaError::Pattern {
                path: path.into(),
                pattern: pat.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let list_type = match p.x_kubernetes_list_type.as_deref() {
        None | Some("atomic") => ListType::Atomic,
        Some("set") => ListType::Set,
        Some("map") => {
            let keys = p.x_kubernetes_list_map_keys.clone().unwrap_or_default();
            if keys.is_empty() {
                return Err(SchemaError::MissingListMapKeys { path: path.into() });
            }
            ListType::Map(keys)
        }
        Some(other) => {
            return Err(SchemaError::ListType {
                path: path.into(),
                value: other.into(),
            })
        }
    };
    let sub = |v: &Option<Vec<JSONSchemaProps>>, name: &str| -> Result<Vec<Node>, SchemaError> {
        v.iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| compile(s, &format!("{path}.{name}[{i}]")))
            .collect()
    };
    let not = match &p.not {
        Some(n) => Some(Box::new(compile(n, &format!("{path}.not"))?)),
        None => None,
    };
    let type_ = p.type_.clone().filter(|t| !t.is_empty());
    let rules = cel::compile_rules(p.x_kubernetes_validations.as_deref(), path)?;
    Ok(Node {
        type_,
        format: p.format.clone().filter(|f| !f.is_empty()),
        nullable: p.nullable.unwrap_or(false),
        int_or_string: p.x_kubernetes_int_or_string.unwrap_or(false),
        preserve_unknown: p.x_kubernetes_preserve_unknown_fields.unwrap_or(false),
        embedded_resource: p.x_kubernetes_embedded_resource.unwrap_or(false),
        properties,
        additional,
        items,
        default: p.default.as_ref().map(|d| d.0.clone()),
        enum_: p
            .enum_
            .as_ref()
            .map(|e| e.iter().map(|j| j.0.clone()).collect()),
        minimum: p.minimum,
        maximum: p.maximum,
        exclusive_minimum: p.exclusive_minimum.unwrap_or(false),
        exclusive_maximum: p.exclusive_maximum.unwrap_or(false),
        multiple_of: p.multiple_of,
        min_length: p.min_length,
        max_length: p.max_length,
        pattern,
        min_items: p.min_items,
        max_items: p.max_items,
        unique_items: p.unique_items.unwrap_or(false),
        min_properties: p.min_properties,
        max_properties: p.max_properties,
        required: p.required.clone().unwrap_or_default(),
        list_type,
        map_atomic: p.x_kubernetes_map_type.as_deref() == Some("atomic"),
        all_of: sub(&p.all_of, "allOf")?,
        any_of: sub(&p.any_of, "anyOf")?,
        one_of: sub(&p.one_of, "oneOf")?,
        not,
        rules,
    })
}

/// Joins a field name onto a kube-apiserver style path (`spec` + `host` = `spec.host`).
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Fields kept at the root of an object and of an embedded resource.
const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn prune_node(node: &Node, v: &mut Value, path: &str, is_root: bool, dropped: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let keep_meta = is_root || node.embedded_resource;
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let p = child_path(path, &k);
                if keep_meta && META_FIELDS.contains(&k.as_str()) {
                    // metadata is not pruned here; apiVersion/kind are strings.
                    if let (Some(prop), Some(child)) = (node.properties.get(&k), map.get_mut(&k)) {
                        if k != "metadata" {
                            prune_node(prop, child, &p, false, dropped);
                        }
                    }
                    continue;
                }
                if let Some(prop) = node.properties.get(&k) {
                    if let Some(child) = map.get_mut(&k) {
                        prune_node(prop, child, &p, false, dropped);
                    }
                } else if let Some(add) = &node.additional {
                    if let Some(child) = map.get_mut(&k) {
                        prune_node(add, child, &p, false, dropped);
                    }
                } else if !node.preserve_unknown {
                    map.remove(&k);
                    dropped.push(p);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &node.items {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item_schema, item, &format!("{path}[{i}]"), false, dropped);
                }
            }
        }
        _ => {}
    }
}

fn is_non_nullable_null(v: &Value, node: &Node) -> bool {
    v.is_null() && !node.nullable
}

fn default_node(node: &Node, v: &mut Value, is_root: bool) {
    match v {
        Value::Object(map) => {
            for (k, prop) in &node.properties {
                if is_root && k == "metadata" {
                    continue;
                }
                let missing_or_null = map.get(k).is_none_or(|c| is_non_nullable_null(c, prop));
                if !missing_or_null {
                    continue;
                }
                match &prop.default {
                    Some(d) => {
                        map.insert(k.clone(), d.clone());
                    }
                    None => {
                        // Non-nullable nulls without a default are pruned.
                        if map.get(k).is_some_and(Value::is_null) {
                            map.remove(k);
                        }
                    }
                }
            }
            for (k, child) in map.iter_mut() {
                if is_root && k == "metadata" {
                    continue;
                }
                if let Some(prop) = node.properties.get(k) {
                    default_node(prop, child, false);
                } else if let Some(add) = &node.additional {
                    default_node(add, child, false);
                }
            }
            if let Some(add) = &node.additional {
                // Null map values that are not nullable get the element default, or go away.
                let null_keys: Vec<String> = map
                    .iter()
                    .filter(|(k, c)| {
                        !node.properties.contains_key(*k) && is_non_nullable_null(c, add)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in null_keys {
                    match &add.default {
                        Some(d) => {
                            let mut d = d.clone();
                            default_node(add, &mut d, false);
                            map.insert(k, d);
                        }
                        None => {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &node.items {
                for item in items.iter_mut() {
                    if is_non_nullable_null(item, item_schema) {
                        if let Some(d) = &item_schema.default {
                            *item = d.clone();
                        }
                    }
                    default_node(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}
