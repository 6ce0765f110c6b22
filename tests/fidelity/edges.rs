//! The corpus, part three: what real clients send that the hand-written parts missed (issue 25's
//! classes): bodies without `apiVersion`/`kind` (the official Python client's creates), invalid
//! query parameter values, invalid label keys and values, wrongly typed `DeleteOptions`.
use serde_json::json;

use super::builtins::S;
use super::call::*;
use super::writes::{ospr, R};

pub fn edges() -> Vec<Call> {
    let labelled = |name: &str, labels: serde_json::Value| {
        let mut v = ospr(name, "h1", "ubuntu");
        v["metadata"]["labels"] = labels;
        v.to_string()
    };
    vec![
        post(
            "edge: secret without apiVersion and kind",
            S,
            json!({"metadata": {"name": "s-nokind"}, "stringData": {"a": "b"}}).to_string(),
        ),
        post(
            "edge: request without apiVersion and kind",
            R,
            json!({"metadata": {"name": "nokind"}, "spec": {"host": "h1", "os": "x"}}).to_string(),
        ),
        post(
            "edge: request with only kind",
            R,
            json!({"kind": "OSProvisioningRequest", "metadata": {"name": "onlykind"},
                   "spec": {"host": "h1", "os": "x"}})
            .to_string(),
        ),
        post(
            "edge: create with dryRun=Bogus",
            format!("{R}?dryRun=Bogus"),
            ospr("dry-bogus", "h1", "x").to_string(),
        ),
        get("edge: get after a bogus dryRun", format!("{R}/dry-bogus")),
        get(
            "edge: list with timeoutSeconds=abc",
            format!("{R}?timeoutSeconds=abc"),
        ),
        get("edge: list with limit=abc", format!("{R}?limit=abc")),
        post(
            "edge: label key with a space",
            R,
            labelled("lbl1", json!({"bad key": "v"})),
        ),
        post(
            "edge: label value too long",
            R,
            labelled("lbl2", json!({"k": "v".repeat(64)})),
        ),
        post(
            "edge: label value with a slash",
            R,
            labelled("lbl3", json!({"k": "a/b"})),
        ),
        post(
            "edge: label prefix not a DNS subdomain",
            R,
            labelled("lbl4", json!({"Bad_Prefix/k": "v"})),
        ),
        post(
            "edge: object to delete",
            R,
            ospr("del-typed", "h1", "x").to_string(),
        ),
        delete_with(
            "edge: DeleteOptions with a string gracePeriodSeconds",
            format!("{R}/del-typed"),
            json!({"gracePeriodSeconds": "soon"}).to_string(),
        ),
        get(
            "edge: get after the refused delete",
            format!("{R}/del-typed"),
        ),
        get("edge: Accept application/xml", format!("{R}/del-typed")).accept("application/xml"),
        get("edge: Accept text/plain", format!("{R}/del-typed")).accept("text/plain"),
        get("edge: Accept xml, then json", format!("{R}/del-typed"))
            .accept("application/xml, application/json;q=0.9"),
        get("edge: Accept anything", format!("{R}/del-typed")).accept("*/*"),
        get("edge: Accept a list of xml", R).accept("application/xml"),
        patch(
            "edge: apply whose body names another object",
            format!("{R}/del-typed?fieldManager=edge"),
            "application/apply-patch+yaml",
            ospr("someone-else", "h1", "x").to_string(),
        ),
        merge(
            "edge: merge patch setting a label to a number",
            format!("{R}/del-typed"),
            json!({"metadata": {"labels": {"n": 5}}}).to_string(),
        ),
        post(
            "edge: create with a null label value",
            R,
            labelled("lbl6", json!({"k": null})),
        ),
        post(
            "edge: create whose labels are not strings",
            R,
            labelled("lbl5", json!({"k": 5})),
        ),
    ]
}
