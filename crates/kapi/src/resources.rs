//! The resource registry: which kinds the embedded API serves and how.
//!
//! Custom kinds come only from the `CustomResourceDefinition` objects in the server's `Config`
//! (names, scope, status subresource, printer columns, schema); the few built-in kinds osprov needs
//! (Namespaces, Secrets, Events in two views, Leases) are described here by hand because there is no
//! CRD for them. Anything not in the registry is a 404.
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::crdschema::CrdSchema;
use super::error::ApiServerError;

/// Kind-specific behaviour that is not driven by a CRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Custom,
    Namespace,
    Secret,
    /// core/v1 Event (the storage form).
    CoreEvent,
    /// events.k8s.io/v1 Event: a view of the same store as `CoreEvent`.
    EventsV1,
    Lease,
}

#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

#[derive(Debug)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub builtin: Builtin,
    /// Storage key shared by views of one store (both Event views use "events").
    pub store_key: String,
    pub schema: Option<CrdSchema>,
    /// The raw openAPIV3Schema (JSON) for the OpenAPI documents.
    pub openapi: Option<Value>,
    pub printer_columns: Vec<PrinterColumn>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `plural.group` (or `plural` for the core group), as in NotFound messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// `Kind.group` (or `Kind`), as in Invalid messages.
    pub fn kind_group(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// All served resources.
#[derive(Debug, Default)]
pub struct Registry {
    pub resources: Vec<Arc<ResourceInfo>>,
}

impl Registry {
    pub fn new(crds: &[CustomResourceDefinition]) -> Result<Self, ApiServerError> {
        let mut resources = builtins();
        for crd in crds {
            resources.extend(from_crd(crd)?);
        }
        Ok(Registry {
            resources: resources.into_iter().map(Arc::new).collect(),
        })
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The resource stored under `store_key` in its storage form (for the garbage collector).
    pub fn by_store_key(&self, store_key: &str) -> Option<Arc<ResourceInfo>> {
        self.resources
            .iter()
            .find(|r| r.store_key == store_key && r.builtin != Builtin::EventsV1)
            .cloned()
    }

    /// The distinct (group, version) pairs, core first, in registry order.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.resources {
            let gv = (r.group.clone(), r.version.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    builtin: Builtin,
    short: &[&str],
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status_subresource: builtin == Builtin::Namespace,
        builtin,
        store_key: if group.is_empty() || plural == "events" {
            plural.into()
        } else {
            format!("{plural}.{group}")
        },
        schema: None,
        openapi: None,
        printer_columns: Vec::new(),
    }
}

fn builtins() -> Vec<ResourceInfo> {
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            Builtin::Namespace,
            &["ns"],
        ),
        builtin("", "v1", "Secret", "secrets", true, Builtin::Secret, &[]),
        builtin(
            "",
            "v1",
            "Event",
            "events",
            true,
            Builtin::CoreEvent,
            &["ev"],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            Builtin::EventsV1,
            &["ev"],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            Builtin::Lease,
            &[],
        ),
    ]
}

fn from_crd(crd: &CustomResourceDefinition) -> Result<Vec<ResourceInfo>, ApiServerError> {
    let spec = &crd.spec;
    let names = &spec.names;
    let mut out = Vec::new();
    for v in spec.versions.iter().filter(|v| v.served) {
        let props = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let schema = match props {
            Some(p) => Some(CrdSchema::new(p).map_err(ApiServerError::Crd)?),
            None => None,
        };
        let openapi = match props {
            Some(p) => {
                Some(serde_json::to_value(p).map_err(|e| ApiServerError::Crd(e.to_string()))?)
            }
            None => None,
        };
        let printer_columns = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c.name.clone(),
                type_: c.type_.clone(),
                format: c.format.clone().unwrap_or_default(),
                description: c.description.clone().unwrap_or_default(),
                priority: c.priority.unwrap_or(0),
                json_path: c.json_path.clone(),
            })
            .collect();
        out.push(ResourceInfo {
            group: spec.group.clone(),
            version: v.name.clone(),
            kind: names.kind.clone(),
            plural: names.plural.clone(),
            singular: names
                .singular
                .clone()
                .unwrap_or_else(|| names.kind.to_lowercase()),
            short_names: names.short_names.clone().unwrap_or_default(),
            categories: names.categories.clone().unwrap_or_default(),
            namespaced: spec.scope == "Namespaced",
            status_subresource: v
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            builtin: Builtin::Custom,
            store_key: format!("{}.{}", names.plural, spec.group),
            schema,
            openapi,
            printer_columns,
        });
    }
    Ok(out)
}
