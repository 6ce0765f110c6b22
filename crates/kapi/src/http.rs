//! HTTP front: authentication, request parsing and dispatch.
//!
//! Every request goes through one axum fallback handler because Kubernetes paths
//! (`/api/v1/namespaces/{ns}/secrets/{name}`, `/apis/{g}/{v}/namespaces/{ns}/{plural}/{name}/status`,
//! `/api/v1/namespaces/{name}/status`) are easier to classify by hand than with route patterns. The
//! handler checks the bearer token, resolves the resource in the registry, records the access
//! (user agent, verb, group, resource, subresource) and calls the read, watch or write code.
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use percent_encoding::percent_decode_str;

use super::error::{ApiError, ApiResult};
use super::request::{Query, Req, State};
use super::{delete, discovery, patch, reads, watch, writes};

/// The largest request body accepted: kube-apiserver's default (`--max-request-bytes`, 3 MiB).
/// A larger one is refused with a 413 `Status` before anything parses it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(state)
        // The handler reads the body itself, with its own limit and answer.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn authorized(state: &State, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // Length-independent comparison of equal-length strings.
    token.len() == state.token.len()
        && token
            .bytes()
            .zip(state.token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !authorized(&state, &headers) {
        return ApiError::unauthorized().into_response();
    }
    let body = match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Err(_) => {
            return unread_body(ApiError::new(
                408,
                "Timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    state.body_timeout
                ),
            ));
        }
        Ok(Err(_)) => {
            return unread_body(ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
    };
    // A watch streams; everything else is answered whole, so it can be re-encoded.
    let streams = Query::parse(uri.query()).flag("watch") || uri.path().contains("/watch/");
    let yaml = super::yaml::wanted(&headers) && !streams;
    let resp = match dispatch(state, method, uri, headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, "request failed");
            e.into_response()
        }
    };
    match yaml {
        true => super::yaml::answer(resp).await,
        false => resp,
    }
}

/// The answer to a request whose body was not read to its end. The connection cannot carry
/// another request (the rest of the body is still on it), so the answer says `Connection: close`:
/// without it a client puts the connection back in its pool and its next request fails with
/// "connection closed before message completed" (seen in the fuzz test).
fn unread_body(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

async fn dispatch(
    state: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let path = uri.path().trim_end_matches('/');
    let query = Query::parse(uri.query());
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if method == Method::GET {
        if let Some(resp) = discovery::serve(&state, &segs, &headers)? {
            return Ok(resp);
        }
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    // /api/v1/namespaces/{name}[/status|/finalize] addresses a Namespace itself.
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, res, tail @ ..]
            if !(group.is_empty() && matches!(*res, "status" | "finalize")) =>
        {
            match tail {
                [] => (*ns, *res, None, None),
                [n] => (*ns, *res, Some(*n), None),
                [n, s] => (*ns, *res, Some(*n), Some(*s)),
                _ => return Err(ApiError::not_found_path()),
            }
        }
        [res] => ("", *res, None, None),
        [res, n] => ("", *res, Some(*n), None),
        [res, n, s] => ("", *res, Some(*n), Some(*s)),
        _ => return Err(ApiError::not_found_path()),
    };
    // kube-apiserver's mux answers unknown paths under /apis with a plain-text
    // "404 page not found"; here every non-2xx answer is a Status (k8s-api-fidelity.md §F), so
    // clients see reason NotFound either way.
    let unknown = || -> ApiResult<Response> { Err(ApiError::not_found_path()) };
    let Some(info) = state.registry.lookup(group, version, plural) else {
        return unknown();
    };
    if (!namespace.is_empty() && !info.namespaced)
        || (info.namespaced && namespace.is_empty() && name.is_some())
    {
        return unknown();
    }
    if let (Some(s), Some(n)) = (sub, name) {
        if !(s == "status" && info.status_subresource) {
            return Err(ApiError::not_found(
                &info.qualified(),
                &info.group,
                &info.plural,
                n,
            ));
        }
    }
    let is_watch = query.flag("watch");
    let verb = match (&method, name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if is_watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        // A create whose body must carry the URL's name (kube-apiserver routes it so).
        (&Method::POST, true) if sub.is_none() => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ))
        }
    };
    if info.namespaced && namespace.is_empty() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::not_found_path());
    }
    state.access.record(
        &user_agent,
        verb,
        &info.group,
        &info.plural,
        sub.unwrap_or(""),
    );
    let req = Req {
        state: state.clone(),
        info,
        namespace: namespace.to_string(),
        name: name.map(String::from),
        sub: sub.map(String::from),
        query,
        headers,
        user_agent,
    };
    if verb == "patch" {
        patch::media(&req)?;
    }
    if !req.acceptable() {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml, \
             application/vnd.kubernetes.protobuf",
        ));
    }
    // A create's and a DELETE body's media type come before the options (kube-apiserver
    // negotiates the serializer first there); a DELETE without a body has none to check.
    // An update checks its options first (kube-apiserver's update handler does).
    if verb == "create" || (verb == "delete" && !body.is_empty()) {
        writes::require_json(&req)?;
    }
    // A DELETE with a body takes its options from the body alone (`delete` checks them).
    if verb != "delete" || body.is_empty() {
        let apply = req.media_type().starts_with("application/apply-patch");
        super::options::check(verb, &req.query, apply)?;
    }
    if verb == "update" {
        writes::require_json(&req)?;
    }
    match verb {
        "get" => reads::get(&req),
        "list" => reads::list(&req),
        "watch" => watch::watch(req),
        _ if req.state.store.persistent() => {
            // Writes wait for the group commit to disk: keep them off the async workers.
            let verb = verb.to_string();
            tokio::task::spawn_blocking(move || write(&verb, &req, &body))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
        }
        _ => write(verb, &req, &body),
    }
}

fn write(verb: &str, req: &Req, body: &[u8]) -> ApiResult<Response> {
    match verb {
        "create" => writes::create(req, body),
        "update" => writes::update(req, body),
        "patch" => patch::patch(req, body),
        "delete" => delete::delete(req, body),
        _ => delete::delete_collection(req),
    }
}
