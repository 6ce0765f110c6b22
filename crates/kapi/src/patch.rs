//! PATCH (C1, C3): merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply.
//!
//! A patch is computed against the current object and then goes through the same update path as a
//! PUT; it is unconditional unless the patch itself sets `metadata.resourceVersion`, so a race
//! with another writer is retried here rather than reported as a conflict (A5).
use axum::response::Response;
use serde_json::Value;

use super::crdschema::{self, Applied};
use super::error::{ApiError, ApiResult, StatusCause};
use super::objects::{meta_str, now};
use super::reads::{key, not_found, view};
use super::request::Req;
use super::resources::Builtin;
use super::store::object_revision;
use super::writes::{check_identity, check_type, finish_create, finish_update};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Merge,
    Json,
    Apply,
    Strategic,
}

/// The patch's type, or 415 (a strategic merge patch of a custom resource too): kube-apiserver
/// checks it before anything else of a patch, content negotiation included.
pub(super) fn media(req: &Req) -> ApiResult<()> {
    if kind(req)? == Kind::Strategic && req.info.builtin == Builtin::Custom {
        return Err(ApiError::unsupported_media(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    Ok(())
}

fn kind(req: &Req) -> ApiResult<Kind> {
    let ct = req.media_type();
    match ct {
        "application/merge-patch+json" => Ok(Kind::Merge),
        "application/json-patch+json" => Ok(Kind::Json),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Kind::Apply),
        "application/strategic-merge-patch+json" => Ok(Kind::Strategic),
        other => Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other}"
        ))),
    }
}

/// kube-apiserver's JSON patch treats `test` of `null` against a missing path as passing
/// (kube-runtime's finalizer helper relies on it); the json-patch crate does not.
fn apply_json_patch(doc: &mut Value, body: &[u8]) -> ApiResult<()> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !raw.is_array() {
        return Err(ApiError::bad_request(
            "error decoding patch: json: cannot unmarshal object into Go value of type jsonpatch.Patch",
        ));
    }
    // kube-apiserver reports every failure of a well-formed patch (an unknown op, a failed
    // `test`, a missing path) as 422 without causes.
    let rejected = |e: String| {
        tracing::debug!(error = %e, "JSON patch rejected");
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
    };
    let patch: json_patch::Patch =
        serde_json::from_value(raw).map_err(|e| rejected(e.to_string()))?;
    let ops: Vec<json_patch::PatchOperation> = patch
        .0
        .into_iter()
        .filter(|op| match op {
            json_patch::PatchOperation::Test(t) => {
                !(t.value.is_null() && doc.pointer(t.path.as_str()).is_none())
            }
            _ => true,
        })
        .collect();
    json_patch::patch(doc, &ops).map_err(|e| rejected(e.to_string()))
}

/// A merge patch body must be a JSON object.
fn parse_merge(body: &[u8]) -> ApiResult<Value> {
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if !p.is_object() {
        let what = match p {
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            _ => "null",
        };
        return Err(ApiError::bad_request(format!(
            "error decoding patch: json: cannot unmarshal {what} into Go value of type map[string]interface {{}}"
        )));
    }
    Ok(p)
}

/// fieldValidation=Strict on a patch: kube-apiserver reports unknown fields of the patched
/// object as a 422 on the field `patch`.
fn strict_patch_error(e: ApiError, doc: &Value) -> ApiError {
    let Some(pos) = e.message.find("strict decoding error") else {
        return e;
    };
    let detail = &e.message[pos..];
    let mut err = ApiError::new(
        422,
        "Invalid",
        format!(
            " \"\" is invalid: patch: Invalid value: {:?}: {detail}",
            doc.to_string()
        ),
    );
    err.causes.push(StatusCause {
        reason: "FieldValueInvalid".into(),
        field: "patch".into(),
        message: format!("Invalid value: {:?}: {detail}", doc.to_string()),
    });
    err
}

pub fn patch(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let kind = kind(req)?;
    let name = req.name.clone().unwrap_or_default();
    // `force` on another patch type was refused with the other options (see `options`).
    let force = req.query.get("force");
    if kind == Kind::Apply {
        return apply(req, body, force == Some("true"));
    }
    let patch_rv = match kind {
        Kind::Merge | Kind::Strategic => {
            let p = parse_merge(body)?;
            p.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from)
        }
        _ => None,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let old = req
            .state
            .store
            .get(&key(req, &name))
            .ok_or_else(|| not_found(req, &name))?;
        let mut doc = view(&req.info, &old);
        match kind {
            Kind::Json => apply_json_patch(&mut doc, body)?,
            _ => json_patch::merge(&mut doc, &parse_merge(body)?),
        }
        if !doc.is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        patched_type(req, &mut doc, kind == Kind::Json, &name)?;
        // The patched object is decoded before anything else looks at it.
        if let Some(why) = super::typing::type_error(req, &doc) {
            return Err(super::writes::patch_invalid(&why));
        }
        if meta_str(&doc, "name").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name} based on URL) was undeterminable: name must be provided"
            )));
        }
        check_identity(req, &doc)?;
        let expect = match doc
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) => rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            None => object_revision(&old),
        };
        let patched = doc.clone();
        match finish_update(req, &old, doc, expect, None)
            .map_err(|e| strict_patch_error(e, &patched))
        {
            Err(e)
                if e.code == 409
                    && patch_rv.is_none()
                    && expect == object_revision(&old)
                    && attempt < 5 =>
            {
                continue
            }
            other => return other,
        }
    }
}

/// A patch that leaves the object without the endpoint's `apiVersion` and `kind` cannot be
/// decoded as it: kube-apiserver refuses it with 422 on the field `patch`.
fn patched_type(req: &Req, doc: &mut Value, json_patch: bool, name: &str) -> ApiResult<()> {
    // A built-in kind's patched object is decoded as the endpoint's version, whatever string its
    // apiVersion holds, and a missing kind is the endpoint's; but after a JSON patch that
    // removed the apiVersion, kube-apiserver cannot find the object's name any more (all seen).
    if req.info.builtin != Builtin::Custom {
        let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == "");
        if json_patch && unset(doc.get("apiVersion")) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name} based on URL) was undeterminable: name must be provided"
            )));
        }
        if let Some(o) = doc.as_object_mut() {
            if unset(o.get("apiVersion")) || o.get("apiVersion").is_some_and(Value::is_string) {
                o.insert("apiVersion".into(), Value::String(req.info.api_version()));
            }
            if unset(o.get("kind")) {
                o.insert("kind".into(), Value::String(req.info.kind.clone()));
            }
        }
    }
    let want = [req.info.api_version(), req.info.kind.clone()];
    let bad = ["apiVersion", "kind"]
        .into_iter()
        .zip(want)
        .find(|(f, want)| doc.get(*f).and_then(Value::as_str) != Some(want.as_str()))
        .map(|(f, _)| f);
    match bad {
        None => Ok(()),
        Some(field) => Err(ApiError::invalid(
            "",
            "",
            "",
            "",
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                field: "patch".into(),
                message: format!(
                    "Invalid value: the patched object: {field} is missing or not this kind's"
                ),
            }],
        )),
    }
}

fn apply(req: &Req, body: &[u8], force: bool) -> ApiResult<Response> {
    let name = req.name.clone().unwrap_or_default();
    let Some(mgr) = req.query.get("fieldManager").map(String::from) else {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![StatusCause {
                reason: "FieldValueRequired".into(),
                field: "fieldManager".into(),
                message: "Required value: is required for apply patch".into(),
            }],
        ));
    };
    let applied: Value = super::yaml::parse(body)?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the apply body must be an object"));
    }
    let type_of = |f: &str| applied.get(f).and_then(Value::as_str).unwrap_or_default();
    if type_of("kind").is_empty() || type_of("apiVersion").is_empty() {
        let gv = match type_of("apiVersion") {
            "" => "/",
            gv => gv,
        };
        return Err(ApiError::bad_request(format!(
            "invalid object type: {gv}, Kind={}",
            type_of("kind")
        )));
    }
    check_type(req, &applied)?;
    check_identity(req, &applied)?;
    let mut applied = applied;
    if req.sub.is_none() && req.info.status_subresource {
        // ResetFields: a main-endpoint apply never touches the status.
        if let Some(o) = applied.as_object_mut() {
            o.remove("status");
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let old = req.state.store.get(&key(req, &name));
        if old.is_none() && req.sub.is_some() {
            return Err(not_found(req, &name));
        }
        let live = old.as_ref().map(|o| view(&req.info, o));
        let outcome = crdschema::ssa_apply(
            live.as_ref(),
            &applied,
            &mgr,
            force,
            req.sub.as_deref(),
            req.info.schema.as_ref(),
            &now(),
        )
        .map_err(ApiError::bad_request)?;
        let obj = match outcome {
            Applied::Object(v) => v,
            Applied::Conflicts(conflicts) => return Err(conflict_error(&conflicts)),
        };
        let result = match &old {
            None => finish_create(req, obj, Some(&mgr)),
            Some(old) => {
                let expect = match obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                {
                    Some(rv) => rv.parse().unwrap_or(0),
                    None => object_revision(old),
                };
                finish_update(req, old, obj, expect, Some(&mgr))
            }
        };
        match result {
            Err(e)
                if e.code == 409
                    && e.causes.is_empty()
                    && applied.pointer("/metadata/resourceVersion").is_none()
                    && attempt < 5 =>
            {
                continue
            }
            other => return other,
        }
    }
}

/// kube-apiserver's conflict Status carries the causes only (no name, group or kind).
fn conflict_error(conflicts: &[crate::ssa::Conflict]) -> ApiError {
    let mut e = ApiError::new(409, "Conflict", crdschema::conflicts_message(conflicts));
    e.causes = conflicts
        .iter()
        .map(|c| StatusCause {
            reason: "FieldManagerConflict".into(),
            field: c.field.clone(),
            message: c.message(),
        })
        .collect();
    e
}
