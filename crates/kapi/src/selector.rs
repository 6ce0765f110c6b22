//! Label and field selectors (B4).
//!
//! Hand-written: the grammar is small (Kubernetes `labels.Parse`: `=`, `==`, `!=`, `in`, `notin`,
//! exists, `!`exists, `>`/`<`; field selectors: `=`, `==`, `!=` on known field paths) and no
//! maintained crate implements Kubernetes' exact syntax.
use serde_json::Value;

use super::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(key, op)| match op {
            Op::Eq(v) => get(key) == Some(v.as_str()),
            Op::NotEq(v) => get(key) != Some(v.as_str()),
            Op::In(vs) => get(key).is_some_and(|l| vs.iter().any(|v| v == l)),
            Op::NotIn(vs) => get(key).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Op::Exists => get(key).is_some(),
            Op::NotExists => get(key).is_none(),
            Op::Gt(n) => get(key)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Op::Lt(n) => get(key)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn bad(s: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: found '{s}', expected: valid label selector"
    ))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' and '.', alphanumeric at both ends.
fn valid_value(v: &str) -> bool {
    let ok_ends = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ok_ends(v.chars().next())
        && ok_ends(v.chars().last())
}

fn check_values(key: &str, values: &[String]) -> ApiResult<()> {
    match values.iter().position(|v| !valid_value(v)) {
        None => Ok(()),
        Some(i) => Err(ApiError::bad_request(format!(
            "unable to parse requirement: values[{i}][{key}]: Invalid value: {:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            values[i]
        ))),
    }
}

fn value_list(s: &str) -> ApiResult<Vec<String>> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(s))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_requirement(part: &str) -> ApiResult<(String, Op)> {
    if let Some(k) = part.strip_prefix('!') {
        let k = k.trim();
        return if valid_key(k) {
            Ok((k.to_string(), Op::NotExists))
        } else {
            Err(bad(part))
        };
    }
    for (tok, kind) in [("!=", 0), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
        if let Some((k, v)) = part.split_once(tok) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) {
                return Err(bad(part));
            }
            if kind < 2 {
                check_values(k, &[v.to_string()])?;
            }
            let op = match kind {
                0 => Op::NotEq(v.to_string()),
                1 => Op::Eq(v.to_string()),
                2 => Op::Gt(v.parse().map_err(|_| bad(part))?),
                _ => Op::Lt(v.parse().map_err(|_| bad(part))?),
            };
            return Ok((k.to_string(), op));
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        if let Some(list) = rest.strip_prefix("notin") {
            let values = value_list(list)?;
            check_values(words[0], &values)?;
            return Ok((words[0].to_string(), Op::NotIn(values)));
        }
        if let Some(list) = rest.strip_prefix("in") {
            let values = value_list(list)?;
            check_values(words[0], &values)?;
            return Ok((words[0].to_string(), Op::In(values)));
        }
        return Err(bad(part));
    }
    if valid_key(part) {
        Ok((part.to_string(), Op::Exists))
    } else {
        Err(bad(part))
    }
}

/// A field selector restricted to the fields a kind supports.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// `allowed` lists the field paths this kind can be selected by.
    pub fn parse(s: &str, allowed: &[&str]) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !allowed.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The exact name asked for with `metadata.name=`, if any.
    pub fn name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, value)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_grammar() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "x", "n": "5"}}});
        for (sel, want) in [
            ("a=1", true),
            ("a==1,b=x", true),
            ("a!=1", false),
            ("b in (x, y)", true),
            ("b notin (x)", false),
            ("c notin (x)", true),
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("n>4", true),
            ("n<4", false),
            ("a in (2),b", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn fields() {
        let o =
            json!({"metadata": {"name": "n", "namespace": "d"}, "involvedObject": {"kind": "K"}});
        let allowed = ["metadata.name", "metadata.namespace", "involvedObject.kind"];
        assert!(
            FieldSelector::parse("metadata.name=n,involvedObject.kind==K", &allowed)
                .unwrap()
                .matches(&o)
        );
        assert!(!FieldSelector::parse("metadata.namespace!=d", &allowed)
            .unwrap()
            .matches(&o));
        assert!(FieldSelector::parse("spec.x=1", &allowed).is_err());
    }
}
