//! YAML request bodies (`application/yaml` creates and updates, `application/apply-patch+yaml`),
//! and YAML answers for a client that asks for them first.
//!
//! libyaml, under `serde_norway`, takes time quadratic in the nesting of flow collections before
//! it reaches its own recursion limit of 128: 200 KB of `[` took 1.6 s and 100 KB of `{a: ` 4.7 s
//! in a release build, so a 3 MiB body could hold a worker for minutes. [`parse`] first measures
//! the flow nesting with one linear pass (outside quoted scalars and comments) and refuses a body
//! nested deeper than libyaml would accept anyway. A plain scalar holding `[` (`key: a[b`) counts
//! as an opening too; it takes more than 128 of them in one document to be refused.
use serde_json::Value;

use super::error::{ApiError, ApiResult};

/// libyaml's (serde_norway's) own recursion limit: a document nested deeper fails to parse anyway.
pub const MAX_DEPTH: usize = 128;

/// The deepest nesting of flow collections (`[...]`, `{...}`) in `body`.
pub fn flow_depth(body: &[u8]) -> usize {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
        Comment,
    }
    let (mut state, mut depth, mut deepest) = (In::Plain, 0usize, 0usize);
    let mut prev = b'\n';
    let mut escaped = false;
    for &c in body {
        match state {
            In::Plain => match c {
                b'"' => state = In::Double,
                b'\'' => state = In::Single,
                b'#' if prev.is_ascii_whitespace() => state = In::Comment,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
            In::Double => {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    state = In::Plain;
                }
            }
            // `''` inside a single-quoted scalar is a quote: leaving and re-entering is the same.
            In::Single if c == b'\'' => state = In::Plain,
            In::Comment if c == b'\n' => state = In::Plain,
            In::Single | In::Comment => {}
        }
        prev = c;
    }
    deepest
}

/// Decode a YAML body, refusing pathological nesting before libyaml sees it.
pub fn parse(body: &[u8]) -> ApiResult<Value> {
    if flow_depth(body) > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "error decoding YAML: collections nested deeper than {MAX_DEPTH} levels"
        )));
    }
    serde_norway::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// Whether the client asked for YAML first (`Accept: application/yaml`, before any other type).
pub fn wanted(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .and_then(|first| first.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/yaml"))
}

/// A JSON answer re-encoded as YAML, as kube-apiserver encodes any answer (objects, lists and
/// Status errors) in the negotiated media type. Anything else (a stream, protobuf) is returned
/// as it is.
pub async fn answer(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    };
    let yaml = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| serde_norway::to_string(&v).ok());
    let Some(yaml) = yaml else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/yaml"),
    );
    axum::response::Response::from_parts(parts, axum::body::Body::from(yaml))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_flow_collections_outside_strings_and_comments() {
        assert_eq!(flow_depth(b"a: [1, {b: [2]}]"), 3);
        assert_eq!(flow_depth(b"a: \"[[[[\"\nb: '{{{{'\nc: [x] # [[[[\n"), 1);
        assert_eq!(flow_depth(b"a: \"esc \\\" [[[\"\nb: 'it''s [[['"), 0);
        assert_eq!(
            flow_depth(b"url: http://x/#[[[\n"),
            3,
            "a # inside a scalar is no comment"
        );
        assert_eq!(flow_depth(b"- a\n- b\n"), 0);
    }

    #[test]
    fn deep_bodies_are_refused_quickly_and_normal_ones_parse() {
        let deep = "{a: ".repeat(1_000_000);
        let err = parse(deep.as_bytes()).expect_err("too deep");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("nested deeper"), "{}", err.message);
        let ok = parse(b"apiVersion: v1\nkind: Secret\nmetadata: {name: s, labels: {a: \"[\"}}\n")
            .expect("parses");
        assert_eq!(ok["metadata"]["labels"]["a"], "[");
    }
}
