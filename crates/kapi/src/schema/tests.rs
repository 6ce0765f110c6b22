//! Unit tests of pruning, defaulting and validation against a CRD-like schema.

use serde_json::{json, Value};

use super::{Cause, ListType, StructuralSchema};

/// A realistic osprov-like CRD schema.
pub(crate) fn crd_schema() -> Value {
    let images = json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 2},
                "url": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "self.startsWith('https://')", "messageExpression": "'url must be https, got ' + self",
                     "reason": "FieldValueForbidden"}
                ]},
                "arch": {"type": "string", "default": "amd64"},
                "pinned": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}
            }
        }
    });
    json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["host"],
                "x-kubernetes-validations": [
                    {"rule": "!has(self.os) || self.os != 'tiny' || (has(self.maxConcurrent) && self.maxConcurrent <= 10)", "message": "tiny OS allows at most 10"},
                    {"rule": "!has(self.host) || self.host == oldSelf.host", "message": "host is immutable", "fieldPath": ".host"}
                ],
                "properties": {
                    "host": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 20},
                    "os": {"type": "string", "enum": ["linux", "tiny", "bsd"]},
                    "maxConcurrent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                    "ratio": {"type": "number", "exclusiveMinimum": true, "minimum": 0, "multipleOf": 0.5},
                    "port": {"x-kubernetes-int-or-string": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}, "maxProperties": 2},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                              "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 3, "minItems": 1},
                    "note": {"type": "string", "nullable": true},
                    "tuning": {"type": "object", "default": {}, "properties": {
                        "level": {"type": "integer", "default": 3},
                        "mode": {"type": "string"}
                    }},
                    "optional": {"type": "object", "properties": {"depth": {"type": "integer", "default": 2}}},
                    "mac": {"type": "string", "format": "mac"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "selector": {"type": "object", "x-kubernetes-map-type": "atomic",
                                 "properties": {"a": {"type": "string"}, "b": {"type": "string"}}},
                    "images": images
                }
            },
            "status": {
                "type": "object",
                "properties": {
                    "phase": {"type": "string"},
                    "conditions": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["type"],
                        "items": {"type": "object", "required": ["type", "status"], "properties": {
                            "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                            "reason": {"type": "string"}, "observedGeneration": {"type": "integer", "format": "int64"}
                        }}
                    }
                }
            }
        }
    })
}

pub(crate) fn schema() -> StructuralSchema {
    let props = serde_json::from_value(crd_schema()).expect("schema json");
    StructuralSchema::new(&props).expect("compiles")
}

fn obj(spec: Value) -> Value {
    json!({"apiVersion": "osprov.io/v1alpha1", "kind": "Host", "metadata": {"name": "h1", "weird": 1}, "spec": spec})
}

fn causes(spec: Value) -> Vec<Cause> {
    schema().validate(&obj(spec), None)
}

fn one(spec: Value) -> Cause {
    let c = causes(spec);
    assert_eq!(c.len(), 1, "expected one cause, got {c:#?}");
    c[0].clone()
}

#[test]
fn schema_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<StructuralSchema>();
}

#[test]
fn bad_regex_and_bad_cel_are_errors() {
    let bad: Vec<Value> = vec![
        json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}),
        json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a ==="}]}),
        json!({"type": "array", "x-kubernetes-list-type": "map"}),
        json!({"type": "array", "x-kubernetes-list-type": "bag"}),
    ];
    for b in bad {
        let props = serde_json::from_value(b.clone()).expect("json");
        assert!(StructuralSchema::new(&props).is_err(), "{b}");
    }
}

#[test]
fn prune_nested_arrays_additional_and_preserved() {
    let s = schema();
    let mut o = obj(json!({
        "host": "a", "bogus": 1,
        "images": [{"name": "x", "junk": true}, {"name": "y"}],
        "labels": {"any": "thing"},
        "extra": {"free": {"deep": 1}, "known": {"a": "b", "dropme": 1}},
    }));
    o["status"] = json!({"phase": "Ready", "nope": 2});
    o["topLevel"] = json!(1);
    let mut dropped = s.prune(&mut o);
    dropped.sort();
    assert_eq!(
        dropped,
        vec![
            "spec.bogus",
            "spec.extra.known.dropme",
            "spec.images[0].junk",
            "status.nope",
            "topLevel"
        ]
    );
    assert_eq!(
        o["metadata"],
        json!({"name": "h1", "weird": 1}),
        "metadata untouched"
    );
    assert_eq!(o["spec"]["labels"], json!({"any": "thing"}));
    assert_eq!(o["spec"]["extra"]["free"], json!({"deep": 1}));
    assert_eq!(o["spec"]["images"][0], json!({"name": "x"}));
    assert_eq!(o["apiVersion"], "osprov.io/v1alpha1");
}

#[test]
fn prune_object_without_properties_empties_it() {
    let props =
        serde_json::from_value(json!({"type": "object", "properties": {"o": {"type": "object"}}}))
            .expect("json");
    let s = StructuralSchema::new(&props).expect("compiles");
    let mut v = json!({"o": {"a": 1}});
    assert_eq!(s.prune(&mut v), vec!["o.a".to_string()]);
    assert_eq!(v, json!({"o": {}}));
}

#[test]
fn defaults_nested_items_and_no_missing_parents() {
    let s = schema();
    let mut o =
        obj(json!({"host": "a", "images": [{"name": "x"}, {"name": "y", "arch": "arm64"}]}));
    s.apply_defaults(&mut o);
    assert_eq!(o["spec"]["maxConcurrent"], json!(1));
    // `tuning` has a default of {} and the defaults inside it apply too.
    assert_eq!(o["spec"]["tuning"], json!({"level": 3}));
    // `optional` has no default: not created, so its child default does not appear.
    assert!(o["spec"].get("optional").is_none());
    assert_eq!(o["spec"]["images"][0]["arch"], "amd64");
    assert_eq!(o["spec"]["images"][1]["arch"], "arm64");
    // status has no defaults and is not created.
    assert!(o.get("status").is_none());
    // Existing parent without default gets its children defaulted.
    let mut o2 = obj(json!({"host": "a", "optional": {}, "maxConcurrent": 7}));
    s.apply_defaults(&mut o2);
    assert_eq!(o2["spec"]["optional"], json!({"depth": 2}));
    assert_eq!(o2["spec"]["maxConcurrent"], json!(7));
}

#[test]
fn defaults_and_nulls() {
    let s = schema();
    let mut o = obj(json!({"host": "a", "maxConcurrent": null, "note": null, "os": null}));
    s.apply_defaults(&mut o);
    assert_eq!(
        o["spec"]["maxConcurrent"],
        json!(1),
        "non-nullable null gets the default"
    );
    assert_eq!(o["spec"]["note"], Value::Null, "nullable null is kept");
    assert!(
        o["spec"].get("os").is_none(),
        "non-nullable null without default is dropped"
    );
    assert!(
        s.validate(&o, None).is_empty(),
        "{:?}",
        s.validate(&o, None)
    );
}

#[test]
fn valid_object_has_no_causes() {
    let c = causes(
        json!({"host": "node-1", "os": "linux", "maxConcurrent": 5, "ratio": 1.5, "port": "http",
        "labels": {"a": "b"}, "tags": ["x", "y"], "mac": "aa:bb:cc:dd:ee:ff",
        "images": [{"name": "img", "url": "https://x"}]}),
    );
    assert!(c.is_empty(), "{c:#?}");
}

#[test]
fn pattern_wording() {
    let c = one(json!({"host": "Bad_Host"}));
    assert_eq!(c.reason, "FieldValueInvalid");
    assert_eq!(c.field, "spec.host");
    assert_eq!(
        c.message,
        r#"Invalid value: "Bad_Host": spec.host in body should match '^[a-z0-9-]+$'"#
    );
}

#[test]
fn required_wording() {
    let c = one(json!({"os": "linux"}));
    assert_eq!(
        (c.reason.as_str(), c.field.as_str(), c.message.as_str()),
        ("FieldValueRequired", "spec.host", "Required value")
    );
}

#[test]
fn enum_wording() {
    let c = one(json!({"host": "a", "os": "windows"}));
    assert_eq!(c.reason, "FieldValueNotSupported");
    assert_eq!(
        c.message,
        r#"Unsupported value: "windows": supported values: "linux", "tiny", "bsd""#
    );
}

#[test]
fn type_wording() {
    let c = one(json!({"host": "a", "maxConcurrent": "many"}));
    assert_eq!(c.reason, "FieldValueTypeInvalid");
    assert_eq!(c.field, "spec.maxConcurrent");
    assert_eq!(
        c.message,
        r#"Invalid value: "string": spec.maxConcurrent in body must be of type integer: "string""#
    );
    let c = one(json!({"host": "a", "maxConcurrent": 1.5}));
    assert!(
        c.message.ends_with(r#"must be of type integer: "number""#),
        "{}",
        c.message
    );
    let c = one(json!({"host": "a", "os": null}));
    assert!(
        c.message
            .ends_with(r#"spec.os in body must be of type string: "null""#),
        "{}",
        c.message
    );
}

#[test]
fn numeric_bounds() {
    let c = one(json!({"host": "a", "maxConcurrent": 0}));
    assert_eq!(
        c.message,
        "Invalid value: 0: spec.maxConcurrent in body should be greater than or equal to 1"
    );
    let c = one(json!({"host": "a", "maxConcurrent": 101}));
    assert_eq!(
        c.message,
        "Invalid value: 101: spec.maxConcurrent in body should be less than or equal to 100"
    );
    let c = one(json!({"host": "a", "ratio": 0}));
    assert_eq!(
        c.message,
        "Invalid value: 0: spec.ratio in body should be greater than 0"
    );
    let c = one(json!({"host": "a", "ratio": 0.7}));
    assert_eq!(
        c.message,
        "Invalid value: 0.7: spec.ratio in body should be a multiple of 0.5"
    );
}

#[test]
fn string_lengths() {
    let c = one(json!({"host": "a".repeat(21)}));
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        (
            "FieldValueTooLong",
            "Too long: may not be more than 20 bytes"
        )
    );
    let c = one(json!({"host": "a", "labels": {"k": ""}}));
    assert_eq!(c.field, "spec.labels.k");
    assert_eq!(
        c.message,
        r#"Invalid value: "": spec.labels.k in body should be at least 1 chars long"#
    );
}

#[test]
fn items_and_properties_counts() {
    let c = one(json!({"host": "a", "tags": ["a", "b", "c", "d"]}));
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        (
            "FieldValueTooMany",
            "Too many: 4: must have at most 3 items"
        )
    );
    let c = one(json!({"host": "a", "tags": []}));
    assert_eq!(
        c.message,
        "Invalid value: []: spec.tags in body should have at least 1 items"
    );
    let c = one(json!({"host": "a", "labels": {"a": "1", "b": "2", "c": "3"}}));
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        (
            "FieldValueTooMany",
            "Too many: 3: must have at most 2 items"
        )
    );
}

#[test]
fn list_type_uniqueness() {
    let c = one(json!({"host": "a", "tags": ["a", "a"]}));
    assert_eq!(
        (c.reason.as_str(), c.field.as_str(), c.message.as_str()),
        (
            "FieldValueDuplicate",
            "spec.tags[1]",
            r#"Duplicate value: "a""#
        )
    );
    let c = one(json!({"host": "a", "images": [{"name": "aa"}, {"name": "bb"}, {"name": "aa"}]}));
    assert_eq!(c.field, "spec.images[2]");
    assert_eq!(
        c.message,
        r#"Duplicate value: map[string]interface {}{"name":"aa"}"#
    );
}

#[test]
fn nested_paths_in_list_items() {
    let c = causes(
        json!({"host": "a", "images": [{"name": "ok"}, {"url": "https://u"}, {"name": "x"}]}),
    );
    let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["spec.images[1].name", "spec.images[2].name"],
        "{c:#?}"
    );
    let status = json!({"conditions": [{"type": "Ready", "status": "Maybe"}]});
    let mut o = obj(json!({"host": "a"}));
    o["status"] = status;
    let c = schema().validate(&o, None);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].field, "status.conditions[0].status");
}

#[test]
fn int_or_string_and_format() {
    assert!(causes(json!({"host": "a", "port": 8080})).is_empty());
    let c = one(json!({"host": "a", "port": true}));
    assert_eq!(c.reason, "FieldValueTypeInvalid");
    assert!(
        c.message.contains("must be of type integer,string"),
        "{}",
        c.message
    );
    let c = one(json!({"host": "a", "mac": "zz"}));
    assert_eq!(
        c.message,
        r#"Invalid value: "zz": spec.mac in body must be of type mac: "zz""#
    );
}

#[test]
fn cel_rule_true_false_and_message() {
    assert!(causes(json!({"host": "a", "os": "tiny", "maxConcurrent": 10})).is_empty());
    let c = one(json!({"host": "a", "os": "tiny", "maxConcurrent": 11}));
    assert_eq!(
        (c.reason.as_str(), c.field.as_str()),
        ("FieldValueInvalid", "spec")
    );
    assert_eq!(c.message, "Invalid value: tiny OS allows at most 10");
}

#[test]
fn cel_message_expression_and_reason() {
    let c = one(json!({"host": "a", "images": [{"name": "im", "url": "http://x"}]}));
    assert_eq!(c.reason, "FieldValueForbidden");
    assert_eq!(c.field, "spec.images[0].url");
    assert_eq!(c.message, "Forbidden: url must be https, got http://x");
}

#[test]
fn cel_evaluation_error_is_reported() {
    // `self.os` is missing: CEL reports no such key instead of panicking.
    let props = serde_json::from_value(json!({"type": "object", "properties": {"spec": {
        "type": "object", "x-kubernetes-validations": [{"rule": "self.os == 'linux'"}]}}}))
    .expect("json");
    let s = StructuralSchema::new(&props).expect("compiles");
    let c = s.validate(&json!({"spec": {"host": "a"}}), None);
    assert_eq!(c.len(), 1);
    let c = &c[0];
    assert_eq!(c.field, "spec");
    assert_eq!(
        c.message,
        r#"Invalid value: "object": no such key: os evaluating rule: self.os == 'linux'"#
    );
}

#[test]
fn transition_rules_only_on_update() {
    let s = schema();
    let new = obj(json!({"host": "b", "images": [{"name": "im", "pinned": "v2"}]}));
    assert!(
        s.validate(&new, None).is_empty(),
        "create skips oldSelf rules"
    );
    let old = obj(json!({"host": "a", "images": [{"name": "im", "pinned": "v1"}]}));
    let c = s.validate(&new, Some(&old));
    let got: Vec<(&str, &str)> = c
        .iter()
        .map(|c| (c.field.as_str(), c.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "spec.images[0].pinned",
                r#"Invalid value: "v2": failed rule: self == oldSelf"#
            ),
            ("spec.host", "Invalid value: host is immutable"),
        ]
    );
    // An item with no old counterpart (different key) is not checked.
    let old2 = obj(json!({"host": "b", "images": [{"name": "other", "pinned": "v1"}]}));
    assert!(s.validate(&new, Some(&old2)).is_empty());
}

#[test]
fn status_is_validated_and_metadata_is_not() {
    let mut o = obj(json!({"host": "a"}));
    o["metadata"] = json!({"name": 5});
    o["status"] = json!({"phase": 3});
    let c = schema().validate(&o, None);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].field, "status.phase");
}

#[test]
fn combinators() {
    let props = serde_json::from_value(json!({"type": "object", "properties": {"v": {
        "type": "string",
        "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}],
        "not": {"pattern": "^bad$"}
    }}}))
    .expect("json");
    let s = StructuralSchema::new(&props).expect("compiles");
    assert!(s.validate(&json!({"v": "abc"}), None).is_empty());
    let c = s.validate(&json!({"v": "xyz"}), None);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].message
            .ends_with("v in body must validate at least one schema (anyOf)"),
        "{}",
        c[0].message
    );
    let c = s.validate(&json!({"v": "bad"}), None);
    assert_eq!(c.len(), 1);
    assert!(c[0].message.ends_with("must not validate the schema (not)"));
}

#[test]
fn merge_info_from_schema() {
    let s = schema();
    let mi = s.merge_info();
    assert_eq!(
        mi.field("spec").field("images").list_type(),
        &ListType::Map(vec!["name".into()])
    );
    assert_eq!(mi.field("spec").field("tags").list_type(), &ListType::Set);
    assert_eq!(
        mi.field("metadata").field("finalizers").list_type(),
        &ListType::Set
    );
    assert!(mi.field("spec").is_declared_field("host"));
    assert!(!mi
        .field("spec")
        .field("labels")
        .is_declared_field("anything"));
    assert_eq!(
        mi.field("status")
            .field("conditions")
            .items()
            .field("type")
            .list_type(),
        &ListType::Atomic
    );
}

#[test]
fn embedded_resource_and_map_value_defaults() {
    let props = serde_json::from_value(json!({"type": "object", "properties": {
        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                     "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}},
        "pools": {"type": "object", "additionalProperties": {"type": "object", "properties": {
            "size": {"type": "integer", "default": 4}}}}
    }}))
    .expect("json");
    let s = StructuralSchema::new(&props).expect("compiles");
    let mut v = json!({
        "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": "a", "y": 1}, "z": 2},
        "pools": {"a": {}, "b": {"size": 9, "junk": 1}}
    });
    let mut dropped = s.prune(&mut v);
    dropped.sort();
    assert_eq!(
        dropped,
        vec!["pools.b.junk", "template.spec.y", "template.z"]
    );
    assert_eq!(v["template"]["metadata"], json!({"name": "p"}));
    s.apply_defaults(&mut v);
    assert_eq!(v["pools"], json!({"a": {"size": 4}, "b": {"size": 9}}));
}
