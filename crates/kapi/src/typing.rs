//! What a write's body must say about its own type before anything else is looked at:
//! `apiVersion` and `kind` (defaulted from the endpoint for built-in kinds, as kube-apiserver's
//! decoder does) matching the endpoint, and ObjectMeta fields of the types Go decodes them into.
use super::error::{ApiError, ApiResult};
use super::objects::meta_str;
use super::request::Req;
use super::resources::Builtin;
use super::writes::cause;
use serde_json::Value;

/// A built-in kind's body may leave out `apiVersion` and `kind` (the official Python client's
/// creates do): kube-apiserver's decoder takes them from the endpoint. Custom kinds get no such
/// default there, so neither do they here.
pub(super) fn default_type(req: &Req, obj: &mut Value) {
    if req.info.builtin == Builtin::Custom {
        return;
    }
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let missing = |o: &serde_json::Map<String, Value>, f: &str| {
        o.get(f).and_then(Value::as_str).is_none_or(str::is_empty)
    };
    if missing(o, "apiVersion") {
        o.insert("apiVersion".into(), Value::String(req.info.api_version()));
    }
    if missing(o, "kind") {
        o.insert("kind".into(), Value::String(req.info.kind.clone()));
    }
}

/// ObjectMeta fields of the wrong JSON type: 400, as kube-apiserver's decoder refuses the body.
pub(super) fn check_meta_types(req: &Req, obj: &Value) -> ApiResult<()> {
    match super::labels::type_error(obj) {
        None => Ok(()),
        Some(why) => Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}",
            kind = req.info.kind,
            version = req.info.version
        ))),
    }
}

/// apiVersion and kind of a full object must match the endpoint: a missing kind cannot be
/// decoded (400), another apiVersion is 400, another kind of the same version is 422.
pub(super) fn check_type(req: &Req, obj: &Value) -> ApiResult<()> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        let text = obj.to_string();
        let short: String = text.chars().take(50).collect();
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): Object 'Kind' is missing in '{text}' ({short} ...)",
            req.info.kind
        )));
    }
    if av != req.info.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            req.info.api_version()
        )));
    }
    if kind != req.info.kind {
        let name = meta_str(obj, "name").unwrap_or_default();
        let group_kind = if req.info.group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{}", req.info.group)
        };
        return Err(ApiError::invalid(
            &group_kind,
            &req.info.group,
            kind,
            name,
            vec![cause(
                "kind",
                &format!("Invalid value: \"{kind}\": must be {}", req.info.kind),
            )],
        ));
    }
    Ok(())
}
