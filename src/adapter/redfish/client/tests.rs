//! Unit tests of the Redfish client: error mapping and redaction.
use super::*;

#[test]
fn errors_map_onto_adapter_errors() {
    let s = |status| RedfishError::Status {
        method: "GET".into(),
        url: "u".into(),
        status,
        message: "m".into(),
    };
    assert_eq!(s(503).into_adapter().reason(), "BackendError");
    assert!(s(503).is_transient());
    assert!(!s(400).is_transient());
    assert_eq!(s(400).into_adapter().reason(), "InvalidConfiguration");
    assert_eq!(
        RedfishError::Auth(401).into_adapter().reason(),
        "AuthenticationFailed"
    );
    let tls = RedfishError::Tls {
        endpoint: "https://bmc".into(),
        detail: "invalid peer certificate: UnknownIssuer".into(),
    };
    assert!(tls.to_string().contains("TLS"));
    assert!(!tls.into_adapter().is_transient());
    assert_eq!(
        error_message(br#"{"error":{"message":"boom"}}"#),
        "boom".to_string()
    );
}

#[test]
fn credentials_never_show_in_debug() {
    let cfg = ClientConfig {
        endpoint: "https://bmc".into(),
        username: "admin".into(),
        password: "hunter2".into(),
        ca_pem: None,
        insecure_skip_verify: false,
        requests_per_second: 1,
        max_connections: 1,
        timeout: Duration::from_secs(1),
        attempts: 1,
        auth: RedfishAuth::Auto,
    };
    let text = format!("{cfg:?}");
    assert!(!text.contains("hunter2") && !text.contains("admin"));
}
