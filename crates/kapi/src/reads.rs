//! GET and LIST: views of stored objects, selectors, paging from one snapshot (B3) and Table
//! output. Also the small response helpers the write path shares.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, StatusCause};
use super::objects::{event_from_core, selectable_fields};
use super::request::Req;
use super::resources::{Builtin, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Key, Objects};
use super::table;

pub fn json_response(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (code, axum::Json(body)).into_response()
}

/// The object as this endpoint serves it (storage form, or the events.k8s.io view).
pub fn view(info: &ResourceInfo, obj: &Value) -> Value {
    match info.builtin {
        Builtin::EventsV1 => event_from_core(obj.clone()),
        Builtin::Custom => {
            let mut o = obj.clone();
            o["apiVersion"] = json!(info.api_version());
            o
        }
        _ => obj.clone(),
    }
}

pub fn key(req: &Req, name: &str) -> Key {
    (
        req.info.store_key.clone(),
        req.namespace.clone(),
        name.to_string(),
    )
}

pub fn not_found(req: &Req, name: &str) -> ApiError {
    ApiError::not_found(
        &req.info.qualified(),
        &req.info.group,
        &req.info.plural,
        name,
    )
}

/// The PartialObjectMetadata form of an object.
pub fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// Renders one object, as Table or PartialObjectMetadata when asked.
pub fn object_response(req: &Req, code: u16, obj: &Value) -> Response {
    if req.wants_metadata() {
        return json_response(code, &partial(obj));
    }
    if req.wants_table() {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        return json_response(
            code,
            &table::table(
                &req.info,
                std::slice::from_ref(obj),
                rv,
                None,
                include_object(req),
            ),
        );
    }
    json_response(code, obj)
}

pub fn include_object(req: &Req) -> &str {
    req.query.get("includeObject").unwrap_or("Metadata")
}

/// `resourceVersion` of a read must be a number (kube-apiserver: 400, or 500 on a GET).
pub fn check_resource_version(req: &Req) -> ApiResult<Option<u64>> {
    match req.query.get("resourceVersion") {
        None => Ok(None),
        Some(rv) => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version: resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
            ))
        }),
    }
}

/// ListOptions validation of `resourceVersionMatch` (422 ListOptions.meta.k8s.io).
fn check_list_options(req: &Req) -> ApiResult<()> {
    let Some(m) = req.query.get("resourceVersionMatch") else {
        return Ok(());
    };
    // Both rules are checked; a bad value without a resourceVersion breaks both.
    let mut causes = Vec::new();
    if req.query.get("resourceVersion").is_none() {
        causes.push(StatusCause {
            reason: "FieldValueForbidden".into(),
            field: "resourceVersionMatch".into(),
            message:
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                    .into(),
        });
    }
    if !matches!(m, "Exact" | "NotOlderThan") {
        causes.push(StatusCause {
            reason: "FieldValueNotSupported".into(),
            field: "resourceVersionMatch".into(),
            message: format!(
                "Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
            ),
        });
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        "ListOptions.meta.k8s.io",
        "meta.k8s.io",
        "ListOptions",
        "",
        causes,
    ))
}

pub fn get(req: &Req) -> ApiResult<Response> {
    check_resource_version(req)?;
    let name = req.name.as_deref().unwrap_or_default();
    let obj = req
        .state
        .store
        .get(&key(req, name))
        .ok_or_else(|| not_found(req, name))?;
    Ok(object_response(req, 200, &view(&req.info, &obj)))
}

/// Label and field selectors of a list, watch or deletecollection.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub namespace: String,
}

impl Filter {
    pub fn from_req(req: &Req) -> ApiResult<Filter> {
        Ok(Filter {
            labels: LabelSelector::parse(req.query.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(
                req.query.get("fieldSelector").unwrap_or(""),
                selectable_fields(&req.info),
            )?,
            namespace: req.namespace.clone(),
        })
    }
    /// Matches a served (view) object.
    pub fn matches(&self, view: &Value) -> bool {
        self.labels.matches(view) && self.fields.matches(view)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    ns: String,
    name: String,
}

/// Iterates the objects of the request's resource (and namespace) in key order, from `start`.
pub fn range<'a>(
    objects: &'a Objects,
    store_key: &'a str,
    ns: &'a str,
    start: Option<(String, String)>,
) -> impl Iterator<Item = (&'a Key, &'a Arc<Value>)> + 'a {
    let (sns, sname) = start.unwrap_or_else(|| (ns.to_string(), String::new()));
    let from: Key = (store_key.to_string(), sns, sname);
    objects
        .range(from..)
        .take_while(move |(k, _)| k.0 == store_key && (ns.is_empty() || k.1 == ns))
}

pub fn list(req: &Req) -> ApiResult<Response> {
    let filter = Filter::from_req(req)?;
    check_resource_version(req)?;
    check_list_options(req)?;
    // A list answers as PartialObjectMetadataList, never as one PartialObjectMetadata.
    if req.wants_metadata() && !req.wants_metadata_list() {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "you requested PartialObjectMetadata, but the requested object is a list ({}List)",
                req.info.kind
            ),
        ));
    }
    // A negative limit means no limit, as in kube-apiserver.
    let limit: usize = match req.query.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .try_into()
            .unwrap_or(0),
        None => 0,
    };
    let store = &req.state.store;
    let (rev, objects, start) = match req.query.get("continue") {
        Some(tok) => {
            let c: Continue = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            let objects = store.snapshot_at(c.rv).ok_or_else(|| {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?;
            (c.rv, objects, Some((c.ns, c.name + "\u{0}")))
        }
        None => {
            if req.query.get("resourceVersionMatch") == Some("Exact") {
                let rv: u64 = req
                    .query
                    .get("resourceVersion")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                let objects = store
                    .snapshot_at(rv)
                    .ok_or_else(|| ApiError::gone(format!("too old resource version: {rv}")))?;
                (rv, objects, None)
            } else {
                let (rev, objects) = store.snapshot();
                (rev, objects, None)
            }
        }
    };
    let mut items = Vec::new();
    let mut last: Option<Key> = None;
    let mut more = false;
    let mut remaining = 0usize;
    let unfiltered = filter.labels.is_empty() && filter.fields.is_empty();
    let name_only = filter.fields.name().map(String::from);
    for (k, obj) in range(&objects, &req.info.store_key, &filter.namespace, start) {
        if more {
            // remainingItemCount, given (as by kube-apiserver) only for unfiltered lists.
            remaining += 1;
            continue;
        }
        if name_only.as_deref().is_some_and(|n| n != k.2) {
            continue;
        }
        let v = view(&req.info, obj);
        if !filter.matches(&v) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            more = true;
            if !unfiltered {
                break;
            }
            remaining += 1;
            continue;
        }
        last = Some(k.clone());
        items.push(v);
    }
    let cont = match (more, last) {
        (true, Some(k)) => {
            store.keep_snapshot(rev, &objects);
            let c = Continue {
                rv: rev,
                ns: k.1,
                name: k.2,
            };
            Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&c).unwrap_or_default()),
            )
        }
        _ => None,
    };
    let rv = rev.to_string();
    if req.wants_table() {
        return Ok(json_response(
            200,
            &table::table(&req.info, &items, &rv, cont.as_deref(), include_object(req)),
        ));
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
        if unfiltered {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    if req.wants_metadata() {
        let items: Vec<Value> = items.iter().map(partial).collect();
        return Ok(json_response(
            200,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items}),
        ));
    }
    if req.info.builtin != Builtin::Custom {
        // Items of built-in lists carry no apiVersion/kind (the list's own say it).
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            item.remove("apiVersion");
            item.remove("kind");
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", req.info.kind),
            "apiVersion": req.info.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}
