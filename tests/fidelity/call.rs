//! One raw API call of the differential corpus, and how it is sent.
//!
//! A call's path and body may hold placeholders: `${ns}` (the backend's test namespace) and
//! `${var}` for a value an earlier call saved from its response (`save`), such as a
//! resourceVersion or a continue token, so the corpus can express "a stale resourceVersion" or
//! "watch from before these writes" on both backends although the values differ between them.
use std::collections::HashMap;

use http::Method;
use http_body_util::BodyExt;
use serde_json::Value;

pub struct Call {
    pub name: &'static str,
    pub method: Method,
    pub path: String,
    pub content_type: Option<&'static str>,
    pub body: Option<String>,
    /// (variable, JSON pointer into the response body).
    pub save: Vec<(&'static str, &'static str)>,
    /// A watch: the response is read to its end and split into events.
    pub watch: bool,
    /// The `Accept` header, when the call sets one.
    pub accept: Option<&'static str>,
}

impl Call {
    fn new(name: &'static str, method: Method, path: impl Into<String>) -> Call {
        Call {
            name,
            method,
            path: path.into(),
            content_type: None,
            body: None,
            save: Vec::new(),
            watch: false,
            accept: None,
        }
    }
    fn with_body(mut self, ct: &'static str, body: impl Into<String>) -> Call {
        self.content_type = Some(ct);
        self.body = Some(body.into());
        self
    }
    /// Sends `Accept: accept`.
    pub fn accept(mut self, accept: &'static str) -> Call {
        self.accept = Some(accept);
        self
    }
    /// Saves the string at `pointer` of the response as `${var}`.
    pub fn save(mut self, var: &'static str, pointer: &'static str) -> Call {
        self.save.push((var, pointer));
        self
    }
}

pub fn get(name: &'static str, path: impl Into<String>) -> Call {
    Call::new(name, Method::GET, path)
}

pub fn watch(name: &'static str, path: impl Into<String>) -> Call {
    let mut c = Call::new(name, Method::GET, path);
    c.watch = true;
    c
}

pub fn post(name: &'static str, path: impl Into<String>, body: impl Into<String>) -> Call {
    Call::new(name, Method::POST, path).with_body("application/json", body)
}

/// A POST with an explicit content type.
pub fn post_as(
    name: &'static str,
    path: impl Into<String>,
    ct: &'static str,
    body: impl Into<String>,
) -> Call {
    Call::new(name, Method::POST, path).with_body(ct, body)
}

pub fn put(name: &'static str, path: impl Into<String>, body: impl Into<String>) -> Call {
    Call::new(name, Method::PUT, path).with_body("application/json", body)
}

pub fn patch(
    name: &'static str,
    path: impl Into<String>,
    ct: &'static str,
    body: impl Into<String>,
) -> Call {
    Call::new(name, Method::PATCH, path).with_body(ct, body)
}

pub fn merge(name: &'static str, path: impl Into<String>, body: impl Into<String>) -> Call {
    patch(name, path, "application/merge-patch+json", body)
}

pub fn delete(name: &'static str, path: impl Into<String>) -> Call {
    Call::new(name, Method::DELETE, path)
}

pub fn delete_with(name: &'static str, path: impl Into<String>, body: impl Into<String>) -> Call {
    Call::new(name, Method::DELETE, path).with_body("application/json", body)
}

/// What came back: the HTTP status and the body (JSON), or the events of a watch.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

fn fill(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// Sends `call` with `client`; saved values go into `vars`.
pub async fn send(
    client: &kube::Client,
    call: &Call,
    vars: &mut HashMap<String, String>,
) -> Answer {
    let mut req = http::Request::builder()
        .method(call.method.clone())
        .uri(fill(&call.path, vars));
    if let Some(ct) = call.content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    if let Some(accept) = call.accept {
        req = req.header(http::header::ACCEPT, accept);
    }
    let body = call
        .body
        .as_deref()
        .map(|b| fill(b, vars).into_bytes())
        .unwrap_or_default();
    let req = req.body(kube::client::Body::from(body)).expect("request");
    let resp =
        match tokio::time::timeout(std::time::Duration::from_secs(20), client.send(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Answer {
                    code: 0,
                    body: Value::String(format!("transport error: {e}")),
                }
            }
            Err(_) => {
                return Answer {
                    code: 0,
                    body: Value::String("no answer within 20 s".into()),
                }
            }
        };
    let code = resp.status().as_u16();
    let bytes = match tokio::time::timeout(
        std::time::Duration::from_secs(20),
        resp.into_body().collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            return Answer {
                code,
                body: Value::String("body not read".into()),
            }
        }
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = if call.watch && code == 200 {
        Value::Array(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.to_string())))
                .collect(),
        )
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    for (var, pointer) in &call.save {
        if let Some(v) = body.pointer(pointer).and_then(Value::as_str) {
            vars.insert(var.to_string(), v.to_string());
        }
    }
    Answer { code, body }
}
