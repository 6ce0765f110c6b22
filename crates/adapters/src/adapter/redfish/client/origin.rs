//! Which URLs belong to a Redfish service: its own origin (scheme, host and port). The client
//! sends the BMC's credentials nowhere else, whether a document links elsewhere or a response
//! redirects there.

/// `scheme://host[:port]` of an absolute URL.
pub(super) fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    url.get(..scheme.len() + 3 + host_end)
}

/// Whether two absolute URLs share scheme, host and port (case-insensitively).
pub(super) fn same_origin(a: &str, b: &str) -> bool {
    match (origin(a), origin(b)) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => false,
    }
}

/// Follow at most 5 redirects, each on `endpoint`'s origin.
pub(super) fn same_origin_redirects(endpoint: &str) -> reqwest::redirect::Policy {
    let home = endpoint.to_string();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if same_origin(attempt.url().as_str(), &home) {
            attempt.follow()
        } else {
            attempt.error("a redirect off the Redfish service's origin was refused")
        }
    })
}
