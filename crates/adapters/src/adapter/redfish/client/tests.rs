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

/// One of each kind of error.
fn every_error() -> Vec<RedfishError> {
    let url = || "https://bmc/redfish/v1".to_string();
    let status = |status| RedfishError::Status {
        method: "GET".into(),
        url: url(),
        status,
        message: String::new(),
    };
    vec![
        RedfishError::Auth(401),
        RedfishError::AuthCoolDown(Duration::from_secs(1)),
        RedfishError::Tls {
            endpoint: url(),
            detail: String::new(),
        },
        RedfishError::Connect {
            url: url(),
            detail: String::new(),
        },
        RedfishError::Timeout {
            method: "GET".into(),
            url: url(),
        },
        status(403),
        status(404),
        status(429),
        status(503),
        RedfishError::Invalid {
            url: url(),
            detail: String::new(),
        },
        RedfishError::TaskFailed {
            url: url(),
            state: "Exception".into(),
            message: String::new(),
        },
        RedfishError::Config(String::new()),
        RedfishError::Unsupported(String::new()),
        RedfishError::Store(String::new()),
        RedfishError::RecordLost(String::new()),
        RedfishError::SessionExpired,
    ]
}

#[test]
fn transient_is_decided_once_and_the_engine_agrees() {
    for e in every_error() {
        let here = e.is_transient();
        let text = e.to_string();
        let engine = e.into_adapter();
        assert_eq!(engine.is_transient(), here, "{text} → {engine:?}");
    }
}

#[test]
fn a_backend_failure_keeps_the_redfish_error_as_its_source() {
    use std::error::Error as _;
    let e = RedfishError::Status {
        method: "POST".into(),
        url: "https://bmc/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".into(),
        status: 503,
        message: "busy".into(),
    }
    .into_adapter();
    let source = e.source().expect("a source");
    assert!(
        matches!(
            source.downcast_ref::<RedfishError>(),
            Some(RedfishError::Status { status: 503, .. })
        ),
        "{source:?}"
    );
}
