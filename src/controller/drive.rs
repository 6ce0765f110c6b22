//! The config drive endpoint: `GET /drive/<key>.<secret>.iso` on the callback endpoint's
//! listener, where a BMC reads a Redfish operation's config drive as virtual media.
//!
//! The drive is rendered from the files the operation's record keeps (its user-data, meta-data,
//! network-config and callback URL); it is served only while the operation runs (a record whose
//! outcome was cleaned up answers 404) and only with the drive's own secret, compared in constant
//! time. That secret is not the callback's: the BMC shows the drive URL in its virtual media
//! status, so what it grants is one read of this operation's drive, for the operation's life.
//! Like the callback, only the leader with filled caches answers (503 otherwise).
use super::callback::{find, valid_key, CallbackState};
use crate::adapter::configdrive;
use crate::adapter::store::StoreError;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

fn refuse(code: StatusCode, message: &str) -> Response {
    (code, message.to_string()).into_response()
}

/// `GET /drive/{name}`.
pub async fn serve_drive(
    State(state): State<Arc<CallbackState>>,
    Path(name): Path<String>,
) -> Response {
    let Some((key, secret)) = name
        .strip_suffix(".iso")
        .and_then(|n| n.split_once('.'))
        .filter(|(k, _)| valid_key(k))
    else {
        return refuse(StatusCode::NOT_FOUND, "unknown drive");
    };
    if !state
        .health
        .leading
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader; try again",
        );
    }
    let rec = match find(&state.hub, key).await {
        Ok(Some((_, rec))) => rec,
        Ok(None) | Err(StoreError::Lost(_)) => {
            return refuse(StatusCode::NOT_FOUND, "unknown drive")
        }
        Err(e) => {
            warn!(error = %e, "the config drive's record could not be read");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
    };
    let Some(want) = rec.drive_secret.as_deref() else {
        return refuse(StatusCode::NOT_FOUND, "unknown drive");
    };
    if !bool::from(want.as_bytes().ct_eq(secret.as_bytes())) {
        warn!(operation = %key, "config drive request with a wrong secret refused");
        return refuse(StatusCode::UNAUTHORIZED, "wrong drive token");
    }
    if rec.cleaned || rec.drive.is_empty() {
        return refuse(StatusCode::NOT_FOUND, "the operation has ended");
    }
    let iso = configdrive::decode_files(&rec.drive).and_then(configdrive::nocloud_iso_of);
    match iso {
        Ok(bytes) => {
            info!(operation = %key, "config drive served");
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Err(e) => {
            warn!(operation = %key, error = %e, "the config drive could not be rendered");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the drive could not be rendered",
            )
        }
    }
}
