//! YAML for the generated CRDs that every YAML reader parses the same way.
//!
//! `serde_norway` writes YAML 1.2, where `On`, `Off`, `yes` or `n` are plain strings, so it leaves
//! them unquoted. Kubernetes' own tooling (kubectl, Helm: sigs.k8s.io/yaml over go-yaml) reads
//! YAML 1.1, where those words are booleans: `enum: [On, Off]` became `[true, false]` on a real
//! kube-apiserver and every ManagedHost status write was refused. serde_norway has no knob for
//! scalar styles, so its output is post-processed here: a plain scalar that is a YAML 1.1
//! boolean word is single-quoted. The result is re-parsed and compared with the input, so the
//! rewrite can never change what a YAML 1.2 reader sees.
use serde::Serialize;

/// Why a resource could not be written as YAML.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The serialiser refused the value.
    #[error("serialising to YAML: {0}")]
    Serialize(#[from] serde_norway::Error),
    /// Quoting YAML 1.1 booleans changed what the document says.
    #[error("quoting YAML 1.1 booleans changed the document (a bug in osprov)")]
    RoundTrip,
}

/// Words YAML 1.1 reads as booleans that YAML 1.2 (serde_norway) leaves plain.
fn yaml11_bool(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// Quotes the plain scalar at the end of one line (`- On`, `key: Off`, `- key: On`) if it needs
/// it. Map keys are left alone: generated CRDs have no YAML 1.1 boolean keys (a test checks).
fn quote_line(line: &str) -> String {
    let value = match line.rsplit_once(": ") {
        Some((_, v)) => v,
        None => match line.trim_start().strip_prefix("- ") {
            Some(v) => v,
            None => return line.to_string(),
        },
    };
    if yaml11_bool(value) {
        format!("{}'{value}'", &line[..line.len() - value.len()])
    } else {
        line.to_string()
    }
}

/// `value` as YAML that YAML 1.1 and YAML 1.2 readers parse identically.
pub fn to_portable_yaml<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let plain = serde_norway::to_string(value)?;
    let mut out = String::with_capacity(plain.len() + 64);
    for line in plain.lines() {
        out.push_str(&quote_line(line));
        out.push('\n');
    }
    let before: serde_norway::Value = serde_norway::from_str(&plain)?;
    let after: serde_norway::Value = serde_norway::from_str(&out)?;
    if before != after {
        return Err(YamlError::RoundTrip);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_booleans_are_quoted_and_nothing_else_changes() {
        let doc = serde_json::json!({
            "enum": ["On", "Off", "Unknown", null],
            "flag": "yes",
            "text": "Power is On",
            "multi": "line one\nOn\n",
            "n": 3,
            "real": true,
            "items": [{"state": "Off"}],
        });
        let y = to_portable_yaml(&doc).expect("yaml");
        assert!(y.contains("- 'On'\n") && y.contains("- 'Off'\n"), "{y}");
        assert!(y.contains("flag: 'yes'\n"), "{y}");
        assert!(y.contains("- state: 'Off'\n"), "{y}");
        assert!(
            y.contains("- Unknown\n") && y.contains("text: Power is On\n"),
            "{y}"
        );
        let back: serde_json::Value = serde_norway::from_str(&y).expect("parses");
        assert_eq!(back, doc);
    }

    #[test]
    fn the_crds_carry_no_plain_yaml11_booleans() {
        for crd in crate::crds() {
            let y = to_portable_yaml(&crd).expect("yaml");
            for line in y.lines() {
                let last = line.rsplit([' ', '-']).next().unwrap_or("");
                assert!(!yaml11_bool(last), "unquoted YAML 1.1 boolean: {line}");
                let key = line.trim_start().trim_start_matches("- ");
                if let Some((k, _)) = key.split_once(':') {
                    assert!(!yaml11_bool(k), "a YAML 1.1 boolean as a key: {line}");
                }
            }
        }
    }
}
