//! A request's own configuration: the user-data, network-config and meta-data Secrets it names,
//! read from the request's namespace and checked before an attempt starts, then resolved into
//! the [`HostConfig`] the adapter renders on the operation's config drive.
//!
//! The checks are what makes a bad reference a reason instead of a broken install: a missing
//! Secret or key is `ConfigurationMissing`, content cloud-init could not use (network-config or
//! meta-data that is not a YAML mapping) is `ConfigurationInvalid`; both keep the request
//! Pending until the Secret is fixed, and nothing touches the host meanwhile. Messages name the
//! Secret and the key, never their contents.
use crate::adapter::{DriveFormat, HostConfig};
use crate::api::conditions::reason;
use crate::api::{ConfigDriveFormat, ConfigSecretRef, OSProvisioningRequestSpec};
use crate::provisioner::plan::ConfigLookup;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::{Map, Value};

/// Why a request's configuration cannot be used (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub reason: &'static str,
    pub message: String,
}

/// True when the request asks for configuration of its own.
pub fn requested(spec: &OSProvisioningRequestSpec) -> bool {
    spec.user_data.is_some()
        || spec.network_data.is_some()
        || spec.meta_data.is_some()
        || spec.hostname.is_some()
        || spec.config_drive.is_some()
}

/// The config drive's convention the request asks for.
pub fn format(spec: &OSProvisioningRequestSpec) -> DriveFormat {
    match spec.config_drive.unwrap_or_default() {
        ConfigDriveFormat::NoCloud => DriveFormat::NoCloud,
        ConfigDriveFormat::Oemdrv => DriveFormat::Oemdrv,
    }
}

/// The planner's view of the request's configuration.
pub async fn lookup(
    client: &Client,
    ns: &str,
    spec: &OSProvisioningRequestSpec,
) -> Result<ConfigLookup, kube::Error> {
    if !requested(spec) {
        return Ok(ConfigLookup::NotRequested);
    }
    Ok(match resolve(client, ns, spec, "check").await? {
        Ok(_) => ConfigLookup::Ready,
        Err(u) => ConfigLookup::Unusable {
            reason: u.reason,
            message: u.message,
        },
    })
}

/// The configuration for the attempt with `token`. The outer error is the API's (transient);
/// the inner one a reason for the request.
pub async fn resolve(
    client: &Client,
    ns: &str,
    spec: &OSProvisioningRequestSpec,
    token: &str,
) -> Result<Result<HostConfig, Unusable>, kube::Error> {
    let mut config = HostConfig {
        instance_id: instance_id(token),
        hostname: spec.hostname.clone().unwrap_or_else(|| spec.host.clone()),
        format: format(spec),
        ..HostConfig::default()
    };
    if config.format == DriveFormat::Oemdrv && spec.user_data.is_none() {
        // Anaconda takes the drive for its kickstart: without one it has nothing to read.
        return Ok(Err(Unusable {
            reason: reason::CONFIGURATION_INVALID,
            message: "spec.configDrive OEMDRV carries the kickstart as ks.cfg: name it in \
                      spec.userData"
                .into(),
        }));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(r) = &spec.user_data {
        match read(&secrets, r, "spec.userData", "userData").await? {
            Ok(bytes) => config.user_data = Some(bytes),
            Err(u) => return Ok(Err(u)),
        }
    }
    if let Some(r) = &spec.network_data {
        let bytes = match read(&secrets, r, "spec.networkData", "networkData").await? {
            Ok(b) => b,
            Err(u) => return Ok(Err(u)),
        };
        if let Err(u) = mapping(&bytes, r, "spec.networkData", "networkData") {
            return Ok(Err(u));
        }
        config.network_config = Some(bytes);
    }
    if let Some(r) = &spec.meta_data {
        let bytes = match read(&secrets, r, "spec.metaData", "metaData").await? {
            Ok(b) => b,
            Err(u) => return Ok(Err(u)),
        };
        match mapping(&bytes, r, "spec.metaData", "metaData") {
            Ok(m) => config.meta_data = m,
            Err(u) => return Ok(Err(u)),
        }
    }
    Ok(Ok(config))
}

/// cloud-init's instance id for an attempt: a new one per attempt, without the token's slashes.
pub fn instance_id(token: &str) -> String {
    format!("osprov-{}", token.replace('/', "-"))
}

/// The bytes of `r`'s key (`default_key` unless it names one).
async fn read(
    secrets: &Api<Secret>,
    r: &ConfigSecretRef,
    field: &str,
    default_key: &str,
) -> Result<Result<Vec<u8>, Unusable>, kube::Error> {
    let key = r.key.as_deref().unwrap_or(default_key);
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Err(Unusable {
            reason: reason::CONFIGURATION_MISSING,
            message: format!("Secret {} named by {field} does not exist", r.name),
        }));
    };
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(Ok(v.0.clone()));
    }
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(Ok(v.clone().into_bytes()));
    }
    let keys: Vec<&String> = secret.data.iter().flat_map(|d| d.keys()).collect();
    Ok(Err(Unusable {
        reason: reason::CONFIGURATION_MISSING,
        message: format!(
            "Secret {} named by {field} has no key {key} (its keys: {})",
            r.name,
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }))
}

/// `bytes` as a YAML (or JSON) mapping, as cloud-init needs network-config and meta-data.
fn mapping(
    bytes: &[u8],
    r: &ConfigSecretRef,
    field: &str,
    default_key: &str,
) -> Result<Map<String, Value>, Unusable> {
    let key = r.key.as_deref().unwrap_or(default_key);
    let invalid = |why: String| Unusable {
        reason: reason::CONFIGURATION_INVALID,
        message: format!("key {key} of Secret {} named by {field} {why}", r.name),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text".into()))?;
    match serde_norway::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("is not a YAML mapping".into())),
        // The parser's message can quote the content: only its position is kept.
        Err(e) => Err(invalid(match e.location() {
            Some(l) => format!(
                "is not valid YAML (line {}, column {})",
                l.line(),
                l.column()
            ),
            None => "is not valid YAML".into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> ConfigSecretRef {
        ConfigSecretRef {
            name: name.into(),
            key: None,
        }
    }

    #[test]
    fn a_mapping_is_taken_and_anything_else_is_invalid_without_quoting_it() {
        let m = mapping(
            b"rack: r7\nzone: z\n",
            &r("md"),
            "spec.metaData",
            "metaData",
        )
        .expect("mapping");
        assert_eq!(m["rack"], "r7");
        for bad in [&b"- a\n- b\n"[..], b"secret-value: [unclosed", b"\xff\xfe"] {
            let u = mapping(bad, &r("md"), "spec.metaData", "metaData").expect_err("invalid");
            assert_eq!(u.reason, reason::CONFIGURATION_INVALID);
            assert!(u.message.contains("Secret md") && u.message.contains("key metaData"));
            assert!(!u.message.contains("secret-value"), "{}", u.message);
        }
    }

    #[test]
    fn instance_ids_differ_per_attempt_and_have_no_slashes() {
        assert_eq!(instance_id("u1/2/3"), "osprov-u1-2-3");
        assert_ne!(instance_id("u1/2/3"), instance_id("u1/2/4"));
    }

    #[test]
    fn only_a_named_secret_or_hostname_asks_for_configuration() {
        let mut spec = OSProvisioningRequestSpec {
            host: "h".into(),
            os: "o".into(),
            ..Default::default()
        };
        assert!(!requested(&spec));
        spec.hostname = Some("web-1".into());
        assert!(requested(&spec));
    }
}
