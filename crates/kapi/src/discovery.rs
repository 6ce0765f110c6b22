//! Non-resource endpoints: `/version` (E1), discovery (`/api`, `/apis`, legacy and aggregated v2,
//! E2), OpenAPI v3 (E3, built from the CRDs' schemas so `kubectl apply`/`explain` work), health
//! checks and the access record.
use std::hash::{DefaultHasher, Hash, Hasher};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::reads::json_response;
use super::request::State;
use super::resources::{Builtin, ResourceInfo};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2"))
}

fn with_type(body: &Value, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves a non-resource GET, or returns `None` for resource paths.
pub fn serve(state: &State, segs: &[&str], headers: &HeaderMap) -> ApiResult<Option<Response>> {
    let r = match segs {
        ["version"] => json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-osprov", "gitCommit": "", "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                    "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)}),
        ),
        ["healthz" | "readyz" | "livez"] => (StatusCode::OK, "ok").into_response(),
        ["debug", "osprov", "access"] => json_response(200, &state.access.to_json()),
        ["api"] if wants_aggregated(headers) => with_type(&aggregated(state, true), AGGREGATED),
        ["apis"] if wants_aggregated(headers) => with_type(&aggregated(state, false), AGGREGATED),
        ["api"] => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => {
            let groups: Vec<Value> = groups(state).iter().map(|g| api_group(state, g)).collect();
            json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        ["apis", g] if groups(state).iter().any(|x| x == g) => {
            let mut v = api_group(state, g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            json_response(200, &v)
        }
        ["api", "v1"] => json_response(200, &resource_list(state, "", "v1")),
        ["apis", g, v]
            if state
                .registry
                .group_versions()
                .iter()
                .any(|(a, b)| a == g && b == v) =>
        {
            json_response(200, &resource_list(state, g, v))
        }
        ["openapi", "v3"] => json_response(200, &openapi_index(state)),
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(ApiError::not_found_path()),
            };
            let doc = openapi_doc(state, g, v).ok_or_else(ApiError::not_found_path)?;
            json_response(200, &doc)
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}

fn groups(state: &State) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (g, _) in state.registry.group_versions() {
        if !g.is_empty() && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

fn api_group(state: &State, g: &str) -> Value {
    let versions: Vec<Value> = state
        .registry
        .group_versions()
        .iter()
        .filter(|(a, _)| a == g)
        .map(|(_, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

fn in_gv<'a>(
    state: &'a State,
    g: &'a str,
    v: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceInfo>> + 'a {
    state
        .registry
        .resources
        .iter()
        .filter(move |r| r.group == g && r.version == v)
}

fn resource_list(state: &State, g: &str, v: &str) -> Value {
    let mut resources = Vec::new();
    for r in in_gv(state, g, v) {
        resources.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                              "verbs": r.verbs(), "shortNames": r.short_names, "categories": r.categories}));
        if r.status_subresource {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn aggregated(state: &State, core: bool) -> Value {
    let mut items = Vec::new();
    let names: Vec<String> = if core {
        vec![String::new()]
    } else {
        groups(state)
    };
    for g in names {
        let mut versions = Vec::new();
        for (_, v) in state
            .registry
            .group_versions()
            .iter()
            .filter(|(a, _)| *a == g)
        {
            let resources: Vec<Value> = in_gv(state, &g, v)
                .map(|r| {
                    let rk = json!({"group": r.group, "version": r.version, "kind": r.kind});
                    let mut subs = Vec::new();
                    if r.status_subresource {
                        subs.push(json!({"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]}));
                    }
                    json!({"resource": r.plural, "responseKind": rk,
                           "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                           "singularResource": r.singular, "verbs": r.verbs(), "shortNames": r.short_names,
                           "categories": r.categories, "subresources": subs})
                })
                .collect();
            versions.push(json!({"version": v, "resources": resources, "freshness": "Current"}));
        }
        items.push(
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions}),
        );
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() {
        format!("api/{v}")
    } else {
        format!("apis/{g}/{v}")
    }
}

fn hash_of(v: &Value) -> String {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

fn openapi_index(state: &State) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in state.registry.group_versions() {
        let doc = openapi_doc(state, &g, &v).unwrap_or_default();
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash_of(&doc))}),
        );
    }
    json!({"paths": paths})
}

/// The component name of a kind's schema, as kube-apiserver names them.
fn schema_id(r: &ResourceInfo) -> String {
    match r.builtin {
        Builtin::Custom => {
            let rev: Vec<&str> = r.group.split('.').rev().collect();
            format!("{}.{}.{}", rev.join("."), r.version, r.kind)
        }
        _ if r.group.is_empty() => format!("io.k8s.api.core.{}.{}", r.version, r.kind),
        _ => format!(
            "io.k8s.api.{}.{}.{}",
            r.group.split('.').next().unwrap_or_default(),
            r.version,
            r.kind
        ),
    }
}

fn kind_schema(r: &ResourceInfo) -> Value {
    let mut s = r
        .openapi
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    if !s.get("properties").is_some_and(Value::is_object) {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    s["properties"]["metadata"] = json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
        "description": "Standard object's metadata."});
    s
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(r: &ResourceInfo, action: &str, id: &str, patch: bool) -> Value {
    let mut params = vec![
        param("dryRun", "dry run"),
        param("fieldManager", "field manager"),
        param("fieldValidation", "Strict, Warn or Ignore"),
    ];
    if patch {
        params.push(param("force", "force apply"));
    }
    let schema = json!({"$ref": format!("#/components/schemas/{id}")});
    json!({"operationId": format!("{action}{}", r.kind), "parameters": params,
           "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
           "x-kubernetes-action": action,
           "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}})
}

fn openapi_doc(state: &State, g: &str, v: &str) -> Option<Value> {
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for r in in_gv(state, g, v) {
        let id = schema_id(r);
        schemas.insert(id.clone(), kind_schema(r));
        let base = if r.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(g, v), r.plural)
        } else {
            format!("/{}/{}", gv_path(g, v), r.plural)
        };
        paths.insert(base.clone(), json!({"get": operation(r, "list", &id, false), "post": operation(r, "post", &id, false)}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": operation(r, "get", &id, false), "put": operation(r, "put", &id, false),
                   "patch": operation(r, "patch", &id, true), "delete": operation(r, "delete", &id, false)}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    schemas.insert(
        OBJECT_META.into(),
        json!({"type": "object", "description": "ObjectMeta is metadata that all persisted resources must have.",
               "properties": {
                   "name": {"type": "string", "description": "Name must be unique within a namespace."},
                   "generateName": {"type": "string", "description": "Prefix for a server-generated name."},
                   "namespace": {"type": "string", "description": "Namespace of the object."},
                   "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values."},
                   "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Unstructured key value map."},
                   "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Finalizers."},
                   "uid": {"type": "string", "description": "UID."},
                   "resourceVersion": {"type": "string", "description": "Opaque version."},
                   "generation": {"type": "integer", "format": "int64", "description": "Generation of the desired state."},
                   "creationTimestamp": {"type": "string", "format": "date-time", "description": "Creation time."},
                   "deletionTimestamp": {"type": "string", "format": "date-time", "description": "Deletion time."},
                   "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Owners."},
                   "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Field ownership."}
               }}),
    );
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"},
                "paths": paths, "components": {"schemas": schemas}}),
    )
}
