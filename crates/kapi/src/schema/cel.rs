//! CEL validation rules (`x-kubernetes-validations`) on top of the `cel` crate: rules are compiled
//! once with the schema, evaluated with `self` (and `oldSelf` for transition rules, only when the
//! correlated old value exists) bound to the value at the rule's schema node, converted to CEL
//! values the way Kubernetes types them (integer → int, number → double, objects → maps).
//! A false rule is reported as kube-apiserver (1.36) does: `Invalid value: "<value>": <message>`
//! on a scalar, `Invalid value: <message>` on an object or array, or, with a `reason`, as
//! `Forbidden`, `Required value` or `Duplicate value` causes; a rule that cannot be evaluated
//! as `Invalid value: "object": <error> evaluating rule: …` (the node's type); `fieldPath` is
//! appended to the node's path. `messageExpression` is evaluated and used when it yields a
//! non-empty string. Not provided: cost estimation/limits and the Kubernetes-specific CEL
//! libraries (quantity, url, ip, format), `format`-typed values (date-time → timestamp), the
//! escaping of property names that are CEL keywords or contain `-`/`.`/`/` (`__dash__`…), and
//! `optionalOldSelf`; the string extension library is available.

use std::collections::HashMap;
use std::sync::Arc;

use ::cel::common::value::Val;
use ::cel::{Context, Env, Program, Value as CelValue};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
use serde_json::Value;

use super::report::{cause, show, Kind};
use super::{child_path, Cause, Node, SchemaError};

/// One compiled `x-kubernetes-validations` entry.
pub(crate) struct Rule {
    env: Arc<Env>,
    source: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
    reason: Option<String>,
    field_path: Option<String>,
    transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("rule", &self.source)
            .finish_non_exhaustive()
    }
}

fn new_env() -> Result<Arc<Env>, String> {
    let mut env = Env::stdlib();
    env.add_extension(::cel::extensions::strings)
        .map_err(|e| format!("{e:?}"))?;
    Ok(Arc::new(env))
}

pub(super) fn compile_rules(
    rules: Option<&[ValidationRule]>,
    path: &str,
) -> Result<Vec<Rule>, SchemaError> {
    let rules = match rules {
        Some(r) if !r.is_empty() => r,
        _ => return Ok(Vec::new()),
    };
    let err = |index: usize, message: String| SchemaError::Cel {
        path: path.to_string(),
        index,
        message,
    };
    let env = new_env().map_err(|m| err(0, m))?;
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let program = env.compile(&r.rule).map_err(|e| err(i, e.to_string()))?;
            let message_expression = match r.message_expression.as_deref().filter(|m| !m.is_empty())
            {
                Some(m) => Some(
                    env.compile(m)
                        .map_err(|e| err(i, format!("messageExpression: {e}")))?,
                ),
                None => None,
            };
            let transition = program.references().has_variable("oldSelf");
            Ok(Rule {
                env: env.clone(),
                source: r.rule.clone(),
                program,
                message: r.message.clone().filter(|m| !m.is_empty()),
                message_expression,
                reason: r.reason.clone().filter(|m| !m.is_empty()),
                field_path: r.field_path.clone().filter(|m| !m.is_empty()),
                transition,
            })
        })
        .collect()
}

/// Converts a JSON value to CEL following the schema's types.
fn to_cel(v: &Value, node: Option<&Node>, is_root: bool) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Number(n) => {
            let wants_double = node.and_then(|n| n.type_.as_deref()) == Some("number");
            match n.as_i64() {
                Some(i) if !wants_double => CelValue::Int(i),
                _ => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Value::Array(items) => {
            let item_node = node.and_then(|n| n.items.as_deref());
            CelValue::List(Arc::new(
                items.iter().map(|i| to_cel(i, item_node, false)).collect(),
            ))
        }
        Value::Object(map) => {
            let mut out: HashMap<String, CelValue> = HashMap::new();
            for (k, child) in map {
                if is_root && k == "metadata" {
                    // Only name and generateName of the root metadata are visible to rules.
                    let mut meta: HashMap<String, CelValue> = HashMap::new();
                    for f in ["name", "generateName"] {
                        if let Some(s) = child.get(f) {
                            meta.insert(f.to_string(), to_cel(s, None, false));
                        }
                    }
                    out.insert(k.clone(), CelValue::from(meta));
                    continue;
                }
                let sub = node.and_then(|n| n.properties.get(k).or(n.additional.as_deref()));
                out.insert(k.clone(), to_cel(child, sub, false));
            }
            CelValue::from(out)
        }
    }
}

/// Renders a rule's `fieldPath` (`.a.b`, `.a['b.c']`, `.list[0]`) onto `base`.
fn join_field_path(base: &str, field_path: &str) -> String {
    let mut out = base.to_string();
    let mut rest = field_path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out = child_path(&out, &r[..end]);
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            let inner = r[..end].trim_matches(|c| c == '\'' || c == '"');
            out = format!("{out}[{inner}]");
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            out = child_path(&out, rest);
            break;
        }
    }
    out
}

fn bind(ctx: &mut Context<'_, '_>, name: &str, v: &CelValue) -> Result<(), ::cel::ExecutionError> {
    let val: Box<dyn Val> = v.clone().try_into()?;
    ctx.add_variable_as_val(name, val);
    Ok(())
}

/// Evaluates the CEL rules of `node` on `v`.
pub(super) fn eval_rules(
    node: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    is_root: bool,
    out: &mut Vec<Cause>,
) {
    if node.rules.is_empty() {
        return;
    }
    let type_shown = format!("{:?}", node.type_.as_deref().unwrap_or(""));
    let self_val = to_cel(v, Some(node), is_root);
    let old_val = old.map(|o| to_cel(o, Some(node), is_root));
    for rule in &node.rules {
        if rule.transition && old_val.is_none() {
            continue;
        }
        let field = match &rule.field_path {
            Some(fp) => join_field_path(path, fp),
            None => path.to_string(),
        };
        // Bind variables through the fallible conversion (cel's convenience binder unwraps).
        let mut ctx = Context::with_env(rule.env.clone());
        let bound = bind(&mut ctx, "self", &self_val).and_then(|()| match &old_val {
            Some(o) => bind(&mut ctx, "oldSelf", o),
            None => Ok(()),
        });
        if let Err(e) = bound {
            let detail = format!("{e} evaluating rule: {}", rule.source);
            out.push(cause(Kind::Invalid, &field, Some(&type_shown), &detail));
            continue;
        }
        match rule.program.execute(&ctx) {
            Ok(CelValue::Bool(true)) => {}
            Ok(CelValue::Bool(false)) => {
                let message = rule
                    .message_expression
                    .as_ref()
                    .and_then(|m| match m.execute(&ctx) {
                        Ok(CelValue::String(s)) if !s.trim().is_empty() => Some(s.to_string()),
                        _ => None,
                    })
                    .or_else(|| rule.message.clone())
                    .unwrap_or_else(|| format!("failed rule: {}", rule.source));
                let kind = match rule.reason.as_deref() {
                    Some("FieldValueForbidden") => Kind::Forbidden,
                    Some("FieldValueRequired") => Kind::Required,
                    Some("FieldValueDuplicate") => Kind::Duplicate,
                    _ => Kind::Invalid,
                };
                let detail = if matches!(kind, Kind::Duplicate) {
                    ""
                } else {
                    &message
                };
                // The value itself, left out for objects and arrays (`field.OmitValueType`).
                let shown = match node.type_.as_deref() {
                    Some("object" | "array") => None,
                    _ => Some(show(v)),
                };
                out.push(cause(kind, &field, shown.as_deref(), detail));
            }
            Ok(other) => {
                let detail = format!(
                    "rule did not evaluate to a bool: {}: {other:?}",
                    rule.source
                );
                out.push(cause(Kind::Invalid, &field, Some(&type_shown), &detail));
            }
            Err(e) => {
                // kube-apiserver: `no such key: os evaluating rule: <message or rule>`.
                let err = match &e {
                    ::cel::ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
                    other => other.to_string(),
                };
                let what = rule.message.as_deref().unwrap_or(&rule.source);
                let detail = format!("{err} evaluating rule: {what}");
                out.push(cause(Kind::Invalid, &field, Some(&type_shown), &detail));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::join_field_path;

    #[test]
    fn field_path_rendering() {
        assert_eq!(join_field_path("spec", ".host"), "spec.host");
        assert_eq!(join_field_path("spec", ".a['b.c'].d"), "spec.a[b.c].d");
        assert_eq!(join_field_path("", ".list[0]"), "list[0]");
    }
}
