//! DELETE and deletecollection (C4): finalizers turn a delete into setting deletionTimestamp
//! (once; generation +1 for custom kinds); without finalizers the object goes at once and the
//! answer is a Success Status. Deleting a namespace removes its objects (the namespace
//! controller's job in Kubernetes); `default` and `kube-system` cannot be deleted.
use axum::response::Response;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, StatusCause};
use super::objects::{finalizers, is_terminating, meta, meta_str, now};
use super::reads::{json_response, key, not_found, object_response, range, view, Filter};
use super::request::Req;
use super::resources::Builtin;
use super::store::{object_revision, Expect, Precondition};
use super::writes::{commit_error, dry_run, parse_json, set_meta};

fn success_status(req: &Req, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": req.info.group, "kind": req.info.plural, "uid": uid}})
}

pub fn delete(req: &Req, body: &[u8]) -> ApiResult<Response> {
    // A body's DeleteOptions replace the query's, as kube-apiserver reads one or the other.
    let from_query = body.iter().all(u8::is_ascii_whitespace);
    let opts: Value = if from_query {
        json!({})
    } else {
        parse_json(body)?
    };
    check_options(&opts)?;
    let name = req.name.clone().unwrap_or_default();
    let info = &req.info;
    let k = key(req, &name);
    let old = req
        .state
        .store
        .get(&k)
        .ok_or_else(|| not_found(req, &name))?;
    let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
    // Precondition failures name the kind (`Kind.group`), not the resource.
    let precondition =
        |why: String| ApiError::conflict(&info.kind_group(), &info.group, &info.kind, &name, &why);
    if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
        if want != uid {
            return Err(precondition(format!(
                "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            )));
        }
    }
    if let Some(want) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        let have = object_revision(&old);
        if want.parse::<u64>().ok() != Some(have) {
            return Err(precondition(format!(
                "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({have}). The object might have been modified"
            )));
        }
    }
    if info.builtin == Builtin::Namespace {
        if matches!(name.as_str(), "default" | "kube-system") {
            let mut e = ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            ));
            e.details = Some(Box::new((name.clone(), String::new(), "namespaces".into())));
            return Err(e);
        }
        delete_namespace_contents(req, &name);
    }
    if (from_query && dry_run(req))
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
    {
        return Ok(json_response(200, &success_status(req, &name, &uid)));
    }
    if !finalizers(&old).is_empty() {
        if is_terminating(&old) {
            return Ok(object_response(req, 200, &view(info, &old)));
        }
        let mut new = (*old).clone();
        set_meta(&mut new, "deletionTimestamp", json!(now()));
        set_meta(&mut new, "deletionGracePeriodSeconds", json!(0));
        if info.builtin == Builtin::Custom {
            let gen = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            set_meta(&mut new, "generation", json!(gen + 1));
        }
        return match req
            .state
            .store
            .commit(&k, Expect::Revision(object_revision(&old)), Some(new))
        {
            Ok(change) => Ok(object_response(req, 200, &view(info, &change.object))),
            // Gone meanwhile: as kube-apiserver, a conflict rather than a 404 here.
            Err(Precondition::Missing) => Err(commit_error(req, &name, Precondition::Stale)),
            Err(e) => Err(commit_error(req, &name, e)),
        };
    }
    match req
        .state
        .store
        .commit(&k, Expect::Revision(object_revision(&old)), None)
    {
        Ok(_) => {
            req.state.gc_wake.notify_one();
            Ok(json_response(200, &success_status(req, &name, &uid)))
        }
        Err(e) => Err(commit_error(req, &name, e)),
    }
}

/// The JSON type each DeleteOptions field must have, as Go's decoder names it.
const TYPED: &[(&str, &str)] = &[
    ("gracePeriodSeconds", "int64"),
    ("orphanDependents", "bool"),
    ("propagationPolicy", "v1.DeletionPropagation"),
    ("dryRun", "[]string"),
    ("preconditions", "v1.Preconditions"),
    ("kind", "string"),
    ("apiVersion", "string"),
];

/// A field of the wrong JSON type: 400, as kube-apiserver's decoder refuses it, before anything is
/// deleted.
fn check_types(opts: &Value) -> ApiResult<()> {
    for (field, go_type) in TYPED {
        let Some(v) = opts.get(*field).filter(|v| !v.is_null()) else {
            continue;
        };
        let fits = match *go_type {
            "int64" => v.as_i64().is_some(),
            "bool" => v.is_boolean(),
            "[]string" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "v1.Preconditions" => v.as_object().is_some_and(|o| {
                ["uid", "resourceVersion"]
                    .iter()
                    .all(|k| o.get(*k).is_none_or(|x| x.is_string() || x.is_null()))
            }),
            _ => v.is_string(),
        };
        if !fits {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field DeleteOptions.{field} of type {go_type}",
                super::labels::json_type(v)
            )));
        }
    }
    Ok(())
}

/// DeleteOptions validation: each field of its type, propagationPolicy and dryRun of known
/// values only.
fn check_options(opts: &Value) -> ApiResult<()> {
    check_types(opts)?;
    // The body decodes by its kind: only DeleteOptions is one.
    if let Some(kind) = opts
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    {
        if kind != "DeleteOptions" {
            let version = opts
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("v1");
            return Err(ApiError::bad_request(format!(
                "no kind {kind:?} is registered for version {version:?} in scheme \"pkg/runtime/scheme.go:111\""
            )));
        }
    }
    let mut causes = Vec::new();
    if let Some(p) = opts.get("propagationPolicy").filter(|p| !p.is_null()) {
        if !matches!(p.as_str(), Some("Foreground" | "Background" | "Orphan")) {
            causes.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                field: "propagationPolicy".into(),
                message: format!(
                    "Unsupported value: {p}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            });
        }
    }
    if let Some(d) = opts.get("dryRun").and_then(Value::as_array) {
        for v in d.iter().filter(|v| *v != "All") {
            causes.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                field: "dryRun".into(),
                message: format!("Unsupported value: {v}: supported values: \"All\""),
            });
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        "DeleteOptions.meta.k8s.io",
        "meta.k8s.io",
        "DeleteOptions",
        "",
        causes,
    ))
}

/// A namespace's objects go with it (the namespace controller's job in Kubernetes).
fn delete_namespace_contents(req: &Req, ns: &str) {
    let (_, objects) = req.state.store.snapshot();
    for (k, obj) in objects.iter().filter(|(k, _)| k.1 == ns) {
        let _ = req
            .state
            .store
            .commit(k, Expect::Revision(object_revision(obj)), None);
    }
}

pub fn delete_collection(req: &Req) -> ApiResult<Response> {
    let filter = Filter::from_req(req)?;
    let (_, objects) = req.state.store.snapshot();
    let mut deleted = Vec::new();
    for (k, obj) in range(&objects, &req.info.store_key, &filter.namespace, None) {
        let v = view(&req.info, obj);
        if !filter.matches(&v) {
            continue;
        }
        let sub = Req {
            state: req.state.clone(),
            info: req.info.clone(),
            namespace: k.1.clone(),
            name: Some(k.2.clone()),
            sub: None,
            query: req.query.clone(),
            headers: req.headers.clone(),
            user_agent: req.user_agent.clone(),
        };
        if delete(&sub, b"").is_ok() {
            deleted.push(v);
        }
    }
    let rv = req.state.store.revision().to_string();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", req.info.kind), "apiVersion": req.info.api_version(),
                "metadata": {"resourceVersion": rv}, "items": deleted}),
    ))
}
