//! The installer image over HTTP: ranged reads while a boot ISO is made ([`HttpSource`]), and
//! the boot ISO streamed to a BMC ([`body`]) — the original fetched range by range as the BMC
//! asks, the patches applied on the way, the tail from memory. Nothing is stored on disk and no
//! more than one network chunk is held at a time.
use super::{BootIso, BootIsoError, Source};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The client osprov reads installer images with (rustls, the platform's roots).
pub fn client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default()
        })
        .clone()
}

/// An installer image read with HTTP `Range` requests.
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    size: tokio::sync::OnceCell<u64>,
}

impl HttpSource {
    pub fn new(client: reqwest::Client, url: &str) -> HttpSource {
        HttpSource {
            client,
            url: url.to_string(),
            size: tokio::sync::OnceCell::new(),
        }
    }

    /// One ranged GET; its body and the image's total length from `Content-Range`.
    async fn ranged(&self, first: u64, last: u64) -> Result<(Vec<u8>, Option<u64>), BootIsoError> {
        let answer = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={first}-{last}"))
            .send()
            .await
            .map_err(|e| read_error("the request failed", true, e))?;
        match answer.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => return Err(BootIsoError::NoRanges),
            s => {
                return Err(BootIsoError::Read {
                    message: format!("the image server answered {s}"),
                    transient: s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS,
                    source: None,
                })
            }
        }
        let total = answer
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, t)| t.parse().ok());
        let body = answer
            .bytes()
            .await
            .map_err(|e| read_error("the answer broke off", true, e))?;
        Ok((body.to_vec(), total))
    }
}

fn read_error(what: &str, transient: bool, e: reqwest::Error) -> BootIsoError {
    // reqwest's message names the URL: the catalogue's, which carries no credential.
    BootIsoError::Read {
        message: what.to_string(),
        transient,
        source: Some(Box::new(e)),
    }
}

#[async_trait::async_trait]
impl Source for HttpSource {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BootIsoError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (body, _) = self.ranged(offset, offset + len as u64 - 1).await?;
        Ok(body)
    }

    async fn size(&self) -> Result<u64, BootIsoError> {
        self.size
            .get_or_try_init(|| async {
                let (_, total) = self.ranged(0, 0).await?;
                total.ok_or_else(|| BootIsoError::Read {
                    message: "the image server's ranged answer has no total length".into(),
                    transient: false,
                    source: None,
                })
            })
            .await
            .copied()
    }
}

/// Bytes `[first, last]` of the boot ISO, streamed.
pub fn body(
    client: reqwest::Client,
    iso: Arc<BootIso>,
    first: u64,
    last: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let end = last + 1;
    let original = (first < iso.upstream_len).then(|| {
        let upto = end.min(iso.upstream_len);
        upstream(client, iso.clone(), first, upto)
    });
    let rest = futures::stream::once({
        let iso = iso.clone();
        async move { Ok(Bytes::from(iso.after_original(first, end))) }
    })
    .filter(|b: &Result<Bytes, std::io::Error>| {
        futures::future::ready(b.as_ref().map_or(true, |b| !b.is_empty()))
    });
    futures::stream::iter(original).flatten().chain(rest)
}

/// The original's bytes `[first, end)`, fetched and patched.
fn upstream(
    client: reqwest::Client,
    iso: Arc<BootIso>,
    first: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let url = iso.upstream.clone();
    let answer = async move {
        let answer = client
            .get(&url)
            .header(RANGE, format!("bytes={first}-{}", end - 1))
            .send()
            .await
            .map_err(std::io::Error::other)?;
        if answer.status() != StatusCode::PARTIAL_CONTENT {
            return Err(std::io::Error::other(format!(
                "the installer image's server answered {} to a range read",
                answer.status()
            )));
        }
        Ok(answer.bytes_stream().map_err(std::io::Error::other))
    };
    let mut at = first;
    futures::stream::once(answer)
        .try_flatten()
        .map_ok(move |chunk| {
            let mut v = chunk.to_vec();
            iso.overlay(at, &mut v);
            at += v.len() as u64;
            Bytes::from(v)
        })
}
