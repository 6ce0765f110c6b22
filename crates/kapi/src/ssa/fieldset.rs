//! Field sets: which fields of an object a manager owns, in Kubernetes' FieldsV1 encoding.
//!
//! A [`FieldSet`] is a tree keyed by path elements exactly as FieldsV1 spells them: `f:<field>`
//! for an object field, `k:<json of the key fields>` for an item of a list-type=map list,
//! `v:<json value>` for an item of a set, `i:<index>` for a list index. A node that is itself
//! owned is a *member*; FieldsV1 marks a member that also has children with `".": {}` and a
//! member without children as `{}`. Hand-written because the encoding, the set algebra and the
//! rules for which nodes are members (ToFieldSet and Compare of sigs.k8s.io/structured-merge-diff,
//! which has no Rust port) are the contract with kubectl and kube-rs clients.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::SsaError;
use crate::schema::{ListType, MergeInfo};

/// A set of field paths (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// A path of FieldsV1 path elements (`["f:spec", "f:images", "k:{\"name\":\"a\"}"]`).
pub type Path = Vec<String>;

impl FieldSet {
    /// True when no path is in the set.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Adds `path` as a member.
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    /// True when `path` is a member.
    pub fn has(&self, path: &[String]) -> bool {
        let mut node = self;
        for pe in path {
            match node.children.get(pe) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member
    }

    /// The subtree under one path element, if any.
    pub fn child(&self, pe: &str) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    /// True when this node itself is a member.
    pub fn is_member(&self) -> bool {
        self.member
    }

    /// Members of either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (pe, sub) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(sub),
                None => sub.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// Members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (pe, sub) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => sub.difference(o),
                None => sub.clone(),
            };
            if !d.is_empty() {
                out.children.insert(pe.clone(), d);
            }
        }
        out
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (pe, sub) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = sub.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// Only the paths starting with `pe` (kept under `pe`).
    pub fn only(&self, pe: &str) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(sub) = self.children.get(pe) {
            out.children.insert(pe.to_string(), sub.clone());
        }
        out
    }

    /// All member paths, depth first, in FieldsV1 order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (pe, sub) in &self.children {
            prefix.push(pe.clone());
            sub.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The FieldsV1 JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, sub) in &self.children {
            if !sub.is_empty() {
                m.insert(pe.clone(), sub.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    /// Parses FieldsV1 JSON (the top level is the object root, never a member).
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, SsaError> {
        let mut set = Self::parse_node(v)?;
        set.member = false;
        Ok(set)
    }

    fn parse_node(v: &Value) -> Result<FieldSet, SsaError> {
        let m = v
            .as_object()
            .ok_or_else(|| SsaError::BadFieldsV1(format!("expected an object, got {v}")))?;
        let mut set = FieldSet {
            member: m.is_empty() || m.contains_key("."),
            children: BTreeMap::new(),
        };
        for (k, sub) in m {
            if k == "." {
                continue;
            }
            if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                return Err(SsaError::BadFieldsV1(format!("unknown path element {k:?}")));
            }
            set.children.insert(k.clone(), Self::parse_node(sub)?);
        }
        Ok(set)
    }
}

/// Renders a path as structured-merge-diff does in conflict messages:
/// `.spec.images[name="a"].url`, `.metadata.finalizers[="x"]`, `.list[3]`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let fields: Vec<String> = match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => m.iter().map(|(n, v)| format!("{n}={v}")).collect(),
                Err(_) => vec![k.to_string()],
            };
            out.push_str(&format!("[{}]", fields.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// The path element of a list item, or an error for a list-map item without all its keys.
pub fn item_pe(list_type: &ListType, item: &Value, index: usize) -> Result<String, SsaError> {
    Ok(match list_type {
        ListType::Atomic => format!("i:{index}"),
        ListType::Set => format!("v:{item}"),
        ListType::Map(keys) => {
            let mut m = Map::new();
            for k in keys {
                match item.get(k) {
                    Some(v) => {
                        m.insert(k.clone(), v.clone());
                    }
                    None => {
                        return Err(SsaError::MissingKey {
                            key: k.clone(),
                            item: item.to_string(),
                        })
                    }
                }
            }
            format!("k:{}", Value::Object(m))
        }
    })
}

/// The fields set in `v` (structured-merge-diff's ToFieldSet): scalars, atomic lists/maps, list
/// items and map entries are members; declared object fields holding non-empty objects are not.
pub fn to_field_set(v: &Value, mi: &MergeInfo) -> Result<FieldSet, SsaError> {
    let mut set = FieldSet::default();
    walk(v, mi, &mut Vec::new(), &mut set)?;
    set.member = false;
    Ok(set)
}

fn walk(v: &Value, mi: &MergeInfo, path: &mut Path, set: &mut FieldSet) -> Result<(), SsaError> {
    match v {
        Value::Object(m) => {
            if mi.map_atomic() {
                set.insert(path);
                return Ok(());
            }
            for (k, child) in m {
                path.push(format!("f:{k}"));
                walk(child, mi.field(k), path, set)?;
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || !mi.is_declared_field(k) {
                    set.insert(path);
                }
                path.pop();
            }
        }
        Value::Array(items) => match mi.list_type() {
            ListType::Atomic => set.insert(path),
            lt => {
                for (i, item) in items.iter().enumerate() {
                    path.push(item_pe(lt, item, i)?);
                    walk(item, mi.items(), path, set)?;
                    set.insert(path);
                    path.pop();
                }
            }
        },
        _ => set.insert(path),
    }
    Ok(())
}

/// What changed between two versions of an object (structured-merge-diff's Compare).
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

/// Compares `old` and `new` under `mi`.
pub fn compare(old: &Value, new: &Value, mi: &MergeInfo) -> Result<Comparison, SsaError> {
    let mut c = Comparison::default();
    cmp(Some(old), Some(new), mi, &mut Vec::new(), &mut c)?;
    for s in [&mut c.added, &mut c.modified, &mut c.removed] {
        s.member = false;
    }
    Ok(c)
}

fn leaf(old: Option<&Value>, new: Option<&Value>, path: &Path, c: &mut Comparison) {
    match (old, new) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    }
}

fn cmp(
    old: Option<&Value>,
    new: Option<&Value>,
    mi: &MergeInfo,
    path: &mut Path,
    c: &mut Comparison,
) -> Result<(), SsaError> {
    let is_obj = |v: Option<&Value>| v.is_none_or(Value::is_object);
    let is_arr = |v: Option<&Value>| v.is_none_or(Value::is_array);
    let side = |x: Option<&Value>, y: Option<&Value>, c: &mut Comparison, path: &Path| match (x, y)
    {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    };
    if is_obj(old) && is_obj(new) && !mi.map_atomic() {
        let (om, nm) = (
            old.and_then(Value::as_object),
            new.and_then(Value::as_object),
        );
        if om.is_none_or(Map::is_empty) && nm.is_none_or(Map::is_empty) {
            leaf(old, new, path, c);
            return Ok(());
        }
        if !mi.is_struct() {
            side(old, new, c, path);
        }
        let mut keys: Vec<&String> = om.iter().flat_map(|m| m.keys()).collect();
        keys.extend(nm.iter().flat_map(|m| m.keys()));
        keys.sort();
        keys.dedup();
        for k in keys {
            path.push(format!("f:{k}"));
            cmp(
                om.and_then(|m| m.get(k)),
                nm.and_then(|m| m.get(k)),
                mi.field(k),
                path,
                c,
            )?;
            path.pop();
        }
        return Ok(());
    }
    let granular_list = !matches!(mi.list_type(), ListType::Atomic);
    if is_arr(old) && is_arr(new) && granular_list {
        let (ol, nl) = (old.and_then(Value::as_array), new.and_then(Value::as_array));
        if ol.is_none_or(Vec::is_empty) && nl.is_none_or(Vec::is_empty) {
            leaf(old, new, path, c);
            return Ok(());
        }
        side(old, new, c, path);
        let index = |l: Option<&Vec<Value>>| -> Result<Vec<(String, Value)>, SsaError> {
            l.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, item)| Ok((item_pe(mi.list_type(), item, i)?, item.clone())))
                .collect()
        };
        let (oi, ni) = (index(ol)?, index(nl)?);
        let mut pes: Vec<&String> = oi.iter().chain(ni.iter()).map(|(pe, _)| pe).collect();
        pes.sort();
        pes.dedup();
        for pe in pes {
            let o = oi.iter().find(|(p, _)| p == pe).map(|(_, v)| v);
            let n = ni.iter().find(|(p, _)| p == pe).map(|(_, v)| v);
            path.push(pe.clone());
            cmp(o, n, mi.items(), path, c)?;
            path.pop();
        }
        return Ok(());
    }
    leaf(old, new, path, c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{display_path, FieldSet};

    #[test]
    fn fields_v1_round_trip_and_paths() {
        let v = json!({
            "f:metadata": {"f:finalizers": {".": {}, "v:\"osprov.io/cleanup\"": {}}, "f:labels": {"f:app": {}}},
            "f:spec": {"f:images": {"k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:url": {}}}, "f:os": {}},
            "f:status": {".": {}, "f:list": {"i:0": {}}}
        });
        let set = FieldSet::from_fields_v1(&v).expect("parses");
        assert_eq!(set.to_fields_v1(), v);
        let shown: Vec<String> = set.paths().iter().map(|p| display_path(p)).collect();
        assert_eq!(
            shown,
            vec![
                ".metadata.finalizers",
                ".metadata.finalizers[=\"osprov.io/cleanup\"]",
                ".metadata.labels.app",
                ".spec.images[name=\"a\"]",
                ".spec.images[name=\"a\"].name",
                ".spec.images[name=\"a\"].url",
                ".spec.os",
                ".status",
                ".status.list[0]",
            ]
        );
        let other = FieldSet::from_fields_v1(&json!({"f:spec": {"f:os": {}}, "f:status": {}}))
            .expect("parses");
        assert_eq!(
            set.intersection(&other).to_fields_v1(),
            json!({"f:spec": {"f:os": {}}, "f:status": {}})
        );
        let diff = set.difference(&other).to_fields_v1();
        assert_eq!(diff["f:status"], json!({"f:list": {"i:0": {}}}));
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
    }
}
