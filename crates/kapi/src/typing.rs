//! What a write's body must say about its own type before anything else is looked at:
//! `apiVersion` and `kind` (defaulted from the endpoint for built-in kinds, as kube-apiserver's
//! decoder does) matching the endpoint, and ObjectMeta fields and a built-in kind's typed fields
//! of the types Go decodes them into (a table of JSON pointers, `FIELDS`).
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
    // Absent, null or empty; a value of another type is the decoder's error, not a default.
    let missing = |o: &serde_json::Map<String, Value>, f: &str| match o.get(f) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if missing(o, "apiVersion") {
        o.insert("apiVersion".into(), Value::String(req.info.api_version()));
    }
    if missing(o, "kind") {
        o.insert("kind".into(), Value::String(req.info.kind.clone()));
    }
}

/// Typed fields of the built-in kinds, as JSON pointers with the Go type they decode into.
const FIELDS: &[(Builtin, &str, &str)] = &[
    (Builtin::Secret, "/data", "map[string][]byte"),
    (Builtin::Secret, "/stringData", "map[string]string"),
    (Builtin::Secret, "/type", "string"),
    (Builtin::Secret, "/immutable", "bool"),
    (Builtin::Lease, "/spec", "object"),
    (Builtin::Lease, "/spec/holderIdentity", "string"),
    (Builtin::Lease, "/spec/leaseDurationSeconds", "int32"),
    (Builtin::Lease, "/spec/acquireTime", "string"),
    (Builtin::Lease, "/spec/renewTime", "string"),
    (Builtin::Lease, "/spec/leaseTransitions", "int32"),
    (Builtin::Lease, "/spec/strategy", "string"),
    (Builtin::Lease, "/spec/preferredHolder", "string"),
    (Builtin::CoreEvent, "/involvedObject", "object"),
    (Builtin::CoreEvent, "/reason", "string"),
    (Builtin::CoreEvent, "/message", "string"),
    (Builtin::CoreEvent, "/source", "object"),
    (Builtin::CoreEvent, "/firstTimestamp", "string"),
    (Builtin::CoreEvent, "/lastTimestamp", "string"),
    (Builtin::CoreEvent, "/count", "int32"),
    (Builtin::CoreEvent, "/type", "string"),
    (Builtin::CoreEvent, "/eventTime", "string"),
    (Builtin::CoreEvent, "/series", "object"),
    (Builtin::CoreEvent, "/action", "string"),
    (Builtin::CoreEvent, "/related", "object"),
    (Builtin::CoreEvent, "/reportingComponent", "string"),
    (Builtin::CoreEvent, "/reportingInstance", "string"),
    (Builtin::EventsV1, "/eventTime", "string"),
    (Builtin::EventsV1, "/series", "object"),
    (Builtin::EventsV1, "/reportingController", "string"),
    (Builtin::EventsV1, "/reportingInstance", "string"),
    (Builtin::EventsV1, "/action", "string"),
    (Builtin::EventsV1, "/reason", "string"),
    (Builtin::EventsV1, "/regarding", "object"),
    (Builtin::EventsV1, "/related", "object"),
    (Builtin::EventsV1, "/note", "string"),
    (Builtin::EventsV1, "/type", "string"),
    (Builtin::EventsV1, "/deprecatedSource", "object"),
    (Builtin::EventsV1, "/deprecatedFirstTimestamp", "string"),
    (Builtin::EventsV1, "/deprecatedLastTimestamp", "string"),
    (Builtin::EventsV1, "/deprecatedCount", "int32"),
    (Builtin::CoreEvent, "/source/component", "string"),
    (Builtin::CoreEvent, "/source/host", "string"),
    (Builtin::CoreEvent, "/series/count", "int32"),
    (Builtin::CoreEvent, "/series/lastObservedTime", "string"),
    (Builtin::EventsV1, "/deprecatedSource/component", "string"),
    (Builtin::EventsV1, "/deprecatedSource/host", "string"),
    (Builtin::EventsV1, "/series/count", "int32"),
    (Builtin::EventsV1, "/series/lastObservedTime", "string"),
    (Builtin::CoreEvent, "/involvedObject/kind", "string"),
    (Builtin::CoreEvent, "/involvedObject/namespace", "string"),
    (Builtin::CoreEvent, "/involvedObject/name", "string"),
    (Builtin::CoreEvent, "/involvedObject/uid", "string"),
    (Builtin::CoreEvent, "/involvedObject/apiVersion", "string"),
    (
        Builtin::CoreEvent,
        "/involvedObject/resourceVersion",
        "string",
    ),
    (Builtin::CoreEvent, "/involvedObject/fieldPath", "string"),
    (Builtin::CoreEvent, "/related/kind", "string"),
    (Builtin::CoreEvent, "/related/namespace", "string"),
    (Builtin::CoreEvent, "/related/name", "string"),
    (Builtin::CoreEvent, "/related/uid", "string"),
    (Builtin::CoreEvent, "/related/apiVersion", "string"),
    (Builtin::CoreEvent, "/related/resourceVersion", "string"),
    (Builtin::CoreEvent, "/related/fieldPath", "string"),
    (Builtin::EventsV1, "/regarding/kind", "string"),
    (Builtin::EventsV1, "/regarding/namespace", "string"),
    (Builtin::EventsV1, "/regarding/name", "string"),
    (Builtin::EventsV1, "/regarding/uid", "string"),
    (Builtin::EventsV1, "/regarding/apiVersion", "string"),
    (Builtin::EventsV1, "/regarding/resourceVersion", "string"),
    (Builtin::EventsV1, "/regarding/fieldPath", "string"),
    (Builtin::EventsV1, "/related/kind", "string"),
    (Builtin::EventsV1, "/related/namespace", "string"),
    (Builtin::EventsV1, "/related/name", "string"),
    (Builtin::EventsV1, "/related/uid", "string"),
    (Builtin::EventsV1, "/related/apiVersion", "string"),
    (Builtin::EventsV1, "/related/resourceVersion", "string"),
    (Builtin::EventsV1, "/related/fieldPath", "string"),
    (Builtin::Namespace, "/spec", "object"),
    (Builtin::Namespace, "/spec/finalizers", "[]string"),
    (Builtin::Namespace, "/status", "object"),
    (Builtin::Namespace, "/status/phase", "string"),
    (Builtin::Namespace, "/status/conditions", "array"),
];

/// Drops the fields a built-in kind's Go type does not have (at the top level and inside each
/// typed object the table lists members of), as kube-apiserver's decoder does; their paths, for the warnings or a
/// strict refusal. Custom kinds are pruned by their schema instead.
pub(super) fn prune_builtin(req: &Req, obj: &mut Value) -> Vec<String> {
    let builtin = req.info.builtin;
    if builtin == Builtin::Custom {
        return Vec::new();
    }
    // An events.k8s.io Event reaches this point in its stored (core) form, or still in its own.
    let same =
        |k: Builtin| k == builtin || (builtin == Builtin::EventsV1 && k == Builtin::CoreEvent);
    let known = |parent: &str| -> Vec<&str> {
        FIELDS
            .iter()
            .filter(|(k, _, _)| same(*k))
            .filter_map(|(_, p, _)| p.strip_prefix(parent)?.strip_prefix('/'))
            .filter(|rest| !rest.contains('/'))
            .collect()
    };
    // A null decodes as the Go zero value, which an `omitempty` field then leaves out (times are
    // kept: their zero value is written as null).
    for (_, pointer, _) in FIELDS.iter().filter(|(k, _, _)| same(*k)) {
        if pointer.ends_with("Timestamp") || pointer.ends_with("Time") {
            continue;
        }
        let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        let target = if parent.is_empty() {
            Some(&mut *obj)
        } else {
            obj.pointer_mut(parent)
        };
        if let Some(Value::Object(o)) = target {
            if o.get(last).is_some_and(Value::is_null) {
                o.remove(last);
            }
        }
    }
    let mut dropped = Vec::new();
    let mut prune = |at: &str, keep: Vec<&str>| {
        let target = if at.is_empty() {
            Some(&mut *obj)
        } else {
            obj.pointer_mut(at)
        };
        let Some(Value::Object(o)) = target else {
            return;
        };
        let unknown: Vec<String> = o
            .keys()
            .filter(|k| !keep.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            o.remove(&k);
            let path = format!("{at}/{k}");
            dropped.push(path.trim_start_matches('/').replace('/', "."));
        }
    };
    let mut top = known("");
    top.extend(["apiVersion", "kind", "metadata"]);
    prune("", top);
    // Every typed object whose members the table lists.
    let parents: Vec<&str> = FIELDS
        .iter()
        .filter(|(k, _, go)| same(*k) && *go == "object")
        .map(|(_, p, _)| *p)
        .filter(|p| !known(p).is_empty())
        .collect();
    for parent in parents {
        prune(parent, known(parent));
    }
    dropped
}

/// Whether `v` decodes into Go type `go` (a JSON null decodes into any type).
fn decodes(go: &str, v: &Value) -> bool {
    match go {
        _ if v.is_null() => true,
        "string" => v.is_string(),
        "bool" => v.is_boolean(),
        "int32" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        "object" => v.is_object(),
        "array" => v.is_array(),
        // A null element decodes as "".
        "[]string" => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string() || x.is_null())),
        // Bytes decode from base64 text or from an array of byte values.
        "map[string][]byte" => v.as_object().is_some_and(|m| {
            m.values().all(|x| {
                x.is_string()
                    || x.is_null()
                    || x.as_array()
                        .is_some_and(|a| a.iter().all(|b| b.as_u64().is_some_and(|b| b <= 255)))
            })
        }),
        // map[string]string.
        _ => v
            .as_object()
            .is_some_and(|m| m.values().all(|x| x.is_string() || x.is_null())),
    }
}

/// The first field of `obj` kube-apiserver's decoder cannot decode, worded as Go words it: the
/// type fields, ObjectMeta, and the typed fields of a built-in kind.
pub(super) fn type_error(req: &Req, obj: &Value) -> Option<String> {
    for field in ["apiVersion", "kind"] {
        if let Some(v) = obj.get(field).filter(|v| !decodes("string", v)) {
            return Some(format!(
                "json: cannot unmarshal {} into Go struct field TypeMeta.{field} of type string",
                super::labels::json_type(v)
            ));
        }
    }
    if let Some(why) = super::labels::type_error(obj) {
        return Some(why);
    }
    FIELDS
        .iter()
        .filter(|(kind, _, _)| *kind == req.info.builtin)
        .find_map(|(_, pointer, go)| {
            let v = obj.pointer(pointer).filter(|v| !decodes(go, v))?;
            Some(format!(
                "json: cannot unmarshal {} into Go struct field {}{} of type {go}",
                super::labels::json_type(v),
                req.info.kind,
                pointer.replace('/', ".")
            ))
        })
}

/// Fields of the wrong JSON type: 400, as kube-apiserver's decoder refuses the body.
pub(super) fn check_meta_types(req: &Req, obj: &Value) -> ApiResult<()> {
    match type_error(req, obj) {
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
