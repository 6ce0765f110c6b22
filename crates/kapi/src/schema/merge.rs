//! Merge information for server-side apply: which lists are atomic, sets or maps (and by which
//! keys), which objects are atomic, and which object keys are declared fields (struct fields) as
//! opposed to entries of a map (`additionalProperties`). Built once from the compiled schema.
//!
//! `metadata` gets a fixed description of ObjectMeta's merge strategy (labels/annotations are
//! granular maps, finalizers a set, ownerReferences a map keyed by `uid`), because a CRD's schema
//! only says `type: object` there while kube-apiserver uses ObjectMeta's own schema.

use std::collections::BTreeMap;

use super::Node;

/// How a list merges (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListType {
    /// The whole list is replaced (the default).
    #[default]
    Atomic,
    /// Scalar items, merged by value.
    Set,
    /// Object items, merged by the values of these keys (`x-kubernetes-list-map-keys`).
    Map(Vec<String>),
}

/// Merge information at one schema node. Unknown places (no schema, preserved unknown fields)
/// use the defaults: atomic lists, granular maps.
#[derive(Debug, Clone, Default)]
pub struct MergeInfo {
    list_type: ListType,
    map_atomic: bool,
    fields: BTreeMap<String, MergeInfo>,
    additional: Option<Box<MergeInfo>>,
    items: Option<Box<MergeInfo>>,
    /// Schema-less built-in kinds: every object key counts as a struct field (their real schemas
    /// are made of structs), lists are atomic.
    untyped_struct: bool,
}

/// The default merge information for values without a schema inside a CRD
/// (`x-kubernetes-preserve-unknown-fields`): object keys are map entries.
static DEFAULT: MergeInfo = MergeInfo {
    list_type: ListType::Atomic,
    map_atomic: false,
    fields: BTreeMap::new(),
    additional: None,
    items: None,
    untyped_struct: false,
};

/// Values of schema-less built-in kinds.
static UNTYPED_STRUCT: MergeInfo = MergeInfo {
    list_type: ListType::Atomic,
    map_atomic: false,
    fields: BTreeMap::new(),
    additional: None,
    items: None,
    untyped_struct: true,
};

impl MergeInfo {
    /// Merge information for a value with no schema: atomic lists, granular maps.
    pub fn unknown() -> &'static MergeInfo {
        &DEFAULT
    }

    pub(super) fn from_node(node: &Node, is_root: bool) -> Self {
        let mut fields: BTreeMap<String, MergeInfo> = node
            .properties
            .iter()
            .map(|(k, n)| (k.clone(), MergeInfo::from_node(n, false)))
            .collect();
        if is_root || node.embedded_resource {
            fields.insert("metadata".into(), Self::object_meta());
            fields.entry("apiVersion".into()).or_default();
            fields.entry("kind".into()).or_default();
        }
        Self {
            list_type: node.list_type.clone(),
            map_atomic: node.map_atomic,
            fields,
            additional: node
                .additional
                .as_ref()
                .map(|a| Box::new(MergeInfo::from_node(a, false))),
            items: node
                .items
                .as_ref()
                .map(|i| Box::new(MergeInfo::from_node(i, false))),
            untyped_struct: false,
        }
    }

    /// A top-level object of a built-in kind without a schema: ObjectMeta's strategy for
    /// `metadata`, struct fields with atomic lists elsewhere.
    pub fn untyped_root() -> MergeInfo {
        let mut fields = BTreeMap::new();
        fields.insert("metadata".to_string(), Self::object_meta());
        MergeInfo {
            fields,
            untyped_struct: true,
            ..MergeInfo::default()
        }
    }

    /// [`MergeInfo::untyped_root`] with what the Go types of built-in kinds declare beyond
    /// value structs: Secret `data`/`stringData` are maps, an Event's object references are
    /// atomic and its `series` is a pointer.
    pub fn builtin_root(kind: &str) -> MergeInfo {
        let mut root = Self::untyped_root();
        let string_map = || MergeInfo {
            additional: Some(Box::default()),
            ..MergeInfo::default()
        };
        let atomic = || MergeInfo {
            map_atomic: true,
            ..MergeInfo::default()
        };
        match kind {
            "Secret" => {
                root.fields.insert("data".into(), string_map());
                root.fields.insert("stringData".into(), string_map());
            }
            "Event" => {
                for f in ["involvedObject", "regarding", "related"] {
                    root.fields.insert(f.into(), atomic());
                }
                // A pointer to a struct: its appearance is recorded (`"."`), as for CRs.
                root.fields.insert("series".into(), MergeInfo::default());
            }
            _ => {}
        }
        root
    }

    /// True for the struct-valued places of built-in kinds: their own membership is implied by
    /// their fields', so it is not recorded (no `"."` in FieldsV1).
    pub fn is_struct(&self) -> bool {
        self.untyped_struct
    }

    /// ObjectMeta's merge strategy.
    fn object_meta() -> MergeInfo {
        let string_map = || MergeInfo {
            additional: Some(Box::default()),
            ..MergeInfo::default()
        };
        let mut fields = BTreeMap::new();
        for scalar in [
            "name",
            "namespace",
            "generateName",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            fields.insert(scalar.to_string(), MergeInfo::default());
        }
        fields.insert("labels".into(), string_map());
        fields.insert("annotations".into(), string_map());
        fields.insert(
            "finalizers".into(),
            MergeInfo {
                list_type: ListType::Set,
                items: Some(Box::default()),
                ..MergeInfo::default()
            },
        );
        fields.insert(
            "ownerReferences".into(),
            MergeInfo {
                list_type: ListType::Map(vec!["uid".into()]),
                items: Some(Box::default()),
                ..MergeInfo::default()
            },
        );
        MergeInfo {
            fields,
            ..MergeInfo::default()
        }
    }

    /// How lists at this place merge.
    pub fn list_type(&self) -> &ListType {
        &self.list_type
    }

    /// True when objects at this place are replaced as a whole (`x-kubernetes-map-type: atomic`).
    pub fn map_atomic(&self) -> bool {
        self.map_atomic
    }

    /// True when `key` is a declared property here (a struct field) rather than a map entry.
    pub fn is_declared_field(&self, key: &str) -> bool {
        self.untyped_struct || self.fields.contains_key(key)
    }

    /// Merge information of the value under `key` of an object here.
    pub fn field(&self, key: &str) -> &MergeInfo {
        self.fields
            .get(key)
            .or(self.additional.as_deref())
            .unwrap_or(if self.untyped_struct {
                &UNTYPED_STRUCT
            } else {
                &DEFAULT
            })
    }

    /// Merge information of the items of a list here.
    pub fn items(&self) -> &MergeInfo {
        self.items.as_deref().unwrap_or(if self.untyped_struct {
            &UNTYPED_STRUCT
        } else {
            &DEFAULT
        })
    }
}
