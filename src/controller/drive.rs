//! The config drive endpoint: `GET /drive/<key>.<secret>.iso` on the callback endpoint's
//! listener, where a BMC reads a Redfish operation's config drive as virtual media.
//!
//! The drive is the image the operation's record keeps (rendered once when the operation was
//! recorded, so every read, before and after a restart, gets the same bytes); it is served only while the operation runs (a record whose
//! outcome was cleaned up answers 404) and only with the drive's own secret, compared in constant
//! time. That secret is not the callback's: the BMC shows the drive URL in its virtual media
//! status, so what it grants is one read of this operation's drive, for the operation's life.
//! Like the callback, only the leader with filled caches answers (503 otherwise).
//!
//! A Redfish operation with a per-operation boot ISO (`configMedium: BootIso`) is served at the
//! same URL: the installer streamed from its own URL with the operation's patches, then the
//! tail (`adapter::bootiso`).
//!
//! BMCs read virtual media in pieces: a single `Range: bytes=…` is answered with 206 and
//! `Content-Range` (parsed by `http-range-header`), an unsatisfiable one with 416; several ranges
//! at once get the whole drive (200), which HTTP allows.
use super::callback::{find, valid_key, CallbackState};
use super::callback_server::LongTransfer;
use crate::adapter::bootiso::{self, BootIso};
use crate::adapter::configdrive;
use crate::adapter::store::StoreError;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
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
    long: Option<axum::Extension<LongTransfer>>,
    headers: HeaderMap,
) -> Response {
    let Some((key, secret)) = name
        .strip_suffix(".iso")
        .and_then(|n| n.split_once('.'))
        .filter(|(k, _)| valid_key(k))
    else {
        return refuse(StatusCode::NOT_FOUND, "unknown drive");
    };
    if !state.leading() {
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
    // Served while the installer may read it: not after the media were ejected for the
    // installed OS's boot, nor after the operation's cleanup.
    let served = !rec.cleaned && rec.installed_boot_at.is_none();
    if let Some(boot_iso) = rec.boot_iso.as_deref().filter(|_| served) {
        // An authenticated read of a medium that may take long: its connection may outlive
        // the callback endpoint's connection time.
        if let Some(axum::Extension(long)) = long {
            long.allow();
        }
        return serve_boot_iso(key, boot_iso, &headers);
    }
    let Some(image) = rec.drive.as_deref().filter(|_| served) else {
        return refuse(StatusCode::NOT_FOUND, "the operation has ended");
    };
    use base64::Engine;
    let iso = base64::engine::general_purpose::STANDARD
        .decode(image)
        .map(configdrive::padded);
    match iso {
        Ok(bytes) => {
            info!(operation = %key, "config drive served");
            ranged(
                headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
                bytes,
            )
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

/// A per-operation boot ISO: the installer streamed from its own URL with the patches applied,
/// then the tail; a single `Range` honoured as for the drive.
fn serve_boot_iso(key: &str, json: &str, headers: &HeaderMap) -> Response {
    let iso: BootIso = match serde_json::from_str(json) {
        Ok(iso) => iso,
        Err(e) => {
            warn!(operation = %key, error = %e, "the boot ISO in the operation's record is unreadable");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the boot ISO could not be rendered",
            );
        }
    };
    let total = iso.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match range
        .map(|r| http_range_header::parse_range_header(r).and_then(|r| r.validate(total)))
    {
        None => (StatusCode::OK, 0, total.saturating_sub(1)),
        Some(Ok(ranges)) if ranges.len() == 1 => (
            StatusCode::PARTIAL_CONTENT,
            *ranges[0].start(),
            *ranges[0].end(),
        ),
        Some(Ok(_)) => (StatusCode::OK, 0, total.saturating_sub(1)),
        Some(Err(_)) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{total}"))],
            )
                .into_response()
        }
    };
    info!(operation = %key, first, last, "boot ISO served");
    let body = bootiso::http::body(bootiso::http::client(), Arc::new(iso), first, last);
    let mut response = (status, axum::body::Body::from_stream(body)).into_response();
    let h = response.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, "application/octet-stream".into());
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::CONTENT_LENGTH, (last + 1 - first).to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{total}"),
        );
    }
    response
}

/// The answer to a read of `bytes`, honouring a single `Range`.
fn ranged(range: Option<&str>, bytes: Vec<u8>) -> Response {
    let total = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let whole = |bytes: Vec<u8>| {
        (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::ACCEPT_RANGES, "bytes".to_string()),
            ],
            bytes,
        )
            .into_response()
    };
    let Some(range) = range else {
        return whole(bytes);
    };
    let parsed = http_range_header::parse_range_header(range).and_then(|r| r.validate(total));
    match parsed.as_deref() {
        Ok([one]) => {
            let (start, end) = (*one.start(), *one.end());
            let slice = usize::try_from(start)
                .ok()
                .zip(usize::try_from(end).ok())
                .and_then(|(a, b)| bytes.get(a..=b))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::ACCEPT_RANGES, "bytes".to_string()),
                    (
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{end}/{total}"),
                    ),
                ],
                slice,
            )
                .into_response()
        }
        Ok(_) => whole(bytes),
        Err(_) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn answer(range: Option<&str>) -> (StatusCode, Option<String>, Vec<u8>) {
        let r = ranged(range, (0u8..100).collect());
        let status = r.status();
        let content_range = r
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = to_bytes(r.into_body(), 1 << 20).await.expect("body");
        (status, content_range, body.to_vec())
    }

    #[tokio::test]
    async fn a_single_range_is_a_206_with_its_bytes_and_others_get_what_http_says() {
        assert_eq!(answer(None).await.0, StatusCode::OK);
        assert_eq!(
            answer(Some("bytes=10-19")).await,
            (
                StatusCode::PARTIAL_CONTENT,
                Some("bytes 10-19/100".into()),
                (10u8..20).collect()
            )
        );
        let tail = answer(Some("bytes=-5")).await;
        assert_eq!(
            (tail.1.as_deref(), tail.2.len()),
            (Some("bytes 95-99/100"), 5)
        );
        let past = answer(Some("bytes=200-300")).await;
        assert_eq!(
            (past.0, past.1.as_deref()),
            (StatusCode::RANGE_NOT_SATISFIABLE, Some("bytes */100"))
        );
        let several = answer(Some("bytes=0-1,5-6")).await;
        assert_eq!((several.0, several.2.len()), (StatusCode::OK, 100));
    }
}
