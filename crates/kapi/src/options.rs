//! The query options every request carries, checked once before a verb runs, as
//! kube-apiserver decodes them into `CreateOptions`, `UpdateOptions`, `PatchOptions`,
//! `DeleteOptions` and `ListOptions`:
//! - `dryRun` takes `All` only (every value of it); anything else is refused (422 on the verb's
//!   options kind) — never a real write, which an unrecognised value would otherwise become;
//! - `force` only on a server-side apply;
//! - `fieldManager` of a write is at most 128 printable characters, and `fieldValidation` one
//!   of `Ignore`, `Warn` and `Strict` (422, every bad option one cause of the same answer);
//! - `timeoutSeconds` and `limit` of a list or watch are integers (400, worded as Go's parser).
use super::error::{ApiError, ApiResult, StatusCause};
use super::request::Query;

const FIELD_MANAGER_MAX: usize = 128;

/// Check `query` for `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
/// `deletecollection`); `apply` when the patch is a server-side apply (the only one that takes
/// `force`).
pub fn check(verb: &str, query: &Query, apply: bool) -> ApiResult<()> {
    let options = match verb {
        "create" => Some("CreateOptions"),
        "update" => Some("UpdateOptions"),
        "patch" => Some("PatchOptions"),
        "delete" | "deletecollection" => Some("DeleteOptions"),
        _ => None,
    };
    if let Some(kind) = options {
        let mut causes = Vec::new();
        if kind == "PatchOptions" && !apply && query.get("force").is_some() {
            causes.push(StatusCause {
                reason: "FieldValueForbidden".into(),
                field: "force".into(),
                message: "Forbidden: may not be specified for non-apply patch".into(),
            });
        }
        causes.extend(dry_run(query));
        if kind != "DeleteOptions" {
            causes.extend(write_options(query));
        }
        if kind == "PatchOptions" && apply && query.get("fieldManager").is_none() {
            causes.push(StatusCause {
                reason: "FieldValueRequired".into(),
                field: "fieldManager".into(),
                message: "Required value: is required for apply patch".into(),
            });
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                &format!("{kind}.meta.k8s.io"),
                "meta.k8s.io",
                kind,
                "",
                causes,
            ));
        }
    }
    if matches!(verb, "list" | "watch" | "deletecollection") {
        for name in ["timeoutSeconds", "limit"] {
            if let Some(v) = query.get(name) {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "strconv.ParseInt: parsing {v:?}: invalid syntax"
                    ))
                })?;
            }
        }
    }
    Ok(())
}

fn dry_run(query: &Query) -> Vec<StatusCause> {
    let values = query.all("dryRun");
    if values.iter().all(|v| v == "All") {
        return Vec::new();
    }
    vec![StatusCause {
        reason: "FieldValueNotSupported".into(),
        field: "dryRun".into(),
        message: format!("Unsupported value: {values:?}: supported values: \"All\""),
    }]
}

/// `fieldManager` and `fieldValidation` of a create, update or patch.
fn write_options(query: &Query) -> Vec<StatusCause> {
    let mut out = Vec::new();
    if let Some(manager) = query.get("fieldManager") {
        if manager.chars().count() > FIELD_MANAGER_MAX {
            out.push(StatusCause {
                reason: "FieldValueTooLong".into(),
                field: "fieldManager".into(),
                message: format!("Too long: may not be more than {FIELD_MANAGER_MAX} bytes"),
            });
        }
        if manager.chars().any(char::is_control) {
            out.push(StatusCause {
                reason: "FieldValueInvalid".into(),
                field: "fieldManager".into(),
                message: format!(
                    "Invalid value: {manager:?}: FieldManager must only contain printable characters"
                ),
            });
        }
    }
    if let Some(v) = query.get("fieldValidation") {
        if !matches!(v, "Ignore" | "Warn" | "Strict") {
            out.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                field: "fieldValidation".into(),
                message: format!(
                    "Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    #[test]
    fn dry_run_takes_all_only_on_writes() {
        assert!(check("create", &q("dryRun=All"), false).is_ok());
        let e = check("create", &q("dryRun=Bogus"), false).expect_err("refused");
        assert_eq!(e.code, 422);
        assert!(check("patch", &q("dryRun=true"), false).is_err());
        assert!(check("delete", &q("dryRun=x"), false).is_err());
        // Reads ignore it, as kube-apiserver's GetOptions has no dryRun.
        assert!(check("get", &q("dryRun=x"), false).is_ok());
    }

    #[test]
    fn every_bad_write_option_is_one_cause_of_one_answer() {
        let fields = |raw: &str| -> Vec<String> {
            check("update", &q(raw), false)
                .err()
                .map(|e| e.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default()
        };
        assert!(fields("dryRun=All&fieldValidation=Strict&fieldManager=me").is_empty());
        assert_eq!(fields("dryRun=All&dryRun="), ["dryRun"]);
        assert_eq!(
            fields("dryRun=x&fieldValidation=bogus"),
            ["dryRun", "fieldValidation"]
        );
        assert_eq!(
            fields(&format!("fieldManager={}", "m".repeat(129))),
            ["fieldManager"]
        );
        assert_eq!(fields("fieldManager=a%7F"), ["fieldManager"]);
        // A repeated parameter counts by its first value, as Go's url.Values.Get reads it.
        assert!(fields("fieldValidation=Strict&fieldValidation=bogus").is_empty());
    }

    #[test]
    fn list_numbers_are_integers() {
        assert!(check("list", &q("limit=5&timeoutSeconds=30"), false).is_ok());
        assert_eq!(
            check("watch", &q("timeoutSeconds=abc"), false)
                .expect_err("refused")
                .code,
            400
        );
        assert_eq!(
            check("list", &q("limit=abc"), false)
                .expect_err("refused")
                .code,
            400
        );
        assert!(check("get", &q("limit=abc"), false).is_ok());
    }
}
