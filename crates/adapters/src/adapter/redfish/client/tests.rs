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

/// A configuration for `endpoint` with this account and no TLS settings.
fn config(endpoint: &str, username: &str, password: &str) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.into(),
        username: username.into(),
        password: password.into(),
        ca_pem: None,
        fingerprint: None,
        insecure_skip_verify: false,
        requests_per_second: 1,
        max_connections: 1,
        timeout: Duration::from_secs(1),
        attempts: 1,
        auth: RedfishAuth::Auto,
    }
}

#[test]
fn credentials_never_show_in_debug() {
    let cfg = config("https://bmc", "admin", "hunter2");
    let text = format!("{cfg:?}");
    assert!(!text.contains("hunter2") && !text.contains("admin"));
}

#[test]
fn requests_stay_on_the_services_origin() {
    let c = Client::new(config("https://bmc-1.example.net:8443/", "u", "p")).expect("client");
    assert_eq!(
        c.target("/redfish/v1/Systems").ok().as_deref(),
        Some("https://bmc-1.example.net:8443/redfish/v1/Systems")
    );
    assert!(c
        .target("https://BMC-1.example.net:8443/redfish/v1/SessionService/Sessions/1")
        .is_ok());
    for elsewhere in [
        "https://collector.example.org/redfish/v1/Sessions",
        "http://bmc-1.example.net:8443/redfish/v1/Sessions",
        "https://bmc-1.example.net/redfish/v1/Sessions",
        "https://bmc-1.example.net:8443@evil.example/x",
    ] {
        let e = c.target(elsewhere).expect_err(elsewhere);
        assert!(e.to_string().contains("outside its own origin"), "{e}");
    }
}
