//! Writes: create, update (PUT), patch (merge, JSON, apply), delete and deletecollection.
//!
//! Every write funnels into `finish_create` or `finish_update`, which apply the rules of
//! k8s-api-fidelity.md §A and §C (uid/creationTimestamp/generation, resourceVersion preconditions,
//! status subresource isolation, finalizers, no-op writes keep the revision) and the structural
//! schema (prune, default, validate) before one optimistic commit to the store.
use std::sync::Arc;

use axum::response::Response;
use serde_json::{json, Value};

use super::builtin;
use super::crdschema;
use super::error::{ApiError, ApiResult, StatusCause};
use super::objects::{
    event_from_core, event_to_core, event_zero_values, finalizers, is_terminating, meta, meta_mut,
    meta_str, name_errors, name_suffix, normalize_meta, now, owner_reference_errors,
    prepare_builtin, prune_meta, same_content, spec_part,
};
use super::reads::{key, not_found, object_response, view};
use super::request::Req;
use super::resources::Builtin;
use super::store::{object_revision, Expect, Precondition};
pub(super) use super::typing::check_type;
use super::typing::{check_meta_types, default_type};

pub(super) fn parse_json(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// A JSON body, or YAML when the client says so.
fn parse_body(req: &Req, body: &[u8]) -> ApiResult<Value> {
    if req
        .content_type()
        .starts_with("application/vnd.kubernetes.protobuf")
    {
        return super::protobuf::decode(body);
    }
    if req.content_type().starts_with("application/yaml") {
        let v: Value = super::yaml::parse(body)?;
        if !v.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        return Ok(v);
    }
    parse_json(body)
}

pub(super) fn check_identity(req: &Req, obj: &Value) -> ApiResult<()> {
    if let (Some(url), Some(body)) = (req.name.as_deref(), meta_str(obj, "name")) {
        if url != body {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
    }
    if let Some(ns) = meta_str(obj, "namespace").filter(|ns| !ns.is_empty()) {
        if req.info.namespaced && ns != req.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

fn to_storage(req: &Req, mut obj: Value) -> Value {
    if req.info.builtin == Builtin::EventsV1 {
        obj = event_to_core(obj);
    } else if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(req.info.api_version()));
        o.insert("kind".into(), json!(req.info.kind));
    }
    obj
}

/// Records this non-apply write in `new`'s managedFields, in the form and version the client
/// wrote (an events.k8s.io/v1 write is tracked in events.k8s.io/v1 field names).
fn record(req: &Req, old: Option<&Value>, new: &mut Value, ts: &str) {
    let (mgr, sub, schema) = (manager(req), req.sub.as_deref(), req.info.schema.as_ref());
    if req.info.builtin == Builtin::Custom {
        crdschema::record_update(old, new, &mgr, sub, schema, ts);
        return;
    }
    // Fields are tracked on the form kube-apiserver tracks: an events.k8s.io Event in its own
    // version, another built-in kind without its empty Go structs (nobody set those).
    let tracked = |v: &Value| match req.info.builtin {
        Builtin::EventsV1 => event_from_core(v.clone()),
        _ => without_empty_objects(v),
    };
    let old_tracked = old.map(tracked);
    let mut new_tracked = tracked(new);
    crdschema::record_update(
        old_tracked.as_ref(),
        &mut new_tracked,
        &mgr,
        sub,
        schema,
        ts,
    );
    match meta(&new_tracked)
        .and_then(|m| m.get("managedFields"))
        .cloned()
    {
        Some(mf) => set_meta(new, "managedFields", mf),
        None => {
            if let Some(m) = meta_mut(new) {
                m.remove("managedFields");
            }
        }
    }
}

/// `v` without members whose value is an empty object (outside `metadata`, which keeps its
/// own rules), recursively.
fn without_empty_objects(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, x)| {
                    k.as_str() == "metadata" || x.as_object().is_none_or(|m| !m.is_empty())
                })
                .map(|(k, x)| {
                    let x = if k == "metadata" {
                        x.clone()
                    } else {
                        without_empty_objects(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

pub(super) fn manager(req: &Req) -> String {
    match req.query.get("fieldManager") {
        Some(m) => m.to_string(),
        None => req
            .user_agent
            .split('/')
            .next()
            .unwrap_or("unknown")
            .to_string(),
    }
}

pub(super) fn invalid(req: &Req, name: &str, causes: Vec<StatusCause>) -> ApiError {
    if req.info.builtin == Builtin::EventsV1 {
        // Events are validated in their core form, and named so.
        return ApiError::invalid("Event", "", "Event", name, causes);
    }
    ApiError::invalid(
        &req.info.kind_group(),
        &req.info.group,
        &req.info.kind,
        name,
        causes,
    )
}

pub(super) fn cause(field: &str, message: &str) -> StatusCause {
    let reason = if message.starts_with("Required") {
        "FieldValueRequired"
    } else {
        "FieldValueInvalid"
    };
    StatusCause {
        reason: reason.into(),
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn dry_run(req: &Req) -> bool {
    req.query.get("dryRun") == Some("All")
}

/// What kube-apiserver answers for a patch whose result cannot be decoded.
pub(super) fn patch_invalid(why: &str) -> ApiError {
    ApiError::invalid(
        "",
        "",
        "",
        "",
        vec![cause(
            "patch",
            &format!("Invalid value: the patched object: {why}"),
        )],
    )
}

/// Drops the fields `obj`'s type does not have (ObjectMeta's for every kind, a built-in kind's
/// Go type, a custom kind's schema): with `fieldValidation=Strict` a 400 naming them, else the
/// warnings (none with `Ignore`).
pub(super) fn unknown_fields(req: &Req, obj: &mut Value) -> ApiResult<Vec<String>> {
    let mut dropped = prune_meta(obj);
    dropped.extend(super::typing::prune_builtin(req, obj));
    if let Some(schema) = &req.info.schema {
        dropped.extend(schema.prune(obj));
    }
    match req.query.get("fieldValidation").unwrap_or("Warn") {
        "Strict" if !dropped.is_empty() => {
            let msgs: Vec<String> = dropped
                .iter()
                .map(|d| format!("unknown field \"{d}\""))
                .collect();
            let info = &req.info;
            Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                info.kind,
                info.version,
                info.kind,
                msgs.join(", ")
            )))
        }
        "Ignore" => Ok(Vec::new()),
        _ => Ok(dropped
            .iter()
            .map(|d| format!("unknown field \"{d}\""))
            .collect()),
    }
}

/// Schema, built-in and metadata checks shared by create and update; returns warnings.
fn admit(req: &Req, obj: &mut Value, old: Option<&Value>) -> ApiResult<Vec<String>> {
    // What a patch produced is decoded as a body is: wrongly typed metadata is refused (422 on
    // the field `patch`, as kube-apiserver words it), and a null label or annotation value
    // decodes as the empty string.
    let is_patch = req.media_type().contains("patch");
    if is_patch {
        if let Some(why) = super::typing::type_error(req, obj) {
            return Err(patch_invalid(&why));
        }
    }
    super::labels::null_values_to_empty(obj);
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let warnings = unknown_fields(req, obj)?;
    let mut causes = prepare_builtin(&req.info, obj, old);
    // A patched object its Go type cannot decode is the patch's fault: 422 on `patch`.
    causes.extend(builtin::validate(&req.info, obj, old).map_err(|e| {
        match (is_patch, e.code) {
            (true, 400) => patch_invalid(&e.message),
            _ => e,
        }
    })?);
    if let Some(schema) = &req.info.schema {
        schema.apply_defaults(obj);
        causes.extend(schema.validate(obj, old));
    }
    causes.extend(owner_reference_errors(obj));
    // core/v1 Events and Leases are validated without the core finalizer-name rule (seen on
    // kube-apiserver; events.k8s.io/v1 writes and Secrets get it).
    let core_finalizers = !matches!(
        req.info.builtin,
        Builtin::Custom | Builtin::CoreEvent | Builtin::Lease
    );
    causes.extend(super::labels::errors(obj, core_finalizers));
    if let Some(schema) = &req.info.schema {
        if crdschema::CrdSchema::blocks_rules(&causes) && !causes.iter().any(|c| c.field == "<nil>")
        {
            causes.extend(schema.rules_not_checked());
        }
    }
    // Names are checked on create; a Secret's and a Namespace's on update too, a core Event's
    // never (seen on kube-apiserver; a few custom-resource and Lease updates were refused for
    // their generateName too, which this does not reproduce).
    let check_names = match req.info.builtin {
        Builtin::Namespace | Builtin::Secret => true,
        Builtin::CoreEvent => false,
        _ => old.is_none(),
    };
    if check_names {
        let label = req.info.builtin == Builtin::Namespace;
        if let Some(msg) = name_errors(&name, label) {
            causes.insert(0, cause("metadata.name", &msg));
        }
        // A generateName is checked as a name prefix (a trailing `-` is fine).
        let prefix = meta_str(obj, "generateName").unwrap_or_default();
        if !prefix.is_empty() && req.info.builtin != Builtin::CoreEvent {
            // kube-apiserver's maskTrailingDash: the last two characters become "a".
            let masked = match prefix.len() > 1 && prefix.ends_with('-') {
                true => format!("{}a", &prefix[..prefix.len() - 2]),
                false => prefix.to_string(),
            };
            if let Some(msg) = name_errors(&masked, label) {
                causes.push(cause("metadata.generateName", &msg));
            }
        }
    }
    if !causes.is_empty() {
        return Err(invalid(req, &name, causes));
    }
    Ok(warnings)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) =
            axum::http::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\"")))
        {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Bodies must be JSON or YAML; protobuf only for the Secrets and Namespaces kubectl's generator
/// commands send (see `protobuf`); anything else gets 415.
pub(super) fn require_json(req: &Req) -> ApiResult<()> {
    let ct = req.media_type();
    let builtin_protobuf = ct == "application/vnd.kubernetes.protobuf"
        && matches!(req.info.builtin, Builtin::Secret | Builtin::Namespace);
    if builtin_protobuf
        || ct.is_empty()
        || ct == "application/json"
        || ct == "*/*"
        || ct == "application/yaml"
    {
        return Ok(());
    }
    Err(ApiError::unsupported_media(format!(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {ct}"
    )))
}

pub fn create(req: &Req, body: &[u8]) -> ApiResult<Response> {
    require_json(req)?;
    let mut obj = parse_body(req, body)?;
    default_type(req, &mut obj);
    check_type(req, &obj)?;
    check_meta_types(req, &obj)?;
    check_identity(req, &obj)?;
    finish_create(req, obj, None)
}

pub(super) fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = meta_mut(obj) {
        m.insert(field.into(), value);
    }
}

/// Creates `obj` (view form). `applied_by` is the manager when this is an apply (managedFields
/// are already set by server-side apply).
pub(super) fn finish_create(
    req: &Req,
    obj: Value,
    applied_by: Option<&str>,
) -> ApiResult<Response> {
    let mut obj = to_storage(req, obj);
    if req.info.namespaced {
        let ns_key = (
            "namespaces".to_string(),
            String::new(),
            req.namespace.clone(),
        );
        if req.state.store.get(&ns_key).is_none() {
            return Err(ApiError::not_found(
                "namespaces",
                "",
                "namespaces",
                &req.namespace,
            ));
        }
        set_meta(&mut obj, "namespace", json!(req.namespace));
    } else if let Some(m) = meta_mut(&mut obj) {
        // A cluster-scoped object has no namespace, whatever the body said.
        m.remove("namespace");
    }
    if meta_str(&obj, "name").is_none() {
        match meta_str(&obj, "generateName") {
            Some(prefix) => {
                let name = format!("{prefix}{}", name_suffix());
                set_meta(&mut obj, "name", json!(name));
            }
            None => {
                // The rest is still validated (metadata, the schema's keywords); the CEL rules
                // are not, and the answer says so.
                let mut causes = vec![cause(
                    "metadata.name",
                    "Required value: name or generateName is required",
                )];
                causes.extend(super::labels::errors(&obj, false));
                if let Some(schema) = &req.info.schema {
                    let mut pruned = obj.clone();
                    schema.prune(&mut pruned);
                    schema.apply_defaults(&mut pruned);
                    causes.extend(schema.validate(&pruned, None));
                    if !causes.iter().any(|c| c.field == "<nil>") {
                        causes.extend(schema.rules_not_checked());
                    }
                }
                return Err(invalid(req, "", causes));
            }
        }
    }
    if req.info.status_subresource && req.info.builtin == Builtin::Custom {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    builtin::default(&req.info, &mut obj);
    let warnings = admit(req, &mut obj, None)?;
    normalize_meta(&mut obj);
    let ts = now();
    if let Some(m) = meta_mut(&mut obj) {
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(ts));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            m.remove(f);
        }
        if req.info.builtin == Builtin::Custom {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    if applied_by.is_none() {
        record(req, None, &mut obj, &ts);
    }
    builtin::prepare_namespace(&req.info, &mut obj, None);
    if matches!(req.info.builtin, Builtin::CoreEvent | Builtin::EventsV1) {
        event_zero_values(&mut obj);
    }
    normalize_meta(&mut obj);
    if dry_run(req) {
        return Ok(with_warnings(
            object_response(req, 201, &view(&req.info, &obj)),
            &warnings,
        ));
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    match req
        .state
        .store
        .commit(&key(req, &name), Expect::Absent, Some(obj))
    {
        Ok(change) => Ok(with_warnings(
            object_response(req, 201, &view(&req.info, &change.object)),
            &warnings,
        )),
        Err(Precondition::Failed(e)) => Err(ApiError::internal(e)),
        Err(_) => Err(ApiError::already_exists(
            &req.info.qualified(),
            &req.info.group,
            &req.info.plural,
            &name,
        )),
    }
}

pub fn update(req: &Req, body: &[u8]) -> ApiResult<Response> {
    require_json(req)?;
    let mut obj = parse_body(req, body)?;
    default_type(req, &mut obj);
    check_type(req, &obj)?;
    check_meta_types(req, &obj)?;
    if meta_str(&obj, "name").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!(
            "the name of the object () does not match the name on the URL ({})",
            req.name.as_deref().unwrap_or_default()
        )));
    }
    check_identity(req, &obj)?;
    // A strict decode refuses unknown fields before anything looks at the object.
    unknown_fields(req, &mut obj.clone())?;
    let name = req.name.clone().unwrap_or_default();
    let rv = meta_str(&obj, "resourceVersion").map(String::from);
    // Secrets, Events and Namespaces allow unconditional updates; Leases and custom kinds do not.
    let unconditional = matches!(
        req.info.builtin,
        Builtin::Secret | Builtin::CoreEvent | Builtin::EventsV1 | Builtin::Namespace
    );
    if rv.is_none() && !unconditional {
        return Err(ApiError::invalid(
            &req.info.qualified(),
            &req.info.group,
            &req.info.plural,
            &name,
            vec![cause(
                "metadata.resourceVersion",
                "Invalid value: 0: must be specified for an update",
            )],
        ));
    }
    let old = req
        .state
        .store
        .get(&key(req, &name))
        .ok_or_else(|| not_found(req, &name))?;
    let expect = match rv {
        Some(rv) => rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version: resourceVersion: Invalid value: {rv:?}"
            ))
        })?,
        None => object_revision(&old),
    };
    finish_update(req, &old, obj, expect, None)
}

pub(super) fn finish_update(
    req: &Req,
    old: &Arc<Value>,
    new: Value,
    expect: u64,
    applied_by: Option<&str>,
) -> ApiResult<Response> {
    let name = req.name.clone().unwrap_or_default();
    let info = &req.info;
    let mut new = to_storage(req, new);
    if expect != object_revision(old) {
        return Err(ApiError::modified(
            &info.qualified(),
            &info.group,
            &info.plural,
            &name,
        ));
    }
    if let Some(uid) = meta_str(&new, "uid") {
        // kube-apiserver 1.36 answers 409 (the uid acts as a precondition); the fidelity
        // contract (A3) and the CRUD tests keep 422 for an immutable field.
        if Some(uid) != meta_str(old, "uid") {
            return Err(invalid(
                req,
                &name,
                vec![cause(
                    "metadata.uid",
                    &format!("Invalid value: \"{uid}\": field is immutable"),
                )],
            ));
        }
    }
    if req.sub.as_deref() == Some("status") {
        let status = new.get("status").cloned();
        let managed = meta(&new).and_then(|m| m.get("managedFields")).cloned();
        new = (**old).clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        if let (Some(mf), Some(_)) = (managed, applied_by) {
            set_meta(&mut new, "managedFields", mf);
        }
    } else if info.status_subresource {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if let (Some(m), Some(om)) = (meta_mut(&mut new), meta(old)) {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match om.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
    }
    if is_terminating(old) {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&new)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !added.is_empty() {
            let list: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
            return Err(invalid(
                req,
                &name,
                vec![StatusCause {
                    reason: "FieldValueForbidden".into(),
                    field: "metadata.finalizers".into(),
                    message: format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        list.join(", ")
                    ),
                }],
            ));
        }
    }
    builtin::default(info, &mut new);
    let warnings = admit(req, &mut new, Some(old))?;
    if info.builtin == Builtin::Custom
        && spec_part(old, info.status_subresource) != spec_part(&new, info.status_subresource)
    {
        let gen = meta(old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        set_meta(&mut new, "generation", json!(gen + 1));
    }
    normalize_meta(&mut new);
    let ts = now();
    if applied_by.is_none() {
        record(req, Some(old), &mut new, &ts);
    }
    // After the fields are tracked: kube-apiserver records ownership of a Namespace's spec
    // finalizers that its strategy then puts back (seen).
    builtin::prepare_namespace(info, &mut new, Some(old));
    if matches!(info.builtin, Builtin::CoreEvent | Builtin::EventsV1) {
        event_zero_values(&mut new);
    }
    normalize_meta(&mut new);
    if same_content(old, &new) {
        return Ok(object_response(req, 200, &view(info, old)));
    }
    if dry_run(req) {
        return Ok(with_warnings(
            object_response(req, 200, &view(info, &new)),
            &warnings,
        ));
    }
    let delete_now = is_terminating(&new) && finalizers(&new).is_empty();
    let k = key(req, &name);
    let result = if delete_now {
        // The final state (finalizers removed) is what DELETED carries.
        let r = req
            .state
            .store
            .delete_with(&k, Expect::Revision(expect), new);
        req.state.gc_wake.notify_one();
        r
    } else {
        req.state
            .store
            .commit(&k, Expect::Revision(expect), Some(new))
    };
    match result {
        Ok(change) => Ok(with_warnings(
            object_response(req, 200, &view(info, &change.object)),
            &warnings,
        )),
        Err(e) => Err(commit_error(req, &name, e)),
    }
}

/// The API error for a refused conditional write of object `name`: gone (404), a storage
/// failure (500), or modified meanwhile (409 Conflict).
pub(crate) fn commit_error(req: &Req, name: &str, e: Precondition) -> ApiError {
    let info = &req.info;
    match e {
        Precondition::Missing => not_found(req, name),
        Precondition::Failed(e) => ApiError::internal(e),
        Precondition::Exists | Precondition::Stale => {
            ApiError::modified(&info.qualified(), &info.group, &info.plural, name)
        }
    }
}
