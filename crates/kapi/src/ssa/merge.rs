//! Merging an applied configuration into the live object, and removing the fields an applier
//! gave up, following the schema's merge information: granular objects merge key by key,
//! `x-kubernetes-map-type: atomic` objects and atomic lists are replaced, `set` lists take the
//! union of their values and `map` lists merge items with equal keys. Order of merged list items:
//! live items stay in place; applied items come in applied order, each shared item pulling the
//! applied items before it along (a simplification of structured-merge-diff's ordering).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::fieldset::{item_pe, FieldSet};
use super::SsaError;
use crate::schema::{ListType, MergeInfo};

/// `applied` merged onto `live`.
pub fn merge(live: Option<&Value>, applied: &Value, mi: &MergeInfo) -> Result<Value, SsaError> {
    match applied {
        Value::Object(a) if !mi.map_atomic() => {
            let mut out = match live {
                Some(Value::Object(l)) => l.clone(),
                _ => Map::new(),
            };
            for (k, av) in a {
                let merged = merge(out.get(k), av, mi.field(k))?;
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) if *mi.list_type() != ListType::Atomic => {
            let l = live
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            merge_list(l, a, mi)
        }
        _ => Ok(applied.clone()),
    }
}

fn index(items: &[Value], lt: &ListType) -> Result<Vec<String>, SsaError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item_pe(lt, v, i))
        .collect()
}

fn merge_list(live: &[Value], applied: &[Value], mi: &MergeInfo) -> Result<Value, SsaError> {
    let lt = mi.list_type();
    let live_pes = index(live, lt)?;
    let applied_pes = index(applied, lt)?;
    let mut applied_at: HashMap<&str, usize> = HashMap::new();
    for (i, pe) in applied_pes.iter().enumerate() {
        if applied_at.insert(pe, i).is_some() && matches!(lt, ListType::Map(_)) {
            return Err(SsaError::DuplicateKey(
                pe.trim_start_matches("k:").to_string(),
            ));
        }
    }
    let mut live_at: HashMap<&str, usize> = HashMap::new();
    for (i, pe) in live_pes.iter().enumerate() {
        live_at.entry(pe).or_insert(i);
    }
    let mut out = Vec::new();
    let mut emitted: HashSet<&str> = HashSet::new();
    let mut next = 0;
    let mut emit_applied_upto =
        |upto: usize, out: &mut Vec<Value>, next: &mut usize| -> Result<(), SsaError> {
            while *next <= upto && *next < applied.len() {
                let pe = applied_pes[*next].as_str();
                if emitted.insert(pe) {
                    let live_item = live_at.get(pe).map(|i| &live[*i]);
                    out.push(merge(live_item, &applied[*next], mi.items())?);
                }
                *next += 1;
            }
            Ok(())
        };
    let mut live_emitted: HashSet<&str> = HashSet::new();
    for (i, pe) in live_pes.iter().enumerate() {
        match applied_at.get(pe.as_str()) {
            Some(ai) => emit_applied_upto(*ai, &mut out, &mut next)?,
            None => {
                if live_emitted.insert(pe) {
                    out.push(live[i].clone());
                }
            }
        }
    }
    emit_applied_upto(applied.len(), &mut out, &mut next)?;
    Ok(Value::Array(out))
}

/// Removes from `v` every member path of `remove` (fields, list items) that exists in it, except
/// that a field or item with descendants in `keep` (owned by someone) is kept and only its
/// removable descendants go.
pub fn remove_paths(
    v: &mut Value,
    remove: &FieldSet,
    keep: Option<&FieldSet>,
    mi: &MergeInfo,
) -> Result<(), SsaError> {
    let keeps_any = |pe: &str| {
        keep.and_then(|k| k.child(pe))
            .is_some_and(|k| !k.is_empty())
    };
    match v {
        Value::Object(m) => {
            if mi.map_atomic() {
                return Ok(());
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let pe = format!("f:{k}");
                let Some(sub) = remove.child(&pe) else {
                    continue;
                };
                if sub.is_member() && !keeps_any(&pe) {
                    m.remove(&k);
                } else if let Some(child) = m.get_mut(&k) {
                    remove_paths(child, sub, keep.and_then(|k| k.child(&pe)), mi.field(&k))?;
                }
            }
        }
        Value::Array(items) => {
            let lt = mi.list_type();
            if *lt == ListType::Atomic {
                return Ok(());
            }
            let mut kept = Vec::with_capacity(items.len());
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                let pe = item_pe(lt, &item, i)?;
                match remove.child(&pe) {
                    Some(sub) if sub.is_member() && !keeps_any(&pe) => {}
                    Some(sub) => {
                        remove_paths(&mut item, sub, keep.and_then(|k| k.child(&pe)), mi.items())?;
                        kept.push(item);
                    }
                    None => kept.push(item),
                }
            }
            *items = kept;
        }
        _ => {}
    }
    Ok(())
}
