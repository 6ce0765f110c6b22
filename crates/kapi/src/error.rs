//! Errors of the embedded API.
//!
//! `ApiError` is what a request handler fails with: it always renders as a Kubernetes `Status` body
//! with the matching HTTP code (k8s-api-fidelity.md §F), so no handler ever answers a bare string.
//! `ApiServerError` is what the Rust-facing API (`serve`, `ApiServer`, persistence) fails with.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One entry of `details.causes` in a Status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCause {
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// A request failure, rendered as a `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// (name, group, kind) for `details`.
    pub details: Option<Box<(String, String, String)>>,
    pub causes: Vec<StatusCause>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    /// `<plural>.<group> "name" not found`.
    pub fn not_found(qualified: &str, group: &str, kind_plural: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            kind_plural.to_string(),
        )));
        e
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn already_exists(qualified: &str, group: &str, plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        );
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            plural.to_string(),
        )));
        e
    }
    pub fn conflict(qualified: &str, group: &str, plural: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        );
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            plural.to_string(),
        )));
        e
    }
    pub fn modified(qualified: &str, group: &str, plural: &str, name: &str) -> Self {
        Self::conflict(
            qualified,
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }
    /// 422 `Kind.group "name" is invalid: <causes>`.
    pub fn invalid(
        kind_group: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: Vec<StatusCause>,
    ) -> Self {
        let parts: Vec<String> = causes.iter().map(cause_text).collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{kind_group} \"{name}\" is invalid: {joined}"),
            details: Some(Box::new((
                name.to_string(),
                group.to_string(),
                kind.to_string(),
            ))),
            causes,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn status_body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() {
            let mut d = serde_json::Map::new();
            if let Some(d2) = &self.details {
                let (name, group, kind) = &**d2;
                d.insert("name".into(), json!(name));
                if !group.is_empty() {
                    d.insert("group".into(), json!(group));
                }
                d.insert("kind".into(), json!(kind));
            }
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                d.insert("causes".into(), Value::Array(causes));
            }
            body["details"] = Value::Object(d);
        }
        body
    }
}

/// A cause as kube-apiserver prints it inside the message: `field: message`.
fn cause_text(c: &StatusCause) -> String {
    if c.field.is_empty() {
        c.message.clone()
    } else {
        format!("{}: {}", c.field, c.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, axum::Json(self.status_body())).into_response();
        if self.code == 401 {
            resp.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Errors of the Rust-facing server API.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("persistent store error: {0}")]
    Db(#[from] redb::Error),
    #[error("invalid stored data: {0}")]
    Data(String),
    #[error("invalid CustomResourceDefinition: {0}")]
    Crd(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("kubeconfig error: {0}")]
    Kubeconfig(String),
    #[error("client error: {0}")]
    Client(#[from] kube::Error),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiServerError {
            fn from(e: $t) -> Self { ApiServerError::Db(e.into()) }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<ApiServerError> for ApiError {
    fn from(e: ApiServerError) -> Self {
        ApiError::internal(e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
