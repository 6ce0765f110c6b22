//! The query options every request carries, checked once before a verb runs, as
//! kube-apiserver decodes them into `CreateOptions`, `UpdateOptions`, `PatchOptions`,
//! `DeleteOptions` and `ListOptions`:
//! - `dryRun` takes `All` only; anything else is refused (422 on the verb's options kind) — never
//!   a real write, which an unrecognised value would otherwise become;
//! - `timeoutSeconds` and `limit` of a list or watch are integers (400, worded as Go's parser).
use super::error::{ApiError, ApiResult, StatusCause};
use super::request::Query;

/// Check `query` for `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
/// `deletecollection`).
pub fn check(verb: &str, query: &Query) -> ApiResult<()> {
    let options = match verb {
        "create" => Some("CreateOptions"),
        "update" => Some("UpdateOptions"),
        "patch" => Some("PatchOptions"),
        "delete" | "deletecollection" => Some("DeleteOptions"),
        _ => None,
    };
    if let (Some(kind), Some(value)) = (options, query.get("dryRun")) {
        if value != "All" {
            return Err(ApiError::invalid(
                &format!("{kind}.meta.k8s.io"),
                "meta.k8s.io",
                kind,
                "",
                vec![StatusCause {
                    reason: "FieldValueNotSupported".into(),
                    field: "dryRun".into(),
                    message: format!("Unsupported value: [{value:?}]: supported values: \"All\""),
                }],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    #[test]
    fn dry_run_takes_all_only_on_writes() {
        assert!(check("create", &q("dryRun=All")).is_ok());
        let e = check("create", &q("dryRun=Bogus")).expect_err("refused");
        assert_eq!(e.code, 422);
        assert!(check("patch", &q("dryRun=true")).is_err());
        assert!(check("delete", &q("dryRun=x")).is_err());
        // Reads ignore it, as kube-apiserver's GetOptions has no dryRun.
        assert!(check("get", &q("dryRun=x")).is_ok());
    }

    #[test]
    fn list_numbers_are_integers() {
        assert!(check("list", &q("limit=5&timeoutSeconds=30")).is_ok());
        assert_eq!(
            check("watch", &q("timeoutSeconds=abc"))
                .expect_err("refused")
                .code,
            400
        );
        assert_eq!(
            check("list", &q("limit=abc")).expect_err("refused").code,
            400
        );
        assert!(check("get", &q("limit=abc")).is_ok());
    }
}
